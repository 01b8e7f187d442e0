"""End to end across real processes: outbox -> ingest -> sender -> ZeroMQ -> receiver -> inbox.

Acceptance 2 (200 files, 0 B to 64 MiB, each exactly once, both audit logs verify) and
acceptance 3 (kill -9 of the receiver, then of the sender, mid-run; still exactly once).
"""

from __future__ import annotations

import hashlib
import random
import signal
import threading
import time
from pathlib import Path

from harness import GatewayPair, make_file, metric_value, wait_for, zg

from zonegate.audit.verify import verify
from zonegate.gateways.submit import submit_files

MiB = 1024 * 1024


def _sizes(n: int, seed: int) -> list[int]:
    fixed = [0, 1, 4095, 4096, MiB - 1, MiB, MiB + 1, 64 * MiB, 64 * MiB]
    rng = random.Random(seed)
    rest = [int(10 ** rng.uniform(1, 6.6)) for _ in range(n - len(fixed))]
    sizes = fixed + rest
    rng.shuffle(sizes)
    return sizes


def _make_sources(directory: Path, n: int, seed: int) -> dict[str, str]:
    directory.mkdir()
    expected = {}
    for i, size in enumerate(_sizes(n, seed)):
        name = f"case-{i:03d} 文件.dat"
        path = directory / name
        make_file(path, size, seed * 1000 + i)
        expected[name] = _sha256(path)
    return expected


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def _assert_exactly_once(pair: GatewayPair, expected: dict[str, str]) -> None:
    delivered = sorted(p.name for p in pair.inbox_new.iterdir())
    assert delivered == sorted(expected), "inbox holds other names than were sent (a duplicate?)"
    for name, digest in expected.items():
        assert _sha256(pair.inbox_new / name) == digest, f"{name} differs from what was sent"
    assert pair.receiver_spool.depth("delivered") == len(expected)
    assert pair.receiver_spool.depth("quarantine") == 0
    assert pair.sender_spool.depth("quarantine") == 0
    leftovers = list((pair.inbox_new.parent / "tmp").iterdir())
    assert leftovers == [], f"partial files left in the inbox: {leftovers}"
    for gateway in ("internet-gw", "internal-gw"):
        result = verify(pair.audit_log(gateway))
        assert result.ok, f"{gateway} audit log: {result.problem}"


def test_200_files_arrive_exactly_once(pair: GatewayPair, tmp_path: Path) -> None:
    expected = _make_sources(tmp_path / "src", 200, seed=2)
    pair.start()
    submit_files(pair.outbox, "import", [tmp_path / "src"])
    wait_for(
        lambda: pair.receiver_spool.depth("delivered") >= len(expected),
        300,
        "200 deliveries",
    )
    _assert_exactly_once(pair, expected)
    text = pair.metrics("receiver")
    assert metric_value(
        text, "zonegate_messages_total", flow="import", stage="deliver", outcome="delivered"
    ) == len(expected)
    assert metric_value(text, "zonegate_queue_depth", state="delivered") == len(expected)
    sent = metric_value(
        pair.metrics("sender"), "zonegate_messages_total", flow="import", outcome="sent"
    )
    assert sent == len(expected)
    # Past ingest, the sending spool holds only ciphertext.
    for msg_id in pair.sender_spool.ids("sent"):
        assert not (pair.sender_spool.entry("sent", msg_id) / "data").exists()
    status = zg("status", "--config", str(pair.configs["internal-gw"]), "--json")
    assert status.returncode == 0, status.stderr
    assert '"delivered": {\n      "depth": 200' in status.stdout


def test_kill_9_receiver_then_sender_mid_run(pair: GatewayPair, tmp_path: Path) -> None:
    expected = _make_sources(tmp_path / "src", 200, seed=3)
    pair.start()
    submitter = threading.Thread(
        target=submit_files, args=(pair.outbox, "import", [tmp_path / "src"])
    )
    submitter.start()
    delivered = lambda: pair.receiver_spool.depth("delivered")  # noqa: E731

    wait_for(lambda: delivered() >= 40, 300, "40 deliveries")
    pair.kill("receiver", signal.SIGKILL)
    killed_at = delivered()
    time.sleep(1.0)
    pair.start("receiver")

    wait_for(lambda: delivered() >= killed_at + 60, 300, "60 more deliveries")
    pair.kill("sender", signal.SIGKILL)
    time.sleep(0.5)
    pair.kill("ingest", signal.SIGKILL)
    pair.start("sender", "ingest")

    submitter.join(300)
    wait_for(lambda: delivered() >= len(expected), 300, "all deliveries after the kills")
    time.sleep(3)  # any late duplicate would land now; none may
    _assert_exactly_once(pair, expected)
    assert all(pair.alive(a) for a in ("ingest", "sender", "receiver")), pair.logs()
