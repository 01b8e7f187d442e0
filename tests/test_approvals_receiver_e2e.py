"""Acceptance 2 at the receiving gateway: a real receiver process checks the approvals in each
envelope against its own officers and refuses (quarantine + audit record + metric) those that do
not verify, are too few, come from someone who is not an officer there, or were edited on the way.

The test plays the sending gateway (internal-gw's real keys, the real envelope and link code), so
it can put exactly the approvals it wants into a correctly signed envelope, or edit the bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import wait_for
from review_harness import PublishPair

from zonegate.transfer import envelope as env
from zonegate.transfer.approvals import Subject, format_time, sign_statement
from zonegate.transfer.ids import new_message_id
from zonegate.transfer.keys import (
    load_encryption_public,
    load_signing_private,
)
from zonegate.transfer.zmqlink import ZmqLinkSender
from zonegate.zones.config import load_gateway_config


class FakeSender:
    """internal-gw's sending side, by hand: seals publish envelopes with chosen approvals."""

    def __init__(self, pub: PublishPair, tmp: Path) -> None:
        keys = pub.root / "keys"
        self.pub = pub
        self.signing = load_signing_private(keys / "internal-gw.sign.key")
        self.recipient = load_encryption_public(keys / "internet-gw.kem.pub")
        endpoint = load_gateway_config(pub.configs["internet-gw"]).flow("publish").transport
        self.link = ZmqLinkSender(endpoint.endpoint)
        self.tmp = tmp
        self.seq = 0
        self.stop = threading.Event()
        wait_for(lambda: bool(self.link.link_events()) or self.link.connected, 20, "link up")

    def officer(self, name: str) -> Ed25519PrivateKey:
        return load_signing_private(self.pub.people / f"{name}.person.key")

    def header(self, data: bytes, approvals: tuple = (), created: datetime | None = None):
        self.seq += 1
        msg_id = new_message_id()
        return env.Header(
            version=1,
            message_id=msg_id,
            flow="publish",
            sequence=self.seq,
            sender="internal-gw",
            recipient="internet-gw",
            system="outbox",
            original_name=f"{msg_id[-8:]}.txt",
            content_type="application/octet-stream",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            created=format_time(created or datetime.now(UTC)),
            chunk_size=env.DEFAULT_CHUNK_SIZE,
            sender_key=env.key_id(self.signing.public_key()),
            recipient_key=env.key_id(self.recipient),
            classification="classified",
            approvals=approvals,
        )

    def approved(
        self, data: bytes, signers: list[Ed25519PrivateKey], created: datetime | None = None,
        at: datetime | None = None,
    ) -> env.Header:  # fmt: skip
        """A header whose approvals are made by `signers` over its own subject."""
        h = self.header(data, created=created)
        when = format_time(at or datetime.now(UTC))
        items = tuple(sign_statement(Subject.from_header(h), k, when) for k in signers)
        return _with_approvals(h, items)

    def seal(self, header: env.Header, data: bytes) -> bytearray:
        out = io.BytesIO()
        env.seal(io.BytesIO(data), out, header, self.recipient, self.signing)
        return bytearray(out.getvalue())

    def send(self, msg_id: str, blob: bytes) -> None:
        path = self.tmp / f"{msg_id}-{os.urandom(4).hex()}.env"
        path.write_bytes(blob)
        assert self.link.send_envelope(path, msg_id, "publish", "internal-gw", False, self.stop)

    def close(self) -> None:
        self.link.close()


def _with_approvals(h: env.Header, items: tuple) -> env.Header:
    from dataclasses import replace

    return replace(h, approvals=items)


def _quarantined(pub: PublishPair) -> dict[str, dict]:
    spool = pub.internet
    out = {}
    for qid in spool.ids("quarantine"):
        meta = json.loads((spool.entry("quarantine", qid) / "meta.json").read_text())
        out[meta["extra"]["claimed_id"]] = meta
    return out


@pytest.fixture
def pub(tmp_path: Path) -> Iterator[PublishPair]:
    p = PublishPair(tmp_path / "gw")
    try:
        yield p
    finally:
        p.stop()


def test_receiver_refuses_bad_approvals_and_edited_approval_lists(
    pub: PublishPair, tmp_path: Path
) -> None:
    pub.start("receiver")
    wire = FakeSender(pub, tmp_path)
    try:
        officers = [wire.officer("zhang-min"), wire.officer("wang-fang")]
        data = b"release text\n"
        good = wire.approved(data, officers)
        wire.send(good.message_id, bytes(wire.seal(good, data)))
        wait_for(lambda: pub.internet.depth("delivered") == 1, 30, "the approved envelope")

        cases: dict[str, str] = {}

        def send(header: env.Header, code: str, payload: bytes = data) -> None:
            wire.send(header.message_id, bytes(wire.seal(header, payload)))
            cases[header.message_id] = code

        send(wire.approved(data, officers[:1]), "approvals-too-few")
        send(wire.approved(data, [officers[0], officers[0]]), "approvals-too-few")
        send(wire.approved(data, [wire.officer("zhao-lei"), officers[0]]), "approval-not-officer")
        send(wire.approved(data, [wire.officer("sun-li"), officers[1]]), "approval-not-officer")
        send(wire.approved(data, [Ed25519PrivateKey.generate(), *officers]),
             "approval-unknown-key")  # fmt: skip
        send(wire.approved(data, [wire.officer("li-wei"), officers[0]]), "approval-by-submitter")
        # Approvals of one message transplanted onto another (other content, other id).
        other = wire.header(b"another text\n", approvals=good.approvals)
        send(other, "approval-bad-signature", b"another text\n")
        # Signed after the review had expired (expires: 1h in the demo config).
        old = datetime.now(UTC) - timedelta(hours=3)
        send(wire.approved(data, officers, created=old, at=old + timedelta(hours=2)),
             "approval-expired")  # fmt: skip
        # The approval list edited on the way: one hex digit of a signature in the header.
        h = wire.approved(data, officers)
        blob = wire.seal(h, data)
        sig = h.approvals[0]["sig"]
        at = bytes(blob).index(sig.encode())
        blob[at] = ord("0") if blob[at] != ord("0") else ord("1")
        wire.send(h.message_id, bytes(blob))
        cases[h.message_id] = "bad-signature"

        wait_for(lambda: len(_quarantined(pub)) == len(cases), 30, "every refusal")
    finally:
        wire.close()

    quarantined = _quarantined(pub)
    for msg_id, code in cases.items():
        assert quarantined[msg_id]["reason_code"] == code, (code, quarantined[msg_id]["reason"])
        assert quarantined[msg_id]["reason"]
    records = pub.audit("internet-gw")
    refused = {
        r["message"]["id"]: r["reason"].split(":")[0]
        for r in records
        if r["event"] == "quarantined" and r["outcome"] == "refused"
    }
    assert refused == cases
    assert pub.internet.depth("delivered") == 1
    approved = [r for r in records if r["event"] == "approved"]
    assert {r["who"]["person"] for r in approved} == {"zhang-min", "wang-fang"}
    assert {r["message"]["id"] for r in approved} == {good.message_id}
    for code in set(cases.values()):
        got = pub.metric(
            "receiver", "zonegate_rejections_total", flow="publish", stage="receive", reason=code
        )
        assert got == list(cases.values()).count(code), code
    assert pub.procs["receiver"].poll() is None


def test_receiver_trusts_only_its_own_officers(pub: PublishPair, tmp_path: Path) -> None:
    """wang-fang is an officer on the sending side only: her approval does not count here."""
    path = pub.configs["internet-gw"]
    cfg = yaml.safe_load(path.read_text())
    cfg["people"] = [p for p in cfg["people"] if p["name"] != "wang-fang"]
    flow = next(f for f in cfg["flows"] if f["name"] == "publish")
    flow["approval"]["officers"].remove("wang-fang")
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    pub.start("receiver")
    wire = FakeSender(pub, tmp_path)
    try:
        data = b"release\n"
        h = wire.approved(data, [wire.officer("zhang-min"), wire.officer("wang-fang")])
        wire.send(h.message_id, bytes(wire.seal(h, data)))
        wait_for(lambda: len(_quarantined(pub)) == 1, 30, "the refusal")
    finally:
        wire.close()
    q = _quarantined(pub)[h.message_id]
    assert q["reason_code"] == "approval-unknown-key"
    assert "not a person listed in this gateway" in q["reason"]
    assert pub.internet.depth("delivered") == 0
