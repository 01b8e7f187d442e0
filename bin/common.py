"""What every sub-command shares: exit codes, errors a person can act on, --json output."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..zones.config import GatewayConfig

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_FAIL_CLOSED = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print `data` as JSON with --json, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(text)


def load_config(path: str) -> GatewayConfig:
    """Load a gateway config or raise a CliError that says how to find the problem."""
    from ..zones.config import ConfigError, load_gateway_config

    try:
        return load_gateway_config(path)
    except ConfigError as e:
        hint = f"fix the config, then check it with: zonegate config check {path}"
        raise CliError(f"{e}\n  {hint}") from None
