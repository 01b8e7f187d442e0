"""The demo's `publish` flow: review before release (先审后发), on one machine.

A press release is dropped into the internal gateway's outbox by the press office (whose officer,
li-wei, uses that account), waits in `review/`, is refused li-wei's own approval (the two-person
rule), is approved by two other officers, travels with their signed approvals to the internet
gateway, which checks them against its own officers and delivers the file with a signed manifest
that `zonegate verify` accepts.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from ..transfer.keys import generate_person_key, load_signing_public
from ..transfer.publication import companion_paths, verify_publication
from ..transfer.spool import Spool
from ..zones.config import load_gateway_config
from .review import ReviewDesk
from .submit import submit_files

__all__ = ["add_publish_flow", "print_publication", "publish_release", "write_people"]

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


def add_publish_flow(cfg: dict, name: str, port: int, limit: int, expires: str) -> None:
    """Add the people and the publish flow to one demo gateway's config (a YAML-ready dict)."""
    cfg["people"] = [
        {"name": n, "role": role, "key": f"../people/{n}.person.pub"}
        | ({"accounts": list(accounts)} if accounts else {})
        for n, role, accounts in PEOPLE
    ]
    cfg["flows"].append(
        {
            "name": PUBLISH,
            "from": "internal",
            "to": "internet",
            "sender": "internal-gw",
            "receiver": "internet-gw",
            "transport": {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}"},
            "policy": {"min_size": 0, "max_size": limit},
            "approval": {
                "required": 2,
                "officers": [SUBMITTER, *APPROVERS],
                "expires": expires,
            },
            "signed_delivery": True,
        }
    )
    extra = {"receiver": "127.0.0.1:0"} if name == "internet-gw" else {
        "ingest": "127.0.0.1:0", "sender": "127.0.0.1:0"
    }  # fmt: skip
    cfg["metrics"] = {**cfg["metrics"], **extra}


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def publish_release(
    root: Path, configs: dict[str, Path], quiet: bool, timeout: float
) -> dict[str, Any]:
    """Send the sample release through review; returns what happened, for the summary."""
    source = root / "samples-publish" / RELEASE_NAME
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(RELEASE_TEXT, encoding="utf-8")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    _say(quiet, f"\nzonegate demo: internal zone -> internet zone, flow '{PUBLISH}' (先审后发)")
    _say(quiet, f"  {SUBMITTER} (press office) drops {RELEASE_NAME!r} into outbox/{PUBLISH}/")
    submit_files(root / "internal-gw" / "outbox", PUBLISH, [source], wait=timeout)
    internal = Spool(root / "internal-gw" / "spool")
    _wait(lambda: internal.depth("review") == 1, timeout, "the release to reach review/")
    msg_id = internal.ids("review")[0]
    _say(quiet, f"  waiting in review/: {msg_id} (needs 2 officers' approvals)")
    desk = ReviewDesk(load_gateway_config(configs["internal-gw"]))
    people = root / "people"
    steps = []
    for name in (SUBMITTER, *APPROVERS):
        d = desk.approve(msg_id, people / f"{name}.person.key")
        steps.append({"person": name, "ok": d.ok, "code": d.code, "message": d.message})
        mark = "ok " if d.ok else "REFUSED"
        _say(quiet, f"  [{mark}] approval by {name}: {d.message if d.ok else d.code}")
        if not d.ok:
            _say(quiet, f"           {d.message}")
    external = Spool(root / "internet-gw" / "spool")
    _wait(lambda: external.depth("delivered") == 1, timeout, "the release to be delivered")
    meta = external.read_meta("delivered", external.ids("delivered")[0])
    path = Path(meta.extra["delivered_as"])
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    approvers = [a["name"] for a in meta.extra.get("approvers", [])]
    trusted_file = root / "keys" / "internet-gw.sign.pub"
    trusted = load_signing_public(trusted_file)
    check = verify_publication(path, trusted)
    manifest, signature = companion_paths(path)
    refused_self = steps[0]["code"] == "approval-by-submitter"
    ok = (
        refused_self
        and all(s["ok"] for s in steps[1:])
        and got == digest
        and sorted(approvers) == sorted(APPROVERS)
        and check.ok
    )
    return {
        "ok": ok,
        "message_id": msg_id,
        "steps": steps,
        "signature_valid": check.ok,
        "signature_problem": check.problem,
        "manifest": str(manifest),
        "signature": str(signature),
        "verify_command": f"zonegate verify '{path}' --key {trusted_file}",
        "delivered": {
            "name": meta.original_name,
            "path": str(path),
            "sha256": got,
            "flow": PUBLISH,
            "size": meta.size,
            "identical": got == digest,
            "approvers": approvers,
        },
    }


def print_publication(p: dict[str, Any]) -> None:
    d = p["delivered"]
    print("\nPublished (1) into the internet zone, after review (先审后发):")
    mark = "ok " if d["identical"] else "BAD"
    print(f"  [{mark}] {d['name']}  ({d['size']} B, sha256 {d['sha256'][:16]}…)")
    print(f"        approved by {', '.join(d['approvers'])}; submitter's own approval refused")
    print(f"        -> {d['path']}")
    state = "valid" if p["signature_valid"] else f"INVALID: {p['signature_problem']}"
    print(f"        signed manifest: {state}  (beside it: .zgmanifest.json, .zgsig)")
    print(f"        check it: {p['verify_command']}")
