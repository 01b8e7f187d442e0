"""`zonegate verify FILE --key PUB`: check a published file against its signed manifest.

Exit 0 valid; 1 invalid (changed, unsigned, signed by another key); 2 usage error (no such file,
no usable trusted key). The trusted key is the receiving gateway's public signing key, which the
publishing step holds beforehand; a key found beside the file would prove nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_FAIL, EXIT_OK, CliError, emit


def cmd_verify(args: argparse.Namespace) -> int:
    from ..transfer.keys import KeyFileError, load_signing_public
    from ..transfer.publication import verify_publication
    from ..transfer.safetext import safe_text

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{args.file}: no such file")
    try:
        trusted = load_signing_public(Path(args.key))
    except KeyFileError as e:
        raise CliError(str(e)) from None
    check = verify_publication(path, trusted)
    shown = safe_text(str(path), keep_newlines=False)
    data = {"file": shown, "valid": check.ok, "problem": check.problem, "manifest": check.manifest}
    if args.json:
        emit(args, data, "")
    elif check.ok and check.manifest is not None:
        m = check.manifest
        names = ", ".join(safe_text(str(a.get("name")), False) for a in m.get("approvers", []))
        print(
            f"{shown}: valid; message {m['id']}, sha256 {m['sha256']}, "
            f"approved by {names or 'nobody'}, published {m['time']} by {m['gateway']}"
        )
    else:
        print(f"{shown}: INVALID: {check.problem}", file=sys.stderr)
    return EXIT_OK if check.ok else EXIT_FAIL


def register(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "verify",
        help="check a published file's detached signature and manifest",
        description="Finds FILE.zgmanifest.json and FILE.zgsig beside FILE and checks them "
        "with the receiving gateway's public signing key. Exit 0 valid, 1 invalid, 2 usage.",
    )
    v.add_argument("file", metavar="FILE")
    v.add_argument(
        "--key", required=True, metavar="PUB", help="the gateway's .sign.pub (trusted copy)"
    )
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)
