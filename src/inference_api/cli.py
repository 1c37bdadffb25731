"""`inference-api serve` and `inference-api models prepare`; settings come from the environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from inference_api.logs import configure_logging
from inference_api.settings import Settings, SettingsError, load_settings

logger = logging.getLogger("inference_api")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inference-api", description="Serve large language models over HTTP.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="bind address (default: HOST)")
    serve.add_argument("--port", type=int, help="port (default: PORT)")
    models = commands.add_parser("models", help="model housekeeping")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_commands.add_parser("prepare", help="convert the default model into a local folder ahead of time")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Telemetry lookups fail (slowly) on machines without internet; they are never wanted here.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    overrides: dict[str, Any] = {}
    if args.command == "serve":
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"inference-api: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "serve":
            return _serve(settings)
        return _prepare(settings)
    except SettingsError as exc:
        print(f"inference-api: {exc}", file=sys.stderr)
        return 2


def _prepare(settings: Settings) -> int:
    from inference_api.modeling.loader import weights_location
    from inference_api.services import check_configuration

    _, registry = check_configuration(settings)
    location = weights_location(registry.get(registry.default.base), settings.data_dir)
    print(f"default model {registry.default} ready: {location}")
    return 0


def _serve(settings: Settings) -> int:
    from inference_api.server import serve
    from inference_api.services import check_configuration

    check_configuration(settings)  # refuse bad keys / models before binding the port
    serve(settings)
    return 0
