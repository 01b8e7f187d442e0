"""Containers (docs/batch.md) end to end: many small messages in one sealed envelope.

The first test runs the real three agents with `batch: true` and a flood of mixed sizes. The
others play the sending gateway by hand (its real keys, the real seal and batch encoder, the
real ZeroMQ adapter) against the real receiver process, to put on the wire exactly the
container a test needs: each message of a container must be checked on its own (replay, size,
re-send), refused alone, and kept in quarantine with the container as it came; a container
that is wrong as a whole is refused whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from harness import GatewayPair, metric_value, seal_test_envelope, wait_for
from test_tamper_e2e import Wire

from zonegate.audit.tools import reconcile
from zonegate.audit.verify import verify
from zonegate.gateways.agent import AgentContext
from zonegate.gateways.receiver import ReceiverAgent, _Progress
from zonegate.gateways.submit import submit_files
from zonegate.transfer import batch
from zonegate.transfer import envelope as env
from zonegate.transfer.durable import Barrier
from zonegate.transfer.ids import new_message_id
from zonegate.transfer.keys import load_encryption_public, load_signing_private
from zonegate.transfer.link import Arrival
from zonegate.transfer.linkframe import Begin
from zonegate.zones.config import load_gateway_config


def _records(pair: GatewayPair, gateway: str) -> list[dict]:
    return [json.loads(x) for x in pair.audit_log(gateway).read_text().splitlines()]


def test_a_flood_of_small_files_crosses_in_containers_each_with_its_own_trail(
    tmp_path: Path,
) -> None:
    pair = GatewayPair(tmp_path / "gw", batch=True)
    src = tmp_path / "src"
    src.mkdir()
    sizes = [0, 1, 700, 4096, 65_536, 65_537, 300_000, 20_000]
    expected = {}
    for i in range(400):
        data = os.urandom(sizes[i % len(sizes)])
        (src / f"r{i:04d}.bin").write_bytes(data)
        expected[f"r{i:04d}.bin"] = hashlib.sha256(data).hexdigest()
    submit_files(pair.outbox, "import", [src])  # all waiting before the agents start
    try:
        pair.start()
        wait_for(lambda: pair.receiver_spool.depth("delivered") >= 400, 120, "every delivery")
        got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pair.inbox_new.iterdir()}
        assert got == expected
        sent = metric_value(pair.metrics("sender"), "zonegate_containers_total", flow="import")
        opened = metric_value(pair.metrics("receiver"), "zonegate_containers_total", flow="import")
    finally:
        pair.stop()
    small = {n for n in expected if (src / n).stat().st_size <= 64 * 1024}
    sealed = [r for r in _records(pair, "internet-gw") if r["event"] == "sealed"]
    delivered = [r for r in _records(pair, "internal-gw") if r["event"] == "delivered"]
    assert len(sealed) == len(delivered) == 400
    by_sealed = {r["message"]["id"]: r.get("extra", {}).get("batch") for r in sealed}
    by_delivered = {r["message"]["id"]: r.get("extra", {}).get("batch") for r in delivered}
    assert by_sealed == by_delivered  # each message names the same container on both sides
    in_batch = {r["message"]["name"] for r in delivered if r.get("extra", {}).get("batch")}
    assert in_batch <= small and len(in_batch) >= len(small) * 3 // 4
    containers = {c for c in by_delivered.values() if c}
    assert sent == opened == len(containers) >= 2
    # One number per message, none skipped, no gap reported.
    assert sorted(r["message"]["seq"] for r in delivered) == list(range(1, 401))
    assert not [r for r in _records(pair, "internal-gw") if r["event"] == "gap"]
    for gateway in ("internet-gw", "internal-gw"):
        assert verify(pair.audit_log(gateway)).ok
    assert reconcile(pair.audit_log("internet-gw"), pair.audit_log("internal-gw")).ok
    # Nothing left over: not a container in received/, not a plaintext in the sender's spool.
    assert pair.receiver_spool.depth("received") == 0
    assert pair.receiver_spool.depth("delivered") == 400
    assert pair.sender_spool.depth("ready") == 0
    for msg_id in pair.sender_spool.ids("sent"):
        assert not (pair.sender_spool.entry("sent", msg_id) / "data").exists()


# -- the receiver against containers made by hand ----------------------------------------


def seal_container(
    pair: GatewayPair, bodies: list[bytes], first_seq: int = 1, plaintext: bytes | None = None
) -> tuple[str, list[str], bytes]:
    """A container sealed as internet-gw seals one: (container id, message ids, envelope).
    `plaintext` replaces the encoded batch (to seal a malformed one with the real keys)."""
    keys = pair.root / "keys"
    signing = load_signing_private(keys / "internet-gw.sign.key")
    recipient = load_encryption_public(keys / "internal-gw.kem.pub")
    headers = []
    for i, body in enumerate(bodies):
        _id, header, _data = seal_test_envelope(pair, body)
        headers.append(dataclasses.replace(header, sequence=first_seq + i))
    encoded = batch.encode(list(zip(headers, bodies, strict=True)))
    cid = new_message_id()
    header = batch.container_header(
        headers, message_id=cid, created=headers[0].created, plaintext=encoded
    )
    if plaintext is not None:
        encoded = plaintext
        header = dataclasses.replace(
            header, size=len(encoded), sha256=hashlib.sha256(encoded).hexdigest()
        )
    out = io.BytesIO()
    env.seal(io.BytesIO(encoded), out, header, recipient, signing)
    return cid, [h.message_id for h in headers], out.getvalue()


def _quarantined(pair: GatewayPair) -> list[dict]:
    spool = pair.receiver_spool
    return [spool.read_meta("quarantine", q) for q in spool.ids("quarantine")]


@pytest.fixture
def batch_pair(tmp_path: Path):
    pair = GatewayPair(tmp_path / "gw", limit=100_000, batch=True)
    pair.start("receiver")
    cfg = load_gateway_config(pair.configs["internal-gw"])
    wire = Wire(cfg.flow("import").transport.endpoint, tmp_path)
    yield pair, wire
    wire.close()
    pair.stop()


def test_a_resent_container_is_duplicates_and_a_replayed_one_is_quarantined_per_message(
    batch_pair: tuple[GatewayPair, Wire],
) -> None:
    pair, wire = batch_pair
    cid, ids, data = seal_container(pair, [b"one\n", b"two\n", b"three\n"])
    wire.send(cid, data)
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 3, 30, "three deliveries")
    assert sorted(p.read_bytes() for p in pair.inbox_new.iterdir()) == [
        b"one\n",
        b"three\n",
        b"two\n",
    ]
    wire.send(cid, data, resend=True)  # the sender could not know it arrived

    def duplicates() -> list:
        return [r for r in _records(pair, "internal-gw") if r["event"] == "duplicate"]

    wait_for(lambda: len(duplicates()) == 3, 30, "three duplicates")
    # The same bytes again, not marked as a re-send: a replay. (Sent while the re-send was
    # still in flight, the link stage would refuse the whole container as a replay of its id.)
    wire.send(cid, data)

    def refused() -> list:
        return _quarantined(pair)

    wait_for(lambda: len(refused()) == 3, 30, "three replays quarantined")
    metrics = pair.metrics("receiver")
    records = _records(pair, "internal-gw")
    assert sorted(r["message"]["id"] for r in duplicates()) == sorted(ids)
    assert {r["extra"]["batch"] for r in duplicates()} == {cid}
    for meta in refused():
        assert meta.reason_code == "replay"
        assert meta.extra["batch"] == cid and meta.extra["claimed_id"] in ids
    for qid in pair.receiver_spool.ids("quarantine"):  # the original, exactly as it came
        assert (pair.receiver_spool.entry("quarantine", qid) / "envelope").read_bytes() == data
    replays = [r for r in records if r["event"] == "replay"]
    assert sorted(r["message"]["id"] for r in replays) == sorted(ids)
    assert metric_value(metrics, "zonegate_rejections_total", flow="import", reason="replay") == 3
    assert len(list(pair.inbox_new.iterdir())) == 3  # nothing delivered twice
    assert verify(pair.audit_log("internal-gw")).ok


def test_one_refused_message_of_a_container_leaves_the_others_delivered(
    batch_pair: tuple[GatewayPair, Wire],
) -> None:
    pair, wire = batch_pair
    big = os.urandom(100_001)  # over this side's max_size (100,000)
    cid, ids, data = seal_container(pair, [b"first\n", big, b"third\n"])
    wire.send(cid, data)
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 2, 30, "two deliveries")
    wait_for(lambda: len(_quarantined(pair)) == 1, 30, "one refusal")
    (meta,) = _quarantined(pair)
    assert (meta.reason_code, meta.extra["claimed_id"], meta.extra["batch_index"]) == (
        "policy-size",
        ids[1],
        1,
    )
    assert "100001 bytes" in (meta.reason or "")
    assert sorted(p.read_bytes() for p in pair.inbox_new.iterdir()) == [b"first\n", b"third\n"]
    refusal = [r for r in _records(pair, "internal-gw") if r["event"] == "quarantined"]
    assert [(r["message"]["id"], r["extra"]["batch"]) for r in refusal] == [(ids[1], cid)]
    metrics = pair.metrics("receiver")
    assert (
        metric_value(metrics, "zonegate_rejections_total", flow="import", reason="policy-size") == 1
    )
    wait_for(lambda: pair.receiver_spool.depth("received") == 0, 10, "nothing left in received/")


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("magic", "malformed"),  # not the batch format at all
        ("trailing", "malformed"),  # bytes after the last message
        ("body", "plaintext-mismatch"),  # a message whose body is not its header's digest
    ],
)
def test_a_container_wrong_as_a_whole_is_refused_whole(
    batch_pair: tuple[GatewayPair, Wire], fault: str, code: str
) -> None:
    pair, wire = batch_pair
    _cid, _ids, good = seal_container(pair, [b"alpha\n", b"beta\n"])
    keys = pair.root / "keys"
    plaintext = _plaintext_of(good, keys)
    if fault == "magic":
        bad = b"NOTBATCH" + plaintext[8:]
    elif fault == "trailing":
        bad = plaintext + b"x"
    else:
        bad = plaintext[:-2] + b"A\n"  # the last body, changed under its header
    cid, _ids, data = seal_container(pair, [b"alpha\n", b"beta\n"], plaintext=bad)
    wire.send(cid, data)
    wait_for(lambda: len(_quarantined(pair)) == 1, 30, "the container refused")
    (meta,) = _quarantined(pair)
    assert (meta.reason_code, meta.extra["claimed_id"]) == (code, cid)
    assert "batch" in (meta.reason or "")
    assert list(pair.inbox_new.iterdir()) == []
    assert pair.receiver_spool.depth("delivered") == 0


def _plaintext_of(envelope: bytes, keys: Path) -> bytes:
    from zonegate.transfer.keys import load_encryption_private, load_signing_public

    private = load_encryption_private(keys / "internal-gw.kem.key")
    public = load_signing_public(keys / "internet-gw.sign.pub")
    out = io.BytesIO()
    env.open_envelope(io.BytesIO(envelope), out, private, lambda s, k: public)
    return out.getvalue()


def test_a_container_too_large_for_one_frame_is_refused_as_it_streams(
    batch_pair: tuple[GatewayPair, Wire], tmp_path: Path
) -> None:
    pair, wire = batch_pair
    # Two 512 KiB messages: the envelope is over one link frame, so the link streams it.
    halves = [os.urandom(512 * 1024), os.urandom(512 * 1024)]
    cid, _ids, data = seal_container(pair, halves)
    wire.send(cid, data)
    wait_for(lambda: len(_quarantined(pair)) == 1, 30, "the container refused")
    (meta,) = _quarantined(pair)
    assert meta.reason_code == "malformed" and "whole, not streamed" in (meta.reason or "")
    assert list(pair.inbox_new.iterdir()) == []


def test_a_container_on_a_flow_without_batch_is_refused(tmp_path: Path) -> None:
    pair = GatewayPair(tmp_path / "gw")  # batch off on both sides
    pair.start("receiver")
    cfg = load_gateway_config(pair.configs["internal-gw"])
    wire = Wire(cfg.flow("import").transport.endpoint, tmp_path)
    try:
        cid, _ids, data = seal_container(pair, [b"a\n", b"b\n"])
        wire.send(cid, data)
        wait_for(lambda: len(_quarantined(pair)) == 1, 30, "the container refused")
        (meta,) = _quarantined(pair)
        assert meta.reason_code == "unexpected-batch"
        assert "batch: true" in (meta.reason or "")
        assert list(pair.inbox_new.iterdir()) == []
    finally:
        wire.close()
        pair.stop()


def _receiver_in_process(pair: GatewayPair) -> tuple[AgentContext, ReceiverAgent]:
    """internal-gw's receiver as an object, its stages driven by the test one step at a time."""
    ctx = AgentContext.open(load_gateway_config(pair.configs["internal-gw"]), "receiver")
    return ctx, ReceiverAgent(ctx)


def seal_single_as(pair: GatewayPair, msg_id: str, body: bytes) -> bytes:
    """A single envelope sealed as internet-gw seals one, claiming `msg_id`."""
    keys = pair.root / "keys"
    signing = load_signing_private(keys / "internet-gw.sign.key")
    recipient = load_encryption_public(keys / "internal-gw.kem.pub")
    _id, header, _data = seal_test_envelope(pair, body)
    out = io.BytesIO()
    claimed = dataclasses.replace(header, message_id=msg_id)
    env.seal(io.BytesIO(body), out, claimed, recipient, signing)
    return out.getvalue()


def test_a_message_whose_id_a_container_took_while_both_were_in_flight_is_a_replay(
    tmp_path: Path,
) -> None:
    """The link stage knows a container by its own id only. A single envelope that comes off
    the link while the container is being delivered, claiming the id of a message inside it,
    must be refused as a replay (and a re-sent one dropped as a duplicate), not delivered as a
    second file under that id: the container's messages are in flight from its opening.
    Driven in-process, stage by stage, because the order is a race between the two stages in
    a running agent."""
    pair = GatewayPair(tmp_path / "gw", batch=True)  # keys and configs; no process started
    ctx, agent = _receiver_in_process(pair)
    flow = agent.flows["import"]
    barrier = Barrier()
    cid, ids, container = seal_container(pair, [b"first\n", b"second\n"])

    def arrival(msg_id: str, data: bytes, resend: bool = False) -> Arrival:
        work = ctx.spool.dir("tmp/link") / f"{msg_id}.{os.urandom(4).hex()}"
        digest = hashlib.sha256(data).hexdigest()
        return Arrival(msg_id, work, resend, len(data), digest, payload=data)

    try:
        agent._accept_from_link(flow, [arrival(cid, container)], barrier)
        ((_flow, handed),) = agent._from_memory(1.0)
        opened = agent._open_memory(flow, handed, barrier)  # its ids now in flight
        later = arrival(ids[0], seal_single_as(pair, ids[0], b"another body\n"))
        resent = arrival(ids[0], seal_single_as(pair, ids[0], b"another body\n"), resend=True)
        agent._accept_from_link(flow, [later, resent], barrier)  # off the link meanwhile
        agent._deliver_opened(opened, barrier, _Progress())  # the container's delivery ends
        assert ctx.spool.depth("delivered") == 2
        assert agent._queue.empty()  # neither single handed on for delivery
        inbox = Path(ctx.config.inbox) / "import" / "new"
        assert sorted(p.read_bytes() for p in inbox.iterdir()) == [b"first\n", b"second\n"]
        (qid,) = ctx.spool.ids("quarantine")
        meta = ctx.spool.read_meta("quarantine", qid)
        assert (meta.reason_code, meta.extra["claimed_id"]) == ("replay", ids[0])
        kept = (ctx.spool.entry("quarantine", qid) / "envelope").read_bytes()
        assert kept == later.payload
        records = [json.loads(x) for x in ctx.config.audit_log.read_text().splitlines()]
        events = [(r["event"], r["message"]["id"]) for r in records if r.get("message")]
        assert ("replay", ids[0]) in events and ("duplicate", ids[0]) in events
        assert [e for e in events if e == ("delivered", ids[0])] == [("delivered", ids[0])]
    finally:
        barrier.close()


def test_a_streamed_message_claiming_an_id_of_a_container_being_delivered_is_a_replay(
    tmp_path: Path,
) -> None:
    """The same race on the other ways in: a container stored in received/ is opened (its
    messages' ids go in flight, as the link stage's do), and a large single claiming one of
    them begins to stream in before the container's delivery ends. The link stage must take it
    as a replay, keep it as it came, and write none of its plaintext where the container's
    message of that id is waiting to be linked into the inbox."""
    pair = GatewayPair(tmp_path / "gw", batch=True)
    ctx, agent = _receiver_in_process(pair)
    flow = agent.flows["import"]
    barrier = Barrier()
    cid, ids, container = seal_container(pair, [b"first\n", b"second\n"])
    streamed = seal_single_as(pair, ids[1], os.urandom(3 * 1024 * 1024))
    try:
        work = ctx.spool.dir("tmp/link") / "c"
        work.mkdir()
        (work / "envelope").write_bytes(container)
        digest = hashlib.sha256(container).hexdigest()
        agent._accept_from_link(flow, [Arrival(cid, work, False, len(container), digest)], barrier)
        opened = []
        got, is_container = agent._open_one(cid, barrier)  # both ids free: now in flight
        assert is_container and len(got) == 2
        opened += got
        sink = agent._stream_to(flow, Begin(ids[1], "import", "internet-gw", len(streamed), False))
        for i in range(0, len(streamed), 1 << 20):
            sink.write(streamed[i : i + (1 << 20)])
        link_digest = hashlib.sha256(streamed).hexdigest()
        agent._streamed_complete(
            flow, Arrival(ids[1], sink.work, False, len(streamed), link_digest, sink=sink)
        )
        agent._deliver_opened(opened, barrier)  # the container's delivery ends
        inbox = Path(ctx.config.inbox) / "import" / "new"
        assert sorted(p.read_bytes() for p in inbox.iterdir()) == [b"first\n", b"second\n"]
        (qid,) = ctx.spool.ids("quarantine")
        meta = ctx.spool.read_meta("quarantine", qid)
        assert (meta.reason_code, meta.extra["claimed_id"]) == ("replay", ids[1])
        assert (ctx.spool.entry("quarantine", qid) / "envelope").read_bytes() == streamed
        assert not list((Path(ctx.config.inbox) / "import" / "tmp").iterdir())  # no plaintext
        assert agent._queue.empty()  # nothing of it handed on for delivery
    finally:
        barrier.close()
