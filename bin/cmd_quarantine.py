"""`zonegate quarantine list | show ID | release ID | purge --older-than D`: refused files."""

from __future__ import annotations

import argparse
import getpass

from .common import EXIT_FAIL, EXIT_OK, CliError, emit, load_config

SECURITY_OFFICER = "security-officer"


def check_role(args: argparse.Namespace, role: str) -> str:
    """ROLE CHECK HOOK: who may release or purge; returns the person to record.

    Releasing and purging are the security officer's decisions (DESIGN.md, Roles). Role keys
    arrive with another issue; it replaces this body with a check of the officer's key (and
    raises CliError(EXIT_FAIL) on failure). Until then the local account is recorded as the
    person, with the role it acted in, so the audit trail is complete either way.
    """
    return args.person or getpass.getuser()


def _render(entry: dict) -> str:
    terms = f" [{', '.join(entry['terms'])}]" if entry.get("terms") else ""
    return (
        f"{entry['id']}  {entry.get('flow', '?')}  {entry.get('reason')} ({entry.get('rule')})"
        f"{terms}  {entry.get('name', '?')!r}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    from ..gateways.quarantine import list_entries

    entries = list_entries(load_config(args.config))
    emit(args, entries, "\n".join(map(_render, entries)) or "quarantine is empty")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from ..gateways.quarantine import QuarantineError, show

    try:
        entry = show(load_config(args.config), args.id)
    except QuarantineError as e:
        raise CliError(str(e), EXIT_FAIL) from None
    text = "\n".join(f"{k}: {v}" for k, v in entry.items() if k != "meta")
    emit(args, entry, text)
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    from ..gateways.quarantine import Operator, QuarantineError, release

    config = load_config(args.config)
    person = check_role(args, SECURITY_OFFICER)
    try:
        entry = release(config, args.id, Operator(person, SECURITY_OFFICER))
    except QuarantineError as e:
        raise CliError(str(e), EXIT_FAIL) from None
    emit(args, entry, f"released {entry['id']} ({entry['name']!r}) to ready/")
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    from ..gateways.quarantine import Operator, purge
    from ..zones.config import parse_duration

    config = load_config(args.config)
    try:
        older = parse_duration(args.older_than)
    except ValueError as e:
        raise CliError(f"--older-than: {e}") from None
    person = check_role(args, SECURITY_OFFICER)
    purged = purge(config, older, Operator(person, SECURITY_OFFICER))
    emit(args, purged, f"purged {len(purged)} message(s)")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("quarantine", help="files refused by policy: list, show, release, purge")
    qsub = q.add_subparsers(dest="quarantine_command", metavar="ACTION")
    qsub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, metavar="FILE")
        p.add_argument("--json", action="store_true")

    ql = qsub.add_parser("list", help="refused messages with their reason, rule and terms")
    common(ql)
    ql.set_defaults(func=cmd_list)
    qs = qsub.add_parser("show", help="one refused message's record")
    common(qs)
    qs.add_argument("id")
    qs.set_defaults(func=cmd_show)
    qr = qsub.add_parser("release", help="send a refused message on (security officer; audited)")
    common(qr)
    qr.add_argument("id")
    qr.add_argument("--person", help="who decides (recorded; default: the local user)")
    qr.set_defaults(func=cmd_release)
    qp = qsub.add_parser("purge", help="delete old refused messages (security officer; audited)")
    common(qp)
    qp.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h")
    qp.add_argument("--person", help="who decides (recorded; default: the local user)")
    qp.set_defaults(func=cmd_purge)
