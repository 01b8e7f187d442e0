"""`zonegate keys`: key management."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_FAIL, EXIT_OK, CliError, emit


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from ..transfer.keys import KeyFileError, generate_gateway_keys, generate_person_key
    from ..zones.config import NAME_PATTERN

    if args.person is not None and not NAME_PATTERN.fullmatch(args.person):
        raise CliError(f"--person {args.person!r}: use 1-63 characters of a-z, 0-9 and '-'")
    try:
        if args.person is not None:
            files = generate_person_key(Path(args.dir), args.person)
        else:
            files = generate_gateway_keys(Path(args.dir), args.name)
    except KeyFileError as e:
        raise CliError(str(e), EXIT_FAIL) from None
    data = {k: str(v) for k, v in vars(files).items()}
    if args.ssh_host_key:
        from ..transfer.keys import generate_ssh_host_key

        try:
            host_private, host_public = generate_ssh_host_key(Path(args.dir), args.name)
        except KeyFileError as e:
            raise CliError(str(e), EXIT_FAIL) from None
        data |= {"ssh_host_private": str(host_private), "ssh_host_public": str(host_public)}
    emit(args, data, "\n".join(f"{k}: {v}" for k, v in data.items()))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="key management")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    kg = ksub.add_parser(
        "generate",
        help="generate a gateway's signing and encryption key pairs (private files 0600)",
    )
    who = kg.add_mutually_exclusive_group(required=True)
    who.add_argument("--name", help="gateway name, e.g. internet-gw")
    who.add_argument(
        "--person",
        metavar="NAME",
        help="a person's Ed25519 role key (NAME.person.key 0600, NAME.person.pub), e.g. li-wei",
    )
    kg.add_argument("--dir", required=True, metavar="DIR", help="where to write the key files")
    kg.add_argument(
        "--ssh-host-key",
        action="store_true",
        help="also write NAME.ssh_host_ed25519_key (0600) for the SFTP drop server",
    )
    kg.add_argument("--json", action="store_true")
    kg.set_defaults(func=cmd_keys_generate)
