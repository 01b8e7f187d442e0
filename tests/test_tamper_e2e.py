"""Acceptance 4: damaged, reordered and replayed envelopes on the link, against a real receiver.

The test plays the sending gateway itself (its real keys, the real envelope and link code) so it
can put exactly the bytes it wants on the wire; the receiver is the real agent process. Every
refusal must leave a quarantined copy with its reason, an audit record and a metric.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from harness import GatewayPair, metric_value, seal_test_envelope, wait_for

from zonegate.transfer.zmqlink import ZmqLinkSender
from zonegate.zones.config import load_gateway_config


class Wire:
    """The test's end of the link: the real PUSH adapter, driven by hand."""

    def __init__(self, endpoint: str, tmp: Path) -> None:
        self.link = ZmqLinkSender(endpoint)
        self.tmp = tmp
        self.stop = threading.Event()
        wait_for(lambda: bool(self.link.link_events()) or self.link.connected, 20, "link up")

    def send(self, msg_id: str, data: bytes, resend: bool = False) -> None:
        path = self.tmp / f"{msg_id}-{os.urandom(4).hex()}.env"
        path.write_bytes(data)
        assert self.link.send_envelope(path, msg_id, "import", "internet-gw", resend, self.stop)

    def close(self) -> None:
        self.link.close()


def _quarantined(pair: GatewayPair) -> dict[str, dict]:
    spool = pair.receiver_spool
    out = {}
    for qid in spool.ids("quarantine"):
        meta = json.loads((spool.entry("quarantine", qid) / "meta.json").read_text())
        out[meta["extra"]["claimed_id"]] = {"qid": qid, **meta}
    return out


def _audit(pair: GatewayPair) -> list[dict]:
    return [json.loads(line) for line in pair.audit_log("internal-gw").read_text().splitlines()]


@pytest.fixture
def wire(pair: GatewayPair, tmp_path: Path):
    pair.start("receiver")
    cfg = load_gateway_config(pair.configs["internal-gw"])
    w = Wire(cfg.flow("import").transport.endpoint, tmp_path)
    yield w
    w.close()


def test_tampered_envelopes_are_refused_kept_audited_counted(pair: GatewayPair, wire: Wire) -> None:
    cases: dict[str, tuple[bytes, set[str]]] = {}

    good_id, _h, good = seal_test_envelope(pair, b"a valid message\n")
    wire.send(good_id, bytes(good))
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 20, "the valid envelope")

    def flipped(offset_of: str) -> None:
        msg_id, header, data = seal_test_envelope(pair, os.urandom(3 * 4096 + 100), chunk_size=4096)
        hlen = len(header.to_bytes())
        offsets = {
            "magic": 3,
            "header-length": 10,
            "header": 12 + hlen // 2,
            "wrapped-key": 14 + hlen + 40,
            "first-chunk": 94 + hlen + 10,
            "last-chunk": len(data) - 64 - 20,
            "signature": len(data) - 5,
        }
        data[offsets[offset_of]] ^= 0x01
        cases[msg_id] = (bytes(data), {"malformed", "bad-signature"})

    for region in (
        "magic",
        "header-length",
        "header",
        "wrapped-key",
        "first-chunk",
        "last-chunk",
        "signature",
    ):
        flipped(region)

    msg_id, header, data = seal_test_envelope(pair, os.urandom(5000))
    cases[msg_id] = (bytes(data[: len(data) // 2]), {"malformed"})  # truncated

    msg_id, header, data = seal_test_envelope(pair, os.urandom(3 * 4096), chunk_size=4096)
    start = 94 + len(header.to_bytes())
    c = 4096 + 16
    first, second = data[start : start + c], data[start + c : start + 2 * c]
    data[start : start + c], data[start + c : start + 2 * c] = second, first
    cases[msg_id] = (bytes(data), {"bad-signature"})  # two chunks swapped

    for msg_id, (data, _codes) in cases.items():
        wire.send(msg_id, data)
    wire.send(good_id, bytes(good))  # a replay of an envelope already delivered

    wait_for(lambda: len(_quarantined(pair)) == len(cases) + 1, 30, "all refusals")
    quarantined = _quarantined(pair)
    for msg_id, (data, codes) in cases.items():
        q = quarantined[msg_id]
        assert q["reason_code"] in codes, (msg_id, q["reason"])
        assert q["reason"], "a refusal needs a reason a person can read"
        kept = pair.receiver_spool.entry("quarantine", q["qid"]) / "envelope"
        assert kept.read_bytes() == data, "the quarantined copy must be the bytes that arrived"
    replay = quarantined[good_id]
    assert replay["reason_code"] == "replay"

    records = _audit(pair)
    refused = {
        r["message"]["id"]: r
        for r in records
        if r["outcome"] == "refused" and r["event"] in ("quarantined", "replay")
    }
    assert set(refused) == {*cases, good_id}
    assert refused[good_id]["event"] == "replay"
    for msg_id in cases:
        assert refused[msg_id]["reason"].split(":")[0] == quarantined[msg_id]["reason_code"]

    metrics = pair.metrics("receiver")
    by_reason: dict[str, int] = {}
    for q in quarantined.values():
        by_reason[q["reason_code"]] = by_reason.get(q["reason_code"], 0) + 1
    for reason, n in by_reason.items():
        got = metric_value(
            metrics, "zonegate_rejections_total", flow="import", stage="receive", reason=reason
        )
        assert got == n, (reason, got, n)
    # Exactly one file reached the inbox, and the receiver is still running.
    assert [p.name for p in pair.inbox_new.iterdir()] == [f"{good_id[-8:]}.txt"]
    assert pair.alive("receiver")


def test_resent_copy_of_a_delivered_message_is_a_duplicate_not_a_replay(
    pair: GatewayPair, wire: Wire
) -> None:
    msg_id, _h, data = seal_test_envelope(pair, b"once\n")
    wire.send(msg_id, bytes(data))
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 20, "delivery")
    wire.send(msg_id, bytes(data), resend=True)
    wait_for(
        lambda: any(r["event"] == "duplicate" for r in _audit(pair)), 20, "the duplicate record"
    )
    assert pair.receiver_spool.depth("quarantine") == 0
    assert len(list(pair.inbox_new.iterdir())) == 1
    metrics = pair.metrics("receiver")
    assert metric_value(metrics, "zonegate_messages_total", outcome="duplicate") == 1


def test_large_envelopes_damaged_on_the_link_are_kept_exactly_as_they_came(
    pair: GatewayPair, wire: Wire
) -> None:
    """Large envelopes are opened as they arrive (transfer/envelope_stream.py) and never stored
    unless refused; a refused one must still be kept byte for byte as it came (rebuilt from
    what decrypted), with its reason. A re-send of a delivered one is dropped, a replay kept."""
    size, chunk = 3 * 1024 * 1024 + 5, 512 * 1024
    good_id, _h, good = seal_test_envelope(pair, os.urandom(size), chunk_size=chunk)
    wire.send(good_id, bytes(good))
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 30, "the valid large envelope")
    assert not list(pair.receiver_spool.dir("tmp/link").iterdir()), "nothing of it was stored"

    cases: dict[str, tuple[bytes, set[str]]] = {}
    for region in ("header", "wrapped-key", "first-chunk", "middle-chunk", "signature"):
        msg_id, header, data = seal_test_envelope(pair, os.urandom(size), chunk_size=chunk)
        hlen = len(header.to_bytes())
        offset = {
            "header": 12 + hlen // 2,
            "wrapped-key": 14 + hlen + 40,
            "first-chunk": 94 + hlen + 10,
            "middle-chunk": 94 + hlen + 3 * (chunk + 16) + 1000,
            "signature": len(data) - 5,
        }[region]
        data[offset] ^= 0x01
        cases[msg_id] = (bytes(data), {"malformed", "decrypt-failed", "bad-signature"})
    msg_id, header, data = seal_test_envelope(pair, os.urandom(size), chunk_size=chunk)
    cases[msg_id] = (bytes(data[: len(data) - 100]), {"malformed"})  # announced as cut
    for msg_id, (data, _codes) in cases.items():
        wire.send(msg_id, data)
    wire.send(good_id, bytes(good), resend=True)  # dropped: a re-send of what is held
    wire.send(good_id, bytes(good))  # kept: a replay
    wait_for(lambda: len(_quarantined(pair)) == len(cases) + 1, 60, "every refusal")
    quarantined = _quarantined(pair)
    for msg_id, (data, codes) in cases.items():
        q = quarantined[msg_id]
        assert q["reason_code"] in codes, (msg_id, q["reason"])
        assert "differs from the digest" not in q["reason"], q["reason"]
        kept = pair.receiver_spool.entry("quarantine", q["qid"]) / "envelope"
        assert kept.read_bytes() == data, "the quarantined copy must be the bytes that arrived"
    assert quarantined[good_id]["reason_code"] == "replay"
    kept = pair.receiver_spool.entry("quarantine", quarantined[good_id]["qid"]) / "envelope"
    assert kept.read_bytes() == bytes(good)
    assert [p.name for p in pair.inbox_new.iterdir()] == [f"{good_id[-8:]}.txt"]
    assert not list((pair.inbox_new.parent / "tmp").iterdir()), "no plaintext left behind"
    records = _audit(pair)
    assert any(r["event"] == "duplicate" and r["message"]["id"] == good_id for r in records)
    assert pair.alive("receiver")


def test_a_large_envelope_damaged_in_transit_is_kept_as_it_came_and_said_so(
    pair: GatewayPair, wire: Wire
) -> None:
    """The END digest is the sender's; a receiver that opens an envelope as it comes checks the
    envelope itself, and when it refuses one whose bytes differ from that digest (damaged on
    the way, not sealed wrong), the reason says so, and what came is what is kept."""
    import hashlib

    from zonegate.transfer.linkframe import MAX_PAYLOAD, begin_frame, data_frame, end_frame

    msg_id, header, sent = seal_test_envelope(pair, os.urandom(2 * 1024 * 1024), chunk_size=4096)
    came = bytearray(sent)
    came[94 + len(header.to_bytes()) + 5000] ^= 0x10  # one bit, in transit
    link = wire.link
    assert link._send(begin_frame(msg_id, "import", "internet-gw", len(came), False), wire.stop)
    for off in range(0, len(came), MAX_PAYLOAD):
        assert link._send(data_frame(msg_id, off, bytes(came[off : off + MAX_PAYLOAD])), wire.stop)
    assert link._send(end_frame(msg_id, hashlib.sha256(bytes(sent)).digest()), wire.stop)
    wait_for(lambda: msg_id in _quarantined(pair), 30, "the refusal")
    q = _quarantined(pair)[msg_id]
    assert q["reason_code"] == "decrypt-failed"
    assert "damaged on the link" in q["reason"]
    kept = pair.receiver_spool.entry("quarantine", q["qid"]) / "envelope"
    assert kept.read_bytes() == bytes(came)
