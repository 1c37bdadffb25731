"""The device memory monitor driven through its thresholds by an injected reading."""

from __future__ import annotations

import logging

import pytest

from inference_api.observability.memory import DeviceMemory, read_device_memory
from tests.conftest import USER_KEY, assert_error, auth
from tests.observability.conftest import Running, scrape

GIB = 2**30


def reading(fraction: float) -> list[DeviceMemory]:
    used = int(fraction * 16 * GIB)
    return [DeviceMemory("cpu", allocated=used, reserved=used, total=16 * GIB, used=used)]


async def test_warning_critical_and_recovery(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    client = running.client
    services = running.services
    infer = {"prompt": "Hi", "max_new_tokens": 2}
    caplog.set_level(logging.INFO, logger="inference_api.observability.memory")

    async def check_at(fraction: float) -> None:
        services.memory.read = lambda: reading(fraction)
        record = await services.maintenance.run_once("device-memory")
        assert record.last_error is None

    await check_at(0.90)  # MEMORY_WARNING=0.85
    assert any(r.levelname == "WARNING" and "memory high on cpu" in r.getMessage() for r in caplog.records)
    found = await scrape(client)
    assert found.value("device_memory_pressure", device="cpu") == 1
    assert found.value("device_memory_allocated_bytes", device="cpu") == int(0.90 * 16 * GIB)
    assert (await client.post("/infer", json=infer, headers=auth())).status_code == 200

    await check_at(0.97)  # MEMORY_CRITICAL=0.95
    assert any(r.levelname == "ERROR" and "memory critical on cpu" in r.getMessage() for r in caplog.records)
    refused = await client.post("/infer", json=infer, headers=auth())
    assert_error(refused, 503, "OVERLOADED")
    assert refused.headers["retry-after"] == str(int(services.settings.memory_check_interval))
    found = await scrape(client)
    assert found.value("device_memory_pressure", device="cpu") == 2
    assert found.value("requests_rejected_total", reason="memory") == 1
    status = (await client.get("/status", headers=auth(USER_KEY))).json()
    job = next(j for j in status["maintenance"] if j["name"] == "device-memory")
    assert job["last_result"]["refusing_new_work"] is True
    assert job["last_result"]["devices"] == [{"device": "cpu", "used_fraction": 0.97, "level": "critical"}]

    caplog.clear()
    await check_at(0.50)
    assert any("back to ok" in r.getMessage() for r in caplog.records)
    assert (await client.post("/infer", json=infer, headers=auth())).status_code == 200
    found = await scrape(client)
    assert found.value("device_memory_pressure", device="cpu") == 0
    assert found.value("requests_rejected_total", reason="memory") == 1


async def test_no_log_while_the_level_holds(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    running.services.memory.read = lambda: reading(0.9)
    running.services.memory.check()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="inference_api.observability.memory")
    running.services.memory.check()
    assert not caplog.records


def test_cpu_reading_is_the_process_against_the_machine() -> None:
    import torch

    (cpu,) = read_device_memory([torch.device("cpu")])
    assert cpu.device == "cpu"
    assert 0 < cpu.allocated == cpu.used < cpu.total
    assert 0 < cpu.fraction < 1
