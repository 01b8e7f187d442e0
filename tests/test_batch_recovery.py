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
from harness import GatewayPair, make_file, wait_for

from zonegate.audit.tools import reconcile
from zonegate.audit.verify import verify
from zonegate.gateways.agent import AgentContext
from zonegate.gateways.demo import write_gateway_pair
from zonegate.gateways.ingest import IngestAgent
from zonegate.gateways.sender import SenderAgent
from zonegate.gateways.submit import submit_files
from zonegate.zones.config import load_gateway_config

N_FILES = 40
POINTS = {
    "ingest": ["ingest-recorded", "ingest-claimed", "ingest-published"],
    "sender": ["sender-sealed", "sender-moved", "sender-sent"],
    "receiver": ["receiver-recorded", "receiver-opened", "receiver-linked", "receiver-marked"],
}


def _sources(directory: Path) -> dict[str, str]:
    directory.mkdir()
    out = {}
    for i in range(N_FILES):
        path = directory / f"batch-{i:03d}.bin"
        make_file(path, [0, 1, 1024, 70_000][i % 4], i)
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _records(pair: GatewayPair, gateway: str) -> list[dict]:
    return [json.loads(x) for x in pair.audit_log(gateway).read_text().splitlines()]


@pytest.mark.parametrize(
    ("agent", "point"), [(agent, point) for agent, points in POINTS.items() for point in points]
)
def test_a_batch_killed_at_any_point_is_finished_once(
    pair: GatewayPair, tmp_path: Path, agent: str, point: str
) -> None:
    expected = _sources(tmp_path / "src")
    others = [a for a in ("ingest", "sender", "receiver") if a != agent]
    # The files are all waiting before the agents start, so they travel as batches.
    submit_files(pair.outbox, "import", [tmp_path / "src"])
    pair.start(*others)
    pair.start(agent, env={"ZONEGATE_CRASH_AT": point})
    wait_for(lambda: not pair.alive(agent), 60, f"{agent} to kill itself at {point}")
    assert pair.procs[agent].returncode == -9, pair.logs()
    pair.start(agent)
    wait_for(lambda: pair.receiver_spool.depth("delivered") >= N_FILES, 120, "every delivery")
    wait_for(lambda: pair.sender_spool.depth("active") == 0, 30, "active/ to drain")
    names = sorted(p.name for p in pair.inbox_new.iterdir())
    assert names == sorted(expected), f"{point}: lost or duplicated files"
    for name, digest in expected.items():
        assert hashlib.sha256((pair.inbox_new / name).read_bytes()).hexdigest() == digest
    assert pair.receiver_spool.depth("delivered") == N_FILES
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
    assert seqs == list(range(1, N_FILES + 1)), f"{point}: sequence numbers {seqs[:5]}..."


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
        seqs = sorted(sender_ctx.spool.read_meta("active", i).seq for i in ids if i != victim)
        assert seqs == [1, 2, 3, 4, 5]
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
