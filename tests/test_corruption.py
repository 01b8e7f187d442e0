"""Files damaged on disk (truncated, bit-flipped, zero-filled) go to corrupt/ with a reason and an
audit record; no agent crashes and the messages queued behind them still go through."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

from harness import GatewayPair, metric_value, seal_test_envelope, wait_for

from zonegate.transfer.spool import MessageMeta


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _zero_fill(path: Path) -> None:
    data = bytearray(path.read_bytes())
    n = min(4096, len(data) - 100)
    data[100 : 100 + n] = bytes(n)
    path.write_bytes(bytes(data))


def _submit(pair: GatewayPair, tmp_path: Path, n: int) -> list[str]:
    from zonegate.gateways.submit import submit_files

    src = tmp_path / "src"
    src.mkdir()
    names = []
    for i in range(n):
        name = f"doc-{i}.txt"
        (src / name).write_bytes(f"document {i}\n".encode() * (2000 + i))
        names.append(name)
    submit_files(pair.outbox, "import", [src])
    return names


def _audit(pair: GatewayPair, gateway: str) -> list[dict]:
    return [json.loads(x) for x in pair.audit_log(gateway).read_text().splitlines()]


def test_damaged_envelopes_in_the_sender_spool_go_to_corrupt(
    pair: GatewayPair, tmp_path: Path
) -> None:
    pair.start("ingest", "sender")  # no receiver yet: sealed envelopes wait in active/
    names = _submit(pair, tmp_path, 6)
    spool = pair.sender_spool

    def sealed() -> int:
        return sum((spool.entry("active", i) / "envelope").exists() for i in spool.ids("active"))

    wait_for(lambda: sealed() == 6, 30, "six sealed envelopes")
    pair.kill("sender", signal.SIGTERM)
    ids = spool.ids("active")
    damaged = {ids[0]: _truncate, ids[2]: _flip, ids[4]: _zero_fill}
    damaged_names = set()
    for msg_id, damage in damaged.items():
        damage(spool.entry("active", msg_id) / "envelope")
        damaged_names.add(spool.read_meta("active", msg_id).original_name)

    pair.start("receiver", "sender")
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 3, 30, "the intact three")
    wait_for(lambda: spool.depth("corrupt") == 3, 30, "the damaged three in corrupt/")
    assert sorted(p.name for p in pair.inbox_new.iterdir()) == sorted(set(names) - damaged_names)
    assert sorted(spool.ids("corrupt")) == sorted(damaged)
    for msg_id in damaged:
        meta = spool.read_meta("corrupt", msg_id)
        assert meta.reason_code == "corrupt"
        assert "envelope damaged on disk" in (meta.reason or "")
    records = [r for r in _audit(pair, "internet-gw") if r["event"] == "corrupt"]
    assert sorted(r["message"]["id"] for r in records) == sorted(damaged)
    assert all(r["outcome"] == "error" and r["reason"] for r in records)
    text = pair.metrics("sender")
    assert metric_value(text, "zonegate_rejections_total", stage="send", reason="corrupt") == 3
    assert pair.receiver_spool.depth("quarantine") == 0
    assert all(pair.alive(a) for a in ("ingest", "sender", "receiver"))


def test_damaged_plaintext_waiting_to_be_sealed_goes_to_corrupt(
    pair: GatewayPair, tmp_path: Path
) -> None:
    pair.start("ingest")
    _submit(pair, tmp_path, 3)
    spool = pair.sender_spool
    wait_for(lambda: spool.depth("ready") == 3, 30, "three checked files")
    victim = spool.ids("ready")[1]
    _zero_fill(spool.entry("ready", victim) / "data")
    pair.start("sender", "receiver")
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 2, 30, "the other two")
    wait_for(lambda: spool.depth("corrupt") == 1, 30, "the damaged one")
    meta = spool.read_meta("corrupt", victim)
    assert "plaintext-mismatch" in (meta.reason or "")
    assert not any(p.name == meta.original_name for p in pair.inbox_new.iterdir())


def test_envelope_damaged_in_the_receiver_spool_goes_to_corrupt(pair: GatewayPair) -> None:
    # Envelopes left in received/ by a receiver that stopped, then damaged while it was down.
    spool = pair.receiver_spool
    spool.create()
    entries = {}
    for kind in ("intact", "truncated", "flipped", "zeroed", "bad-meta"):
        msg_id, _header, data = seal_test_envelope(pair, f"{kind}\n".encode() * 500)
        entry = spool.entry("received", msg_id)
        entry.mkdir()
        (entry / "envelope").write_bytes(bytes(data))
        meta = MessageMeta(id=msg_id, flow="import", system="internet-gw", original_name="")
        meta = meta.replace(extra={"link_sha256": hashlib.sha256(data).hexdigest()})
        (entry / "meta.json").write_bytes(meta.to_json())
        entries[kind] = msg_id
    _truncate(spool.entry("received", entries["truncated"]) / "envelope")
    _flip(spool.entry("received", entries["flipped"]) / "envelope")
    _zero_fill(spool.entry("received", entries["zeroed"]) / "envelope")
    (spool.entry("received", entries["bad-meta"]) / "meta.json").write_bytes(b"\0" * 64)

    pair.start("receiver")
    wait_for(lambda: spool.depth("delivered") == 1, 30, "the intact envelope")
    wait_for(lambda: spool.depth("corrupt") == 4, 30, "four in corrupt/")
    assert spool.ids("delivered") == [entries["intact"]]
    assert spool.depth("quarantine") == 0, "disk damage is not the sender's doing"
    records = [r for r in _audit(pair, "internal-gw") if r["event"] == "corrupt"]
    by_id = {r["message"]["id"]: r["reason"] for r in records}
    assert set(by_id) == {entries[k] for k in ("truncated", "flipped", "zeroed", "bad-meta")}
    assert "unreadable metadata" in by_id[entries["bad-meta"]]
    for kind in ("truncated", "flipped", "zeroed"):
        assert "changed on disk since it arrived" in by_id[entries[kind]]
    assert pair.alive("receiver")
