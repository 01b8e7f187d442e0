"""Delivery is idempotent at every point a crash can interrupt it: a receiver restarted there
finishes the delivery and never makes a second copy (found by the kill -9 test once)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from harness import GatewayPair, seal_test_envelope, wait_for

from zonegate.transfer.spool import MessageMeta


def _stage(pair: GatewayPair, point: str) -> tuple[str, str]:
    """Leave one message in received/ as a receiver killed at `point` would have left it."""
    spool = pair.receiver_spool
    spool.create()
    body = f"delivered once, interrupted at {point}\n".encode() * 100
    msg_id, header, data = seal_test_envelope(pair, body)
    entry = spool.entry("received", msg_id)
    entry.mkdir()
    (entry / "envelope").write_bytes(bytes(data))
    new = pair.inbox_new
    tmp = new.parent / "tmp"
    new.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    target = new / header.original_name
    part = tmp / f"{msg_id}.part"
    meta = MessageMeta(
        id=msg_id,
        flow="import",
        system=header.system,
        original_name=header.original_name,
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        seq=header.sequence,
    )
    extra: dict = {"delivering_to": str(target)}
    if point in ("linked", "part-removed", "marker-written"):
        part.write_bytes(body)
        os.link(part, target)
    if point in ("part-removed", "marker-written"):
        part.unlink()
    if point == "opened":
        part.write_bytes(body)
    if point == "marker-written":
        extra = {"delivered_as": str(target), "delivered_at": "2026-11-25T00:00:00Z"}
    (entry / "meta.json").write_bytes(meta.replace(extra=extra).to_json())
    return msg_id, header.original_name


@pytest.mark.parametrize("point", ["opened", "linked", "part-removed", "marker-written"])
def test_a_delivery_interrupted_anywhere_finishes_once(pair: GatewayPair, point: str) -> None:
    msg_id, name = _stage(pair, point)
    pair.start("receiver")
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 20, "the delivery to finish")
    assert [p.name for p in pair.inbox_new.iterdir()] == [name], "a second copy was made"
    assert not list((pair.inbox_new.parent / "tmp").iterdir())
    assert pair.receiver_spool.ids("delivered") == [msg_id]
    records = [json.loads(x) for x in pair.audit_log("internal-gw").read_text().splitlines()]
    opened = [r for r in records if r["event"] == "verified"]
    assert opened == [], f"interrupted at {point}: the envelope was opened a second time"
