"""The demo's `publish` flow: review before release (先审后发), on one machine.

A press release is dropped into the internal gateway's outbox by the press office (whose officer,
li-wei, uses that account), waits in `review/`, is refused li-wei's own approval (the two-person
rule), is approved by two other officers, travels with their signed approvals to the internet
gateway, which checks them against its own officers and delivers the file with a signed manifest
that `zonegate verify` accepts.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from ..transfer.keys import generate_person_key, load_signing_public
from ..transfer.publication import companion_paths, verify_publication
from ..transfer.spool import Spool
from ..zones.config import load_gateway_config
from .review import ReviewDesk

__all__ = [
    "PUBLISH",
    "add_publish_flow",
    "check_publication",
    "people_entries",
    "print_publication",
    "release_rules",
    "review_release",
    "write_people",
    "write_release",
]

PUBLISH = "publish"
#: name, role, accounts: li-wei submits through the outbox account, so cannot approve what it drops
PEOPLE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("li-wei", "security-officer", ("outbox",)),
    ("zhang-min", "security-officer", ()),
    ("wang-fang", "security-officer", ()),
    ("zhao-lei", "administrator", ()),
    ("sun-li", "auditor", ()),
)
SUBMITTER = "li-wei"
APPROVERS = ("zhang-min", "wang-fang")
RELEASE_NAME = "press-release-2026-11-25 新闻发布.txt"
RELEASE_TEXT = (
    "市司法局关于开展法律援助便民服务的公告\n"
    "Municipal Bureau of Justice: legal aid service points open in all districts.\n"
)


def write_people(directory: Path) -> None:
    """Each demo person's role key pair (private 0600), as `zonegate keys generate --person`."""
    for name, _role, _accounts in PEOPLE:
        generate_person_key(directory, name)


def people_entries() -> list[dict[str, Any]]:
    """The demo people as a gateway config lists them (public keys under `../people/`)."""
    return [
        {"name": n, "role": role, "key": f"../people/{n}.person.pub"}
        | ({"accounts": list(accounts)} if accounts else {})
        for n, role, accounts in PEOPLE
    ]


def release_rules(expires: str) -> dict[str, Any]:
    """What makes a flow a reviewed release: two of the officers, and a signed delivery."""
    return {
        "approval": {"required": 2, "officers": [SUBMITTER, *APPROVERS], "expires": expires},
        "signed_delivery": True,
    }


def add_publish_flow(cfg: dict, name: str, port: int, limit: int, expires: str) -> None:
    """Add the people and the publish flow to one gateway of the two-gateway pair."""
    cfg["people"] = people_entries()
    cfg["flows"].append(
        {
            "name": PUBLISH,
            "from": "internal",
            "to": "internet",
            "sender": "internal-gw",
            "receiver": "internet-gw",
            "transport": {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}"},
            "policy": {"min_size": 0, "max_size": limit},
        }
        | release_rules(expires)
    )
    extra = (
        {"receiver": "127.0.0.1:0"}
        if name == "internet-gw"
        else {"ingest": "127.0.0.1:0", "sender": "127.0.0.1:0"}
    )
    cfg["metrics"] = {**cfg["metrics"], **extra}


def write_release(directory: Path) -> Path:
    """The sample press release, as the press office writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / RELEASE_NAME
    source.write_text(RELEASE_TEXT, encoding="utf-8")
    return source


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def review_release(config_path: Path, people: Path, timeout: float, quiet: bool) -> dict[str, Any]:
    """Wait for the release in the sending gateway's review/, then the three officers act.

    The submitter's own approval must be refused (two-person rule), the other two accepted;
    `steps` records each decision as the review desk gave it. Raises TimeoutError when the
    release never reaches review/.
    """
    config = load_gateway_config(config_path)
    spool = Spool(config.spool)
    deadline = time.monotonic() + timeout
    while not (
        waiting := [i for i in spool.ids("review") if spool.read_meta("review", i).flow == PUBLISH]
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for the release in review/")
        time.sleep(0.05)
    msg_id = waiting[0]
    _say(quiet, f"\nzonegate demo: review before release (先审后发), flow '{PUBLISH}'")
    _say(quiet, f"  {SUBMITTER} (press office) dropped {RELEASE_NAME!r} into outbox/{PUBLISH}/")
    _say(quiet, f"  waiting in review/: {msg_id} (needs 2 officers' approvals)")
    desk = ReviewDesk(config)
    steps = []
    for name in (SUBMITTER, *APPROVERS):
        d = desk.approve(msg_id, people / f"{name}.person.key")
        steps.append({"person": name, "ok": d.ok, "code": d.code, "message": d.message})
        mark = "ok " if d.ok else "REFUSED"
        _say(quiet, f"  [{mark}] approval by {name}: {d.message if d.ok else d.code}")
        if not d.ok:
            _say(quiet, f"           {d.message}")
    ok = steps[0]["code"] == "approval-by-submitter" and all(s["ok"] for s in steps[1:])
    return {"ok": ok, "message_id": msg_id, "steps": steps}


def check_publication(delivered: dict[str, Any], trusted_file: Path) -> dict[str, Any]:
    """The delivered release's signed manifest against the receiving gateway's public key, and
    the approvers it travelled with against the two officers who approved it."""
    path = Path(delivered["path"])
    check = verify_publication(path, load_signing_public(trusted_file))
    manifest, signature = companion_paths(path)
    approvers = sorted(delivered.get("approvers", []))
    return {
        "ok": check.ok and approvers == sorted(APPROVERS),
        "signature_valid": check.ok,
        "signature_problem": check.problem,
        "approvers": delivered.get("approvers", []),
        "manifest": str(manifest),
        "signature": str(signature),
        "verify_command": f"zonegate verify {shlex.quote(str(path))} "
        f"--key {shlex.quote(str(trusted_file))}",
    }


def print_publication(p: dict[str, Any], delivered: list[dict[str, Any]]) -> None:
    """The review's outcome on screen, under the flow's deliveries."""
    for d in delivered:
        print(
            f"        approved by {', '.join(d.get('approvers', []))}; "
            "submitter's own approval refused"
        )
    state = "valid" if p["signature_valid"] else f"INVALID: {p['signature_problem']}"
    print(f"        signed manifest: {state}  (beside it: .zgmanifest.json, .zgsig)")
    print(f"        check it: {p['verify_command']}")
