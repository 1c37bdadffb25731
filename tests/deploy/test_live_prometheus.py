"""A real Prometheus scrapes the real service (uvicorn over a socket, the tiny model) while traffic flows, evaluates
rules.yml, and answers every query of the dashboard and every alert expression with data."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ADMIN_KEY, auth
from tests.deploy.promql import (
    RULES_FILE,
    SYNTHETIC,
    alert_expressions,
    alert_rules,
    dashboard_expressions,
    queryable,
    used_metric_names,
)

SCRAPE_SECONDS = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], log: Path, ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server and wait for `ready_url` to answer 200; kill it at the end."""
    with log.open("wb") as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if child.poll() is not None:
                    raise AssertionError(f"{command[0]} exited early:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"{ready_url} never answered:\n{log.read_text()[-3000:]}"
                time.sleep(0.2)
            yield child
        finally:
            child.kill()
            child.wait(10)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("live-service")
    registry = folder / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": [{"name": "tiny", "path": str(tiny_model_dir)}]}))
    port = free_port()
    keys = [{"name": "admin", "key": ADMIN_KEY, "scopes": ["infer", "chat", "documents", "admin"]}]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "DEFAULT_", "MODEL_", "REDIS_", "CHROMA_"))}
    env.update(
        DATA_DIR=str(folder / "data"),
        MODEL_REGISTRY=str(registry),
        DEFAULT_MODEL="tiny",
        API_KEYS=json.dumps(keys),
        DEVICE="cpu",
        MAX_INPUT_TOKENS="200",
        PROMETHEUS_ENABLED="true",
        METRICS_PATH="/prometheus",
        HF_HUB_OFFLINE="1",
        ANONYMIZED_TELEMETRY="False",
    )
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "inference_api", "serve", "--port", str(port)]
    with process(command, env, folder / "service.log", f"{url}/ready"):
        yield url


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, service: str) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("prometheus")
    shutil.copy(RULES_FILE, folder / "rules.yml")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "inference-api",  # as in deploy/prometheus/prometheus.yml: the rules select on it
                "metrics_path": "/prometheus",
                "static_configs": [{"targets": [service.removeprefix("http://")]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        shutil.which("prometheus") or "/usr/bin/prometheus",
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    with process(command, dict(os.environ), folder / "prometheus.log", f"{url}/-/ready"):
        yield url


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query, now or `at` a wall-clock time (so a [1m] window still holds the traffic however long the
    tests that ask take on a busy machine)."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    response = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for_scrapes(prometheus: str, after: float, count: int) -> None:
    """Until the target has been scraped `count` times since `after` (a wall-clock time)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        samples = query(prometheus, f'count_over_time(up{{job="inference-api"}}[1m] @ {time.time():.3f})')
        stamps = query(prometheus, 'timestamp(up{job="inference-api"})')
        if samples and stamps and float(stamps[0]["value"][1]) >= after + (count - 1) * SCRAPE_SECONDS:
            return
        time.sleep(SCRAPE_SECONDS / 2)
    raise AssertionError(f"Prometheus did not scrape the service {count} times after the traffic")


def drive_traffic(url: str) -> None:
    """Successes, a stream, a chat, an upload, and the 401, 422 and 404 an operator sees every day."""
    with httpx.Client(base_url=url, timeout=60) as http:
        ok = http.post("/infer", json={"prompt": "hello", "max_new_tokens": 4}, headers=auth(ADMIN_KEY))
        assert ok.status_code == 200, ok.text
        with http.stream(
            "POST", "/infer", json={"prompt": "hi", "max_new_tokens": 4, "stream": True}, headers=auth(ADMIN_KEY)
        ) as stream:
            assert stream.status_code == 200 and "data:" in stream.read().decode()
        session = http.post("/chat/start", json={}, headers=auth(ADMIN_KEY)).json()["sessionId"]
        message = {"message": "hello", "max_new_tokens": 4}
        chat = http.post(f"/chat/{session}/messages", json=message, headers=auth(ADMIN_KEY))
        assert chat.status_code == 200, chat.text
        upload = http.post("/upload", files={"file": ("note.txt", b"The vault code is 4471.")}, headers=auth(ADMIN_KEY))
        assert upload.status_code == 200, upload.text
        assert http.post("/infer", json={"prompt": "hello"}).status_code == 401
        assert http.post("/infer", json={"prompt": 5}, headers=auth(ADMIN_KEY)).status_code == 422
        assert http.get("/no-such-route", headers=auth(ADMIN_KEY)).status_code == 404
        assert http.get("/models", headers=auth(ADMIN_KEY)).status_code == 200


@pytest.fixture(scope="module")
def scraped(prometheus: str, service: str) -> dict[str, str]:
    """Prometheus after traffic and a few scrapes; the service's own exposition, read the same way."""
    drive_traffic(service)
    wait_for_scrapes(prometheus, after=time.time(), count=3)
    return {
        "prometheus": prometheus,
        "exposition": httpx.get(f"{service}/prometheus", timeout=10).text,
        "at": f"{time.time():.3f}",
    }


def exported_series(exposition: str) -> set[str]:
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in exposition.splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_prometheus_scrapes_the_service(scraped: dict[str, str]) -> None:
    (target,) = query(scraped["prometheus"], 'up{job="inference-api"}')
    assert target["value"][1] == "1", "the scrape of /prometheus fails"


def test_every_metric_the_dashboard_and_alerts_use_is_exported(scraped: dict[str, str]) -> None:
    exported = exported_series(scraped["exposition"]) | SYNTHETIC
    missing = {name: sorted(where) for name, where in used_metric_names().items() if name not in exported}
    assert not missing, f"the service does not export: {json.dumps(missing, indent=1)}"


@pytest.mark.parametrize("where", sorted(dashboard_expressions()))
def test_every_dashboard_query_has_data(scraped: dict[str, str], where: str) -> None:
    expr = queryable(dashboard_expressions()[where])
    assert query(scraped["prometheus"], expr, at=float(scraped["at"])), f"{where}: no data for {expr}"


@pytest.mark.parametrize("alert", sorted(alert_expressions()))
def test_every_alert_expression_has_data(scraped: dict[str, str], alert: str) -> None:
    expr = queryable(alert_expressions()[alert])
    assert query(scraped["prometheus"], expr, at=float(scraped["at"])), f"{alert}: no data for {expr}"


def test_prometheus_evaluates_every_rule_without_error(scraped: dict[str, str]) -> None:
    body = httpx.get(f"{scraped['prometheus']}/api/v1/rules", timeout=10).json()
    rules = {rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"]}
    assert set(rules) == {rule["alert"] for rule in alert_rules()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        # Latency rules may be pending on a busy machine (an upload's first embedding); none may fire.
        assert rule["state"] != "firing", f"{name} fires on a healthy service"
    assert rules["ServiceDown"]["state"] == "inactive"
    assert rules["ModelLoadingFailures"]["state"] == "inactive"
