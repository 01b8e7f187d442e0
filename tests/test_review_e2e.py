"""Issue 5 acceptance, with real gateway processes on the publish flow (internal -> internet).

1. a file waits in review; one approval does not move it; the second delivers it; both approvals
   are in both audit logs.
2. (review side) refusals of the submitter, an administrator, an auditor, an unknown key, the
   same officer twice, changed content, an approval after expiry: each a message and a record.
3. a file dropped straight into the sender's spool is never sent.
4. `zonegate verify` accepts the delivered file and refuses it after a one-byte change.
5. `review show` on a file full of ANSI escape sequences prints them harmlessly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import wait_for, zg
from review_harness import PublishPair

from zonegate.transfer.ids import new_message_id
from zonegate.transfer.keys import _write_private  # the same 0600 writer the CLI uses
from zonegate.transfer.spool import MessageMeta


@pytest.fixture
def pub(tmp_path: Path) -> Iterator[PublishPair]:
    p = PublishPair(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def _approvals(records: list[dict], msg_id: str, outcome: str = "ok") -> list[dict]:
    return [
        r
        for r in records
        if r["event"] == "approved" and r["message"]["id"] == msg_id and r["outcome"] == outcome
    ]


def test_acceptance_1_two_officers_release_and_both_logs_hold_both_approvals(
    pub: PublishPair,
) -> None:
    pub.start("ingest", "sender", "receiver")
    msg_id = pub.submit("release.txt", "公告: legal aid points open\n".encode())
    assert pub.internal.states_of(msg_id) == ["review"]

    first = pub.approve(msg_id, "zhang-min")
    assert first.returncode == 0, first.stderr
    assert "1 of 2" in first.stdout
    time.sleep(1.5)  # give the sender every chance to (wrongly) take it
    assert pub.internal.states_of(msg_id) == ["review"], "one approval must not release it"
    assert pub.internet.depth("delivered") == 0

    second = pub.approve(msg_id, "wang-fang")
    assert second.returncode == 0, second.stderr
    assert "released" in second.stdout
    wait_for(lambda: pub.internet.depth("delivered") == 1, 30, "delivery on the internet side")
    assert (pub.inbox_new / "release.txt").read_bytes() == "公告: legal aid points open\n".encode()

    for gateway in ("internal-gw", "internet-gw"):
        people = {r["who"]["person"] for r in _approvals(pub.audit(gateway), msg_id)}
        assert people == {"zhang-min", "wang-fang"}, gateway
    # The review record names who collected, who reviewed, who gave final approval, and when.
    sent = pub.internal.read_meta("sent", msg_id)
    review = sent.extra["review"]
    assert review["collected_by"] == "internal-gw/ingest" and review["submitter"] == "system:outbox"
    assert [r["person"] for r in review["reviews"]] == ["zhang-min", "wang-fang"]
    assert review["final_approval"]["person"] == "wang-fang" and review["final_approval"]["time"]
    for log in ("internal-gw", "internet-gw"):
        assert zg("audit", "verify", str(pub.root / log / "audit/audit.jsonl")).returncode == 0


def test_acceptance_2_review_refusals_each_say_why_and_are_audited(pub: PublishPair) -> None:
    pub.start("ingest")
    msg_id = pub.submit("notice.txt", b"notice\n")
    stranger = pub.root / "stranger.person.key"
    _write_private(stranger, Ed25519PrivateKey.generate())

    cases = [
        ("li-wei", "approval-by-submitter", "submitted this message"),
        ("zhao-lei", "approval-not-officer", "administrator"),
        ("sun-li", "approval-not-officer", "auditor"),
        (None, "approval-unknown-key", "belongs to no person"),
    ]
    for person, code, words in cases:
        key = str(stranger) if person is None else pub.key(person)
        r = pub.review("approve", msg_id, "--key", key)
        assert r.returncode == 1, (person, r.stdout, r.stderr)
        assert code in r.stderr and words in r.stderr, (person, r.stderr)
    ok = pub.approve(msg_id, "zhang-min")
    assert ok.returncode == 0
    again = pub.approve(msg_id, "zhang-min")
    assert again.returncode == 1 and "approval-duplicate" in again.stderr
    assert "already approved" in again.stderr
    show = json.loads(pub.review("show", msg_id, "--json").stdout)
    assert show["approval"]["approved_by"] == ["zhang-min"], "the same officer counts once"
    assert pub.internal.states_of(msg_id) == ["review"]

    # One byte changed after review: the second approval is refused, the message quarantined.
    data = pub.internal.entry("review", msg_id) / "data"
    data.write_bytes(b"Notice\n")
    changed = pub.approve(msg_id, "wang-fang")
    assert changed.returncode == 1 and "approval-content-changed" in changed.stderr
    assert pub.internal.states_of(msg_id) == ["quarantine"]

    refused = {
        r["reason"].split(":")[0] for r in _approvals(pub.audit("internal-gw"), msg_id, "refused")
    }
    assert refused == {
        "approval-by-submitter",
        "approval-not-officer",
        "approval-unknown-key",
        "approval-duplicate",
        "approval-content-changed",
    }
    roles = {
        r["who"]["role"]
        for r in _approvals(pub.audit("internal-gw"), msg_id, "refused")
        if r["who"]
    }
    assert {"administrator", "auditor", "security-officer"} <= roles


def test_acceptance_2_approval_after_expiry_is_refused(tmp_path: Path) -> None:
    pub = PublishPair(tmp_path, expires="2s")
    try:
        pub.start("ingest")
        msg_id = pub.submit("late.txt", b"late\n")
        wait_for(lambda: pub.internal.states_of(msg_id) == ["quarantine"], 20, "expiry")
        r = pub.approve(msg_id, "zhang-min")
        assert r.returncode == 1 and "approval-expired" in r.stderr and "expired" in r.stderr
        records = pub.audit("internal-gw")
        assert any(x["event"] == "expired" and x["message"]["id"] == msg_id for x in records)
        assert [x["reason"].split(":")[0] for x in _approvals(records, msg_id, "refused")] == [
            "approval-expired"
        ]
        assert pub.internal.read_meta("quarantine", msg_id).reason_code == "review-expired"
    finally:
        pub.stop()


def test_rejection_needs_a_reason_is_signed_and_recorded(pub: PublishPair) -> None:
    pub.start("ingest")
    msg_id = pub.submit("draft.txt", b"draft with a classified mark\n")
    no_reason = pub.review("reject", msg_id, "--key", pub.key("zhang-min"), "--reason", "  ")
    assert no_reason.returncode == 2 and "needs a reason" in no_reason.stderr
    by_auditor = pub.review("reject", msg_id, "--key", pub.key("sun-li"), "--reason", "no")
    assert by_auditor.returncode == 1 and "approval-not-officer" in by_auditor.stderr
    r = pub.review("reject", msg_id, "--key", pub.key("zhang-min"), "--reason", "涉密 marking")
    assert r.returncode == 0, r.stderr
    assert pub.internal.states_of(msg_id) == ["quarantine"]
    meta = pub.internal.read_meta("quarantine", msg_id)
    assert meta.reason_code == "rejected-in-review" and "涉密 marking" in meta.reason
    records = pub.audit("internal-gw")
    [rec] = [x for x in records if x["event"] == "rejected" and x["outcome"] == "ok"]
    assert rec["who"] == {"person": "zhang-min", "role": "security-officer"}
    assert rec["reason"] == "涉密 marking" and len(rec["extra"]["signature"]) == 128


def _plant(pub: PublishPair, state: str, approvals: list | None = None) -> str:
    """A message put straight into the sender's spool, bypassing ingest and review."""
    msg_id = new_message_id()
    entry = pub.internal.entry(state, msg_id)
    entry.mkdir(parents=True)
    data = b"unreviewed release\n"
    (entry / "data").write_bytes(data)
    meta = MessageMeta(
        id=msg_id,
        flow="publish",
        system="outbox",
        original_name=f"planted-{state}.txt",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        created="2026-11-25T09:41:56.123456Z",
        extra={"approvals": approvals} if approvals is not None else {},
    )
    (entry / "meta.json").write_bytes(meta.to_json())
    return msg_id


def test_acceptance_3_a_file_dropped_into_the_sender_spool_is_never_sent(
    pub: PublishPair,
) -> None:
    # Approvals copied from a properly approved message do not fit another message.
    pub.start("ingest", "sender", "receiver")
    good = pub.submit("approved.txt", b"approved\n")
    assert pub.approve(good, "zhang-min").returncode == 0
    assert pub.approve(good, "wang-fang").returncode == 0
    wait_for(lambda: pub.internet.depth("delivered") == 1, 30, "the approved release")
    stolen = pub.internal.read_meta("sent", good).extra["approvals"]
    assert len(stolen) == 2

    pub.stop()
    planted = [_plant(pub, "ready"), _plant(pub, "ready", stolen), _plant(pub, "active")]
    pub.start("sender", "receiver")
    wait_for(
        lambda: all(pub.internal.states_of(i) == ["quarantine"] for i in planted),
        30,
        "planted messages to be quarantined",
    )
    time.sleep(1.0)
    assert pub.internet.depth("delivered") == 1, "nothing planted may arrive"
    assert sorted(p.name for p in pub.inbox_new.iterdir() if not p.name.startswith(".")) == [
        "approved.txt",
        "approved.txt.zgmanifest.json",
        "approved.txt.zgsig",
    ]
    codes = {pub.internal.read_meta("quarantine", i).reason_code for i in planted}
    assert codes == {"approvals-too-few", "approval-bad-signature"}
    records = [
        r
        for r in pub.audit("internal-gw")
        if r["event"] == "quarantined" and r["message"]["id"] in planted
    ]
    assert len(records) == 3 and all(r["agent"] == "sender" for r in records)
    assert not any(
        r["event"] in ("sealed", "sent") and r["message"]["id"] in planted
        for r in pub.audit("internal-gw")
    )
    assert pub.metric(
        "sender", "zonegate_rejections_total", flow="publish", stage="send",
        reason="approvals-too-few",
    ) == 2  # fmt: skip


def test_acceptance_4_verify_accepts_the_delivered_file_and_refuses_a_changed_byte(
    pub: PublishPair, tmp_path: Path
) -> None:
    pub.start("ingest", "sender", "receiver")
    msg_id = pub.submit("page.html", b"<html><body>Notice 2026-11</body></html>\n")
    pub.approve(msg_id, "zhang-min")
    pub.approve(msg_id, "wang-fang")
    wait_for(lambda: pub.internet.depth("delivered") == 1, 30, "delivery")
    pub.stop()
    page = pub.inbox_new / "page.html"
    trusted = str(pub.root / "keys" / "internet-gw.sign.pub")
    ok = zg("verify", str(page), "--key", trusted)
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "zhang-min" in ok.stdout and "wang-fang" in ok.stdout
    manifest = json.loads((pub.inbox_new / "page.html.zgmanifest.json").read_text())
    assert manifest["id"] == msg_id and len(manifest["sha256"]) == 64 and manifest["time"]
    assert [a["name"] for a in manifest["approvers"]] == ["zhang-min", "wang-fang"]

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("page.html", "page.html.zgmanifest.json", "page.html.zgsig"):
        shutil.copy(pub.inbox_new / name, copy / name)
    data = bytearray((copy / "page.html").read_bytes())
    data[10] ^= 0x01
    (copy / "page.html").write_bytes(bytes(data))
    bad = zg("verify", str(copy / "page.html"), "--key", trusted)
    assert bad.returncode == 1 and "INVALID" in bad.stderr and "SHA-256" in bad.stderr

    other = zg("verify", str(page), "--key", str(pub.root / "keys" / "internal-gw.sign.pub"))
    assert other.returncode == 1, "another gateway's key must not verify it"
    (copy / "page.html.zgsig").unlink()
    unsigned = zg("verify", str(copy / "page.html"), "--key", trusted)
    assert unsigned.returncode == 1 and "no signature" in unsigned.stderr
    assert zg("verify", str(page)).returncode == 2
    assert zg("verify", str(tmp_path / "missing"), "--key", trusted).returncode == 2


_C0_C1 = {*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)} - {0x0A}


def test_acceptance_5_review_show_neutralises_terminal_escapes(pub: PublishPair) -> None:
    pub.start("ingest")
    hostile = (
        b"Title\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]8;;http://x\x1b\\link\x1b[31mred\x1b[0m\r\n"
        b"\x9b31m C1 CSI raw \x9d0;osc\x9c \xc2\x9b encoded C1 \xe2\x80\xae bidi \x08\x7f end\n"
    ) * 20
    msg_id = pub.submit("hostile.txt", hostile)
    for extra in ((), ("--json",)):
        cmd = [sys.executable, "-m", "zonegate.bin.cli", "review", "show", msg_id]
        cmd += ["--config", pub.config("internal-gw"), *extra]
        r = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        out: bytes = r.stdout
        assert b"\x1b" not in out and b"\x9b" not in out and b"\x9d" not in out
        text = out.decode("utf-8")
        bad = [ch for ch in text if ord(ch) in _C0_C1 or (unicodedata.category(ch) == "Cc"
               and ch != "\n") or ch == "\u202e"]  # fmt: skip
        assert bad == [], bad[:5]
    plain = zg("review", "show", msg_id, "--config", pub.config("internal-gw")).stdout
    assert "\\x1b[2J" in plain and "\\u009b" in plain and "\\u202e" in plain
    assert "hostile.txt" in plain and "policy    passed" in plain
    assert "keywords  (none matched)" in plain and "submitter system:outbox" in plain
