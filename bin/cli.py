"""The `zonegate` command: one entry, thin sub-commands over the packages below it.

Each sub-command group lives in its own `cmd_*.py` module with a `register(sub)` function.
Exit codes mean the same everywhere: 0 done, 1 the thing checked is bad or the work failed,
2 a usage or configuration error, 3 stopped fail-closed (the audit log could not be written).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import (
    cmd_audit,
    cmd_config,
    cmd_demo,
    cmd_gateway,
    cmd_keys,
    cmd_policy,
    cmd_probe,
    cmd_quarantine,
    cmd_review,
    cmd_topology,
    cmd_verify,
)
from .common import EXIT_FAIL, CliError

COMMAND_MODULES = (
    cmd_demo,
    cmd_gateway,
    cmd_review,
    cmd_verify,
    cmd_audit,
    cmd_keys,
    cmd_config,
    cmd_topology,
    cmd_probe,
    cmd_policy,
    cmd_quarantine,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zonegate",
        description="Move approved files through one-way, audited, encrypted channels between "
        "isolated network zones.",
        epilog="Exit codes: 0 ok, 1 check failed or work failed, 2 usage or config error, "
        "3 stopped fail-closed (audit log unwritable). Start with: zonegate demo",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"zonegate: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
