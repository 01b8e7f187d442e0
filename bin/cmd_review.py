"""`zonegate review`: security officers look at held messages and approve or reject them.

`approve` and `reject` sign with the officer's own key (`--key FILE`): the key, found in the
gateway's config, proves who is deciding and in which role. Everything printed from a message
(its name, its content) goes through safe_text first: a file may carry terminal escape sequences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import EXIT_FAIL, EXIT_OK, CliError, emit, load_config


def _desk(args: argparse.Namespace) -> Any:
    from ..gateways.review import ReviewDesk, ReviewError

    try:
        return ReviewDesk(load_config(args.config))
    except ReviewError as e:
        raise CliError(str(e)) from None


def cmd_review_list(args: argparse.Namespace) -> int:
    items = _desk(args).list()
    lines = [f"{len(items)} message(s) waiting for review"]
    for i in items:
        lines.append(
            f"  {i['id']}  {i['flow']}  {i['approvals']}/{i['required']} approvals  "
            f"{i['size']} B  {i['name']}  (from {i['submitter']}, expires {i['expires_at']})"
        )
    emit(args, items, "\n".join(lines))
    return EXIT_OK


def _render_show(d: dict[str, Any]) -> str:
    policy = d["policy"]
    approval = d["approval"]
    review = d["review"]
    lines = [
        f"message   {d['id']}  ({d['state']}/)",
        f"flow      {d['flow']}  (classification {d['classification'] or '-'})",
        f"name      {d['name']}",
        f"size      {d['size']} bytes",
        f"sha256    {d['sha256']}",
        f"type      {d['content_type']}",
        f"submitter {d['submitter']}",
        f"collected {d['collected_at']} by {review.get('collected_by', '?')}",
        f"expires   {d['expires_at']}",
        f"policy    {policy['result']}: {', '.join(policy['checks'])}"
        + (f"; {policy['refusal']}" if policy["refusal"] else ""),
        f"keywords  {', '.join(d['keywords']) if d['keywords'] else '(none matched)'}",
        f"approvals {len(approval['approved_by'])} of {approval['required']} "
        f"({', '.join(approval['approved_by']) or 'none yet'}); officers: "
        f"{', '.join(approval['officers'])}",
    ]
    for r in review.get("reviews", []):
        extra = f": {r['reason']}" if r.get("reason") else ""
        lines.append(f"  {r['time']}  {r['decision']} by {r['person']} ({r['role']}){extra}")
    if review.get("final_approval"):
        f = review["final_approval"]
        lines.append(f"final approval by {f['person']} at {f['time']}")
    if d["preview"] is None:
        lines.append("preview   (no content kept: the message is sealed or gone)")
    else:
        shown = d["preview_bytes"]
        lines.append(f"preview   first {shown} of {d['size']} bytes, control characters escaped:")
        lines.append("-" * 72)
        lines.append(d["preview"])
        lines.append("-" * 72)
    return "\n".join(lines)


def cmd_review_show(args: argparse.Namespace) -> int:
    from ..gateways.review import ReviewError

    try:
        data = _desk(args).show(args.id)
    except ReviewError as e:
        raise CliError(str(e), EXIT_FAIL) from None
    if args.json:
        # ensure_ascii: every character outside ASCII is a \u escape, so nothing in the output
        # can act on a terminal (preview and names are already escaped as well)
        print(json.dumps(data, ensure_ascii=True, indent=2))
    else:
        print(_render_show(data))
    return EXIT_OK


def _decide(args: argparse.Namespace, approve: bool) -> int:
    from ..gateways.review import ReviewError

    desk = _desk(args)
    try:
        if approve:
            d = desk.approve(args.id, Path(args.key))
        else:
            d = desk.reject(args.id, Path(args.key), args.reason)
    except ReviewError as e:
        raise CliError(str(e)) from None
    data = {
        "ok": d.ok,
        "code": d.code,
        "message": d.message,
        "approvals": d.approvals,
        "required": d.required,
        "released": d.released,
    }
    if args.json:
        emit(args, data, "")
    elif d.ok:
        print(d.message)
    else:
        print(f"zonegate: refused: {d.code}: {d.message}", file=sys.stderr)
    return EXIT_OK if d.ok else EXIT_FAIL


def cmd_review_approve(args: argparse.Namespace) -> int:
    return _decide(args, approve=True)


def cmd_review_reject(args: argparse.Namespace) -> int:
    return _decide(args, approve=False)


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "review",
        help="review before release: list, show, approve, reject held messages",
        description="Messages of flows that need approvals wait in review/ until enough "
        "security officers approve them. Exit codes: 0 done, 1 refused (the reason is printed "
        "and audited), 2 usage error.",
    )
    rsub = r.add_subparsers(dest="review_command", metavar="ACTION")
    rsub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, metavar="FILE", help="the gateway's config")
        p.add_argument("--json", action="store_true")

    rl = rsub.add_parser("list", help="messages waiting for review")
    common(rl)
    rl.set_defaults(func=cmd_review_list)

    rs = rsub.add_parser("show", help="metadata, policy results and a safe preview of one")
    rs.add_argument("id", metavar="ID")
    common(rs)
    rs.set_defaults(func=cmd_review_show)

    ra = rsub.add_parser("approve", help="approve a message, signing with your officer key")
    ra.add_argument("id", metavar="ID")
    ra.add_argument("--key", required=True, metavar="FILE", help="your .person.key (0600)")
    common(ra)
    ra.set_defaults(func=cmd_review_approve)

    rj = rsub.add_parser("reject", help="reject a message with a reason (to quarantine)")
    rj.add_argument("id", metavar="ID")
    rj.add_argument("--key", required=True, metavar="FILE", help="your .person.key (0600)")
    rj.add_argument("--reason", required=True, help="why it may not be released")
    common(rj)
    rj.set_defaults(func=cmd_review_reject)
