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
