"""Group commit keeps every invariant at every new interruption point.

Each agent works in batches: one audit write and one durability barrier per step of many
messages. A kill -9 between a batch's audit fsync and its renames, or half-way through the
renames, must still leave every message in exactly one state, and the restarted agent must
finish the batch: every file delivered exactly once, byte-identical, both audit logs verifying
and reconciling. The agent is killed by itself at the named point (`ZONEGATE_CRASH_AT`, see
gateways/agent.py: crash_point), so the state on disk is the one the real code leaves there.

The unit tests at the end check the batch paths that can fail on their own: a batch with one
bad message, and the audit batch API's all-or-nothing rule.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from harness import GatewayPair, make_file, metric_value, seal_test_envelope, wait_for

from zonegate.audit.tools import reconcile
from zonegate.audit.verify import verify
from zonegate.gateways.agent import AgentContext
from zonegate.gateways.demo import write_gateway_pair
from zonegate.gateways.ingest import IngestAgent
from zonegate.gateways.sender import SenderAgent
from zonegate.gateways.submit import submit_files
from zonegate.transfer import envelope as env
from zonegate.zones.config import load_gateway_config

POINTS = {
    "ingest": ["ingest-recorded", "ingest-claimed", "ingest-published"],
    "sender": ["sender-sealed", "sender-moved", "sender-sent"],
    "receiver": ["receiver-recorded", "receiver-opened", "receiver-linked", "receiver-marked"],
}
#: small files cross the zmq link in one frame and are delivered from memory; large ones are
#: sealed while sent and opened as they come; over the ferry directory every envelope is
#: stored in received/ first: the points are taken on each path
SIZES = {
    "small": (40, [0, 1, 1024, 70_000]),
    "large": (4, [1_200_000, 2_500_000]),
    "ferry": (20, [0, 1024, 70_000]),
    # `batch: true`: the small ones go in containers (up to 64 KiB each), the 70,000-byte ones
    # alone, in between; over zmq in memory, and over the ferry stored in received/ first
    "batched": (60, [0, 1, 1024, 70_000, 30_000]),
    "batched-ferry": (30, [0, 1024, 70_000, 5_000]),
}
CASES = [(a, p, "small") for a, points in POINTS.items() for p in points]
CASES += [("sender", p, "large") for p in ("sender-streaming", "sender-streamed")]
CASES += [("receiver", p, "large") for p in ["receiver-streamed", *POINTS["receiver"][1:]]]
CASES += [("receiver", p, "ferry") for p in POINTS["receiver"]]
CASES += [("sender", p, "batched") for p in ("sender-sealed", "sender-batched", "sender-sent")]
CASES += [("receiver", p, "batched") for p in POINTS["receiver"][1:]]
CASES += [("receiver", p, "batched-ferry") for p in POINTS["receiver"]]


def _sources(directory: Path, kind: str) -> dict[str, str]:
    n, sizes = SIZES[kind]
    directory.mkdir()
    out = {}
    for i in range(n):
        path = directory / f"batch-{i:03d}.bin"
        make_file(path, sizes[i % len(sizes)], i)
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _size(tmp_path: Path, name: str) -> int:
    return (tmp_path / "src" / name).stat().st_size


def _records(pair: GatewayPair, gateway: str) -> list[dict]:
    return [json.loads(x) for x in pair.audit_log(gateway).read_text().splitlines()]


@pytest.mark.parametrize(("agent", "point", "kind"), CASES)
def test_a_batch_killed_at_any_point_is_finished_once(
    tmp_path: Path, agent: str, point: str, kind: str
) -> None:
    transports = None
    if kind.endswith("ferry"):
        t = {"kind": "ferry", "endpoint": str(tmp_path / "ferry")}
        transports = {"internet-gw": t, "internal-gw": t}
    pair = GatewayPair(tmp_path / "gw", transports=transports, batch=kind.startswith("batched"))
    try:
        _killed_and_finished(pair, tmp_path, agent, point, kind)
    finally:
        pair.stop()


def _killed_and_finished(
    pair: GatewayPair, tmp_path: Path, agent: str, point: str, kind: str
) -> None:
    expected = _sources(tmp_path / "src", kind)
    n_files = len(expected)
    others = [a for a in ("ingest", "sender", "receiver") if a != agent]
    if kind == "large" and agent == "sender":
        # Sealed while sent needs the link up (without it a large one is sealed to disk).
        pair.start("receiver")
        pair.start("sender", env={"ZONEGATE_CRASH_AT": point})
        wait_for(
            lambda: metric_value(pair.metrics("sender"), "zonegate_link_up", flow="import") == 1,
            30,
            "the sender's link",
        )
        submit_files(pair.outbox, "import", [tmp_path / "src"])
        pair.start("ingest")
    else:
        # The files are all waiting before the agents start, so they travel as batches.
        submit_files(pair.outbox, "import", [tmp_path / "src"])
        pair.start(*others)
        pair.start(agent, env={"ZONEGATE_CRASH_AT": point})
    wait_for(lambda: not pair.alive(agent), 60, f"{agent} to kill itself at {point}")
    assert pair.procs[agent].returncode == -9, pair.logs()
    pair.start(agent)
    wait_for(lambda: pair.receiver_spool.depth("delivered") >= n_files, 120, "every delivery")
    wait_for(lambda: pair.sender_spool.depth("active") == 0, 30, "active/ to drain")
    # A container leaves received/ after its messages reached delivered/.
    wait_for(lambda: pair.receiver_spool.depth("received") == 0, 30, "received/ to drain")
    names = sorted(p.name for p in pair.inbox_new.iterdir())
    assert names == sorted(expected), f"{point}: lost or duplicated files"
    for name, digest in expected.items():
        assert hashlib.sha256((pair.inbox_new / name).read_bytes()).hexdigest() == digest
    assert pair.receiver_spool.depth("delivered") == n_files
    for spool in (pair.sender_spool, pair.receiver_spool):
        for state in ("quarantine", "corrupt", "incoming", "ready", "received"):
            assert spool.depth(state) == 0, f"{point}: {spool.root.parent.name} {state}/"
    # No plaintext anywhere in the sender's spool past sealing.
    for state in ("active", "sent"):
        for msg_id in pair.sender_spool.ids(state):
            assert not (pair.sender_spool.entry(state, msg_id) / "data").exists()
    for gateway in ("internet-gw", "internal-gw"):
        result = verify(pair.audit_log(gateway))
        assert result.ok, f"{point}: {gateway}: {result.problem}"
    report = reconcile(pair.audit_log("internet-gw"), pair.audit_log("internal-gw"))
    assert report.ok, f"{point}: reconcile: {report}"
    # Every message numbered once: the receiver saw each sequence number exactly once.
    delivered = [r for r in _records(pair, "internal-gw") if r["event"] == "delivered"]
    seqs = sorted({r["message"]["seq"] for r in delivered})
    assert seqs == list(range(1, n_files + 1)), f"{point}: sequence numbers {seqs[:5]}..."
    if kind.startswith("batched"):
        # Containers were used, each small message named by one, and each delivered once.
        # (A small one alone between two large ones is sealed alone.)
        in_batch = [r for r in delivered if r.get("extra", {}).get("batch")]
        small = {n for n in expected if _size(tmp_path, n) <= 64 * 1024}
        assert {r["message"]["name"] for r in in_batch} <= small
        assert len(in_batch) >= len(small) // 2, (len(in_batch), len(small))
        assert len({r["extra"]["batch"] for r in in_batch}) >= 2
        assert len({r["message"]["id"] for r in delivered}) == n_files
        sent = [r for r in _records(pair, "internet-gw") if r["event"] == "sealed"]
        assert {r["message"]["id"] for r in sent if r.get("extra", {}).get("batch")} == {
            r["message"]["id"] for r in in_batch
        }


# -- unit tests of the batch paths -----------------------------------------------------------


def _sender_side(tmp_path: Path) -> AgentContext:
    cfg = load_gateway_config(write_gateway_pair(tmp_path, 1024**2)["internet-gw"])
    return AgentContext.open(cfg, "ingest")


def test_one_bad_message_in_a_sealing_batch_goes_to_corrupt_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _sender_side(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"m{i}.txt").write_bytes(f"message {i}\n".encode() * 50)
    submit_files(ctx.config.outbox, "import", [src])
    ingest = IngestAgent(ctx)
    assert ingest.poll_once() == 6
    ids = ctx.spool.ids("ready")
    assert len(ids) == 6
    victim = ids[2]
    sender_ctx = AgentContext.open(ctx.config, "sender")
    sender = SenderAgent(sender_ctx)
    real_seal_to = sender._seal_to

    def seal_to(src_path: Path, dst: Path, meta, state) -> None:  # type: ignore[no-untyped-def]
        if meta.id == victim:
            raise RuntimeError("injected failure while sealing")
        real_seal_to(src_path, dst, meta, state)

    monkeypatch.setattr(sender, "_seal_to", seal_to)
    try:
        sender._batch_guarded("ready", ids, sender.seal_batch)
        assert sorted(sender_ctx.spool.ids("active")) == sorted(set(ids) - {victim})
        assert sender_ctx.spool.ids("corrupt") == [victim]
        meta = sender_ctx.spool.read_meta("corrupt", victim)
        assert "injected failure while sealing" in (meta.reason or "")
        # Numbers 1..5 went to the five sealed messages, none to the one that failed.
        seqs = []
        for i in set(ids) - {victim}:
            with open(sender_ctx.spool.entry("active", i) / "envelope", "rb") as f:
                seqs.append(env.read_header(f)[0].sequence)
        assert sorted(seqs) == [1, 2, 3, 4, 5]
        records = [json.loads(x) for x in ctx.config.audit_log.read_text().splitlines()]
        sealed = [r["message"]["id"] for r in records if r["event"] == "sealed"]
        assert sorted(sealed) == sorted(set(ids) - {victim})
        corrupt = [r for r in records if r["event"] == "corrupt"]
        assert [r["message"]["id"] for r in corrupt] == [victim]
        assert verify(ctx.config.audit_log).ok
    finally:
        for state in sender.links.values():
            state.link.close()


def test_a_batch_that_cannot_reach_the_audit_log_moves_nothing(tmp_path: Path) -> None:
    ctx = _sender_side(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"m{i}.txt").write_bytes(b"x" * 100)
    submit_files(ctx.config.outbox, "import", [src])
    # Damage the log's tail: the batch's records cannot be chained, so no claim may happen.
    with open(ctx.config.audit_log, "ab") as f:
        f.write(b'{"torn": ')
    ingest = IngestAgent(ctx)
    with pytest.raises(Exception, match="audit log"):
        ingest.poll_once()
    assert ctx.failed
    new = ctx.config.outbox / "import" / "new"
    assert sorted(os.listdir(new)) == [f"m{i}.txt" for i in range(5)]
    for state in ("incoming", "ready", "quarantine"):
        assert ctx.spool.depth(state) == 0
    # Recovery (on the next start) clears the scratch entries of the batch that never claimed.
    assert len(os.listdir(ctx.spool.dir("tmp/ingest"))) == 5


@pytest.mark.parametrize("where", ["before-markers", "after-markers"])
def test_a_failed_delivery_from_memory_is_finished_from_received(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Envelopes that came in memory, in a batch that breaks: nothing is lost. Before their
    markers are durable they are stored in received/ as they came; after, the markers finish
    them. Either way each file is delivered once, and the audit log verifies."""
    from zonegate.gateways.receiver import ReceiverAgent
    from zonegate.transfer.durable import Barrier
    from zonegate.transfer.link import Arrival

    pair = GatewayPair(tmp_path / "gw")  # keys and configs only: everything runs in-process
    cfg = load_gateway_config(pair.configs["internal-gw"])
    ctx = AgentContext.open(cfg, "receiver")
    receiver = ReceiverAgent(ctx)
    flow = receiver.flows["import"]
    arrivals = []
    for i in range(5):
        msg_id, _header, data = seal_test_envelope(pair, f"message {i}\n".encode() * 20)
        arrivals.append(
            Arrival(
                msg_id,
                ctx.spool.dir("tmp/link") / msg_id,
                False,
                len(data),
                hashlib.sha256(data).hexdigest(),
                payload=bytes(data),
            )
        )
    barrier = Barrier()
    receiver._accept_from_link(flow, arrivals, barrier)
    items = receiver._from_memory(1.0)
    assert len(items) == 5 and ctx.spool.depth("received") == 0

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected failure")

    if where == "before-markers":
        monkeypatch.setattr(receiver, "_sequence", broken)
    else:
        monkeypatch.setattr(receiver, "_link_into_inboxes", broken)
    receiver._deliver_memory_guarded(items, barrier)
    monkeypatch.undo()
    held = ctx.spool.ids("received")
    assert sorted(held) == sorted(a.transfer for a in arrivals), "every message is held on disk"
    for msg_id in held:
        stored = (ctx.spool.entry("received", msg_id) / "envelope").exists()
        assert stored == (where == "before-markers")
    assert not receiver._in_flight
    receiver._deliver_batch_guarded(held, barrier)
    barrier.close()
    delivered = sorted(p.name for p in pair.inbox_new.iterdir())
    assert delivered == sorted(f"{a.transfer[-8:]}.txt" for a in arrivals)
    assert ctx.spool.depth("delivered") == 5 and ctx.spool.depth("received") == 0
    assert ctx.spool.depth("quarantine") == 0 and ctx.spool.depth("corrupt") == 0
    assert verify(cfg.audit_log).ok


def test_what_a_receiver_holds_in_memory_stays_within_the_resend_window(tmp_path: Path) -> None:
    """A receiver that dies loses what it held in memory; the sender re-sends only its resend
    window on reconnect. So the link stage must wait while the deliver stage is behind by
    MEMORY_BACKLOG, and what can be lost (that plus the link's own queues) must be less than
    the default window (a kill -9 test once lost two messages when it was not)."""
    import threading

    from zonegate.gateways import receiver as receiver_module
    from zonegate.transfer.durable import Barrier
    from zonegate.transfer.link import Arrival
    from zonegate.transfer.zmqlink import in_flight_bound
    from zonegate.zones.config import DEFAULT_RESEND_WINDOW, ZMQ_IN_FLIGHT_BYTES

    assert in_flight_bound() + receiver_module.MEMORY_BACKLOG < DEFAULT_RESEND_WINDOW
    # the smallest window a zmq flow's config may set covers it too
    assert in_flight_bound() + receiver_module.MEMORY_BACKLOG <= ZMQ_IN_FLIGHT_BYTES
    pair = GatewayPair(tmp_path / "gw")
    cfg = load_gateway_config(pair.configs["internal-gw"])
    ctx = AgentContext.open(cfg, "receiver")
    receiver = receiver_module.ReceiverAgent(ctx)
    flow = receiver.flows["import"]
    arrivals = []
    for i in range(10):
        msg_id, _header, data = seal_test_envelope(pair, bytes([i]) * 900_000)
        arrivals.append(
            Arrival(
                msg_id,
                ctx.spool.dir("tmp/link") / msg_id,
                False,
                len(data),
                hashlib.sha256(data).hexdigest(),
                payload=bytes(data),
            )
        )
    barrier = Barrier()
    link = threading.Thread(target=receiver._accept_from_link, args=(flow, arrivals, barrier))
    link.start()
    link.join(1.0)
    assert link.is_alive(), "the link stage went on with 9 MB not yet durable"
    assert receiver._queue.qsize() * 900_000 <= receiver_module.MEMORY_BACKLOG
    while link.is_alive() or receiver._queue.qsize():
        items = receiver._from_memory(0.5)
        if items:
            receiver._deliver_memory_guarded(items, Barrier())
    link.join()
    assert ctx.spool.depth("delivered") == 10
    assert receiver._backlog == 0
    assert verify(cfg.audit_log).ok


def test_numbers_follow_the_ids_when_a_batch_stops_early(tmp_path: Path) -> None:
    """A sealing batch stops early when a container is full or a message must go alone
    after one; the messages after that batch must then wait, not be numbered first (the
    receiver would report a gap that is not one, and take them out of order)."""
    cfg = load_gateway_config(write_gateway_pair(tmp_path, 1024**2, batch=True)["internet-gw"])
    ctx = AgentContext.open(cfg, "ingest")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(700):  # two small ones, then one too big for a container, and again
        (src / f"m{i:04d}.bin").write_bytes(bytes([i % 251]) * (70_000 if i % 3 == 2 else 100))
    submit_files(cfg.outbox, "import", [src])
    ingest = IngestAgent(ctx)
    while ctx.spool.depth("incoming") + len(os.listdir(cfg.outbox / "import" / "new")):
        ingest.poll_once()
    assert ctx.spool.depth("ready") == 700
    sender = SenderAgent(AgentContext.open(cfg, "sender"))  # no receiver: all stays in active/
    try:
        for _ in range(1000):
            if not sender.ctx.spool.ids("ready"):
                break
            sender.step()
        spool = sender.ctx.spool
        assert spool.depth("ready") == 0
        numbered = []
        for entry_id in spool.ids("active"):
            meta = spool.read_meta("active", entry_id)
            items = meta.extra.get("batch")
            if items:
                numbered += [(item["id"], item["seq"]) for item in items]
            else:
                with open(spool.entry("active", entry_id) / "envelope", "rb") as f:
                    numbered.append((entry_id, env.read_header(f)[0].sequence))
        numbered.sort()
        assert [seq for _id, seq in numbered] == list(range(1, 701))
        assert any(spool.read_meta("active", i).extra.get("batch") for i in spool.ids("active"))
    finally:
        for state in sender.links.values():
            state.link.close()
        sender.reaper.close()
