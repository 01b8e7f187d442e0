"""`zonegate audit`: the auditor's tools. All read-only; exit 0 ok, 1 bad or not found, 2 usage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import EXIT_FAIL, EXIT_OK, CliError, emit, load_config


def _public_key(path: str | None) -> Any:
    if path is None:
        return None
    from ..transfer.keys import KeyFileError, load_signing_public

    try:
        return load_signing_public(Path(path))
    except KeyFileError as e:
        raise CliError(f"--key: {e}") from None


def _check_logs(paths: list[str]) -> None:
    from ..audit.log import log_files

    for p in paths:
        if not any(Path(f).exists() for f in log_files(p)):
            raise CliError(f"no such audit log: {p}")


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from ..audit.verify import verify

    logs = list(args.logs)
    key_path = args.key
    checkpoint_files = list(args.checkpoints or [])
    if args.config:
        cfg = load_config(args.config)
        if key_path is None and cfg.audit_key is not None:
            pub = cfg.audit_key.with_suffix(".pub")
            key_path = str(pub) if pub.exists() else None
        if cfg.audit.checkpoint_copy is not None and cfg.audit.checkpoint_copy.exists():
            checkpoint_files.append(str(cfg.audit.checkpoint_copy))
    key = _public_key(key_path)
    results = []
    for path in logs:
        r = verify(
            path,
            public_key=key,
            checkpoint_files=checkpoint_files,
            require_checkpoints=args.require_checkpoints,
        )
        results.append(
            {
                "log": path,
                "ok": r.ok,
                "records": r.records,
                "first_bad_line": r.first_bad_line,
                "first_bad_seq": r.first_bad_seq,
                "file": r.file,
                "problem": r.problem,
                "failed_checkpoint": r.failed_checkpoint,
                "checkpoints": r.checkpoints,
                "signatures_checked": r.signatures_checked,
                "uncovered": r.uncovered,
                "root": r.root,
                "files": list(r.files),
            }
        )
    ok = all(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "results": results}, ensure_ascii=False, indent=2))
    else:
        for r in results:
            if r["ok"]:
                sig = "signatures checked" if r["signatures_checked"] else "signatures NOT checked"
                print(
                    f"{r['log']}: ok, {r['records']} records in {len(r['files'])} file(s), "
                    f"chain and tree intact, {r['checkpoints']} checkpoint(s) ({sig}), "
                    f"{r['uncovered']} record(s) after the last checkpoint"
                )
            else:
                print(f"{r['log']}: TAMPERED or damaged: {r['problem']}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAIL


def _filter(args: argparse.Namespace) -> Any:
    from ..audit.tools import Filter

    seq_from = seq_to = None
    if args.seq:
        lo, sep, hi = args.seq.partition(":")
        try:
            seq_from = int(lo) if lo else None
            seq_to = (int(hi) if hi else None) if sep else seq_from
        except ValueError:
            raise CliError(f"--seq {args.seq!r}: expected N, FROM:TO, FROM: or :TO") from None
    return Filter(
        msg_id=args.id,
        flow=args.flow,
        seq_from=seq_from,
        seq_to=seq_to,
        since=args.since,
        until=args.until,
        person=args.person,
        event=args.event,
        outcome=args.outcome,
        sha256=args.sha256,
        gateway=args.gateway,
    )


def _row(r: dict[str, Any]) -> str:
    m = r.get("message") or {}
    who = r.get("who") or {}
    person = who.get("person") or who.get("system") or "-"
    return (
        f"{r['time']}  {r['gateway']:<12} {r['agent']:<8} #{r['seq']:<7} {r['event']:<16} "
        f"{r['outcome']:<7} {m.get('flow', '-')!s:<8} {m.get('seq', '-')!s:>6} "
        f"{m.get('id', '-')!s}  {person}  {r.get('reason') or ''}"
    ).rstrip()


def _read(fn: Any) -> Any:
    try:
        return fn()
    except (ValueError, OSError) as e:
        raise CliError(f"cannot read the log: {e}", EXIT_FAIL) from None


def cmd_audit_search(args: argparse.Namespace) -> int:
    from ..audit.tools import search

    _check_logs(args.logs)
    found = _read(lambda: list(search(args.logs, _filter(args))))
    emit(args, found, "\n".join(_row(r) for r in found) or "no matching records")
    return EXIT_OK if found else EXIT_FAIL


def cmd_audit_show(args: argparse.Namespace) -> int:
    from ..audit.tools import story

    _check_logs(args.logs)
    steps = _read(lambda: story(args.logs, args.msgid))
    if not steps:
        emit(args, [], f"no record of message {args.msgid} in {', '.join(args.logs)}")
        return EXIT_FAIL
    first = steps[0].get("message") or {}
    head = (
        f"message {args.msgid}: flow {first.get('flow', '-')}, seq {first.get('seq', '-')}, "
        f"{first.get('name', '-')}, {first.get('size', '-')} bytes, sha256 {first.get('sha256')}"
    )
    emit(args, steps, "\n".join([head, *(_row(r) for r in steps)]))
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    from ..audit.tools import export_lines, search

    _check_logs(args.logs)
    lines = _read(lambda: list(export_lines(search(args.logs, _filter(args)), args.format)))
    text = "".join(line + "\n" for line in lines)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_audit_prove(args: argparse.Namespace) -> int:
    from ..audit.tools import check_proof, prove

    key = _public_key(args.key)
    if args.check:
        try:
            bundles = json.loads(Path(args.check).read_text())
        except (OSError, ValueError) as e:
            raise CliError(f"cannot read proof file {args.check}: {e}") from None
        problems = [check_proof(b, key) for b in bundles] if isinstance(bundles, list) else []
        ok = bool(problems) and all(p is None for p in problems)
        emit(args, {"ok": ok, "problems": problems},
             "proof holds" if ok else f"proof does NOT hold: {problems or 'empty'}")  # fmt: skip
        return EXIT_OK if ok else EXIT_FAIL
    if args.msgid is None or args.log is None:
        raise CliError("give MSGID and LOG (or --check FILE)")
    _check_logs([args.log])
    bundles = _read(lambda: prove(args.log, args.msgid))
    if not bundles:
        emit(args, [], f"no record of message {args.msgid} in {args.log}")
        return EXIT_FAIL
    for b in bundles:
        b["holds"] = check_proof(b, key) is None
    text = "\n".join(
        f"seq {json.loads(b['record'])['seq']} ({json.loads(b['record'])['event']}): leaf "
        f"{b['leaf_index']} of {b['tree_size']}, root {b['root']}, "
        f"{len(b['proof'])} proof hashes, "
        + ("signed checkpoint " + b["checkpoint"]["time"] if b["checkpoint"] else "NOT yet signed")
        for b in bundles
    )
    emit(args, bundles, text)
    return EXIT_OK if all(b["holds"] for b in bundles) else EXIT_FAIL


def cmd_audit_reconcile(args: argparse.Namespace) -> int:
    from ..audit.tools import reconcile

    _check_logs([args.sender_log, args.receiver_log])
    r = _read(
        lambda: reconcile(
            args.sender_log,
            args.receiver_log,
            sender_key=_public_key(args.sender_key),
            receiver_key=_public_key(args.receiver_key),
        )
    )
    data = {
        "ok": r.ok,
        "flows": r.flows,
        "missing": list(r.missing),
        "logs": list(r.logs),
    }
    lines = [
        f"flow {flow}: {c['sealed']} sealed, {c['delivered']} delivered with the same SHA-256, "
        f"{c['missing']} not"
        for flow, c in sorted(r.flows.items())
    ]
    lines += [
        f"  NOT DELIVERED {m['flow']} #{m['seq']} {m['id']}: {m['stopped']}" for m in r.missing
    ]
    lines += [f"  log {c['log']}: {'intact' if c['ok'] else c['problem']}" for c in r.logs]
    if not r.flows:
        lines.insert(0, "no sealed messages in the sender's log")
    emit(args, data, "\n".join(lines))
    return EXIT_OK if r.ok else EXIT_FAIL


def _add_filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (all given must match)")
    g.add_argument("--id", help="message id")
    g.add_argument("--flow")
    g.add_argument("--seq", metavar="FROM:TO", help="message sequence number or range")
    g.add_argument("--since", metavar="TIME", help="RFC 3339 time or prefix, inclusive")
    g.add_argument("--until", metavar="TIME", help="RFC 3339 time or prefix, inclusive")
    g.add_argument("--person", help="who.person, e.g. an approving officer")
    g.add_argument("--event")
    g.add_argument("--outcome", choices=["ok", "refused", "error", "info"])
    g.add_argument("--sha256")
    g.add_argument("--gateway")


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("audit", help="audit log tools (read-only)")
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True
    av = asub.add_parser(
        "verify",
        help="check records, Merkle tree and signed checkpoints of audit logs",
        description="Exit 0 when every log is intact; 1 naming the first bad record or the "
        "failed checkpoint otherwise; 2 for a usage error.",
    )
    av.add_argument("logs", nargs="+", metavar="LOG")
    av.add_argument("--key", metavar="PUB", help="the gateway's audit public key (.audit.pub)")
    av.add_argument(
        "--checkpoints",
        action="append",
        metavar="FILE",
        help="another copy of the checkpoints (e.g. the one shipped elsewhere); repeatable",
    )
    av.add_argument(
        "--config", metavar="FILE", help="take the audit key and checkpoint copy from a config"
    )
    av.add_argument(
        "--require-checkpoints",
        action="store_true",
        help="fail when no checkpoint covers a non-empty log",
    )
    av.add_argument("--json", action="store_true")
    av.set_defaults(func=cmd_audit_verify)

    s = asub.add_parser(
        "search",
        help="find records by message, flow, sequence, time, person, event, outcome, SHA-256",
        description="Exit 0 when records match, 1 when none do.",
    )
    s.add_argument("logs", nargs="+", metavar="LOG")
    _add_filters(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_audit_search)

    sh = asub.add_parser(
        "show",
        help="the whole life of one message across both gateways' logs, in order",
        description="Exit 0 when the message is found, 1 when it is not.",
    )
    sh.add_argument("msgid", metavar="MSGID")
    sh.add_argument("logs", nargs="+", metavar="LOG")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_audit_show)

    e = asub.add_parser(
        "export",
        help="records as RFC 5424 syslog lines or JSON lines, for a SIEM",
        description="Writes one line per record; the filters of `search` apply.",
    )
    e.add_argument("logs", nargs="+", metavar="LOG")
    e.add_argument("--format", required=True, choices=["rfc5424", "jsonl"])
    e.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    _add_filters(e)
    e.set_defaults(func=cmd_audit_export)

    p = asub.add_parser(
        "prove",
        help="inclusion proofs of a message's records against the latest signed checkpoint",
        description="Prints proof bundles a third party can check with --check and the "
        "audit public key. Exit 0 when every proof holds, 1 otherwise.",
    )
    p.add_argument("msgid", metavar="MSGID", nargs="?")
    p.add_argument("log", metavar="LOG", nargs="?")
    p.add_argument("--key", metavar="PUB", help="audit public key to check the checkpoint with")
    p.add_argument("--check", metavar="FILE", help="check a saved proof (the --json output)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_prove)

    r = asub.add_parser(
        "reconcile",
        help="prove every message sealed by the sender was delivered with the same SHA-256",
        description="Exit 0 when every sealed message was delivered unchanged and both logs "
        "verify; 1 listing each message that was not (and where it stopped).",
    )
    r.add_argument("sender_log", metavar="SENDER_LOG")
    r.add_argument("receiver_log", metavar="RECEIVER_LOG")
    r.add_argument("--sender-key", metavar="PUB")
    r.add_argument("--receiver-key", metavar="PUB")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_audit_reconcile)
