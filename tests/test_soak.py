"""Soak: a long mixed run with each agent's memory and open file descriptors sampled; neither
may grow. CI runs five minutes; ZONEGATE_SOAK_SECONDS=3600 is the hour-long run, and
ZONEGATE_SOAK_REPORT=FILE writes the samples as CSV for a curve.
"""

from __future__ import annotations

import csv
import os
import random
import statistics
import time
from pathlib import Path

import pytest
from harness import GatewayPair, wait_for

from zonegate.audit.verify import verify
from zonegate.gateways.submit import submit_files

SECONDS = float(os.environ.get("ZONEGATE_SOAK_SECONDS") or 300)
SAMPLE_EVERY = 5.0
AGENTS = ("ingest", "sender", "receiver")
LIMIT = 2 * 1024 * 1024  # files above this are refused by policy: part of the mix
FD_CEILING = 64  # an agent here holds 5 to 8 descriptors; far more at once is a leak or a burst


def _sample(pid: int) -> tuple[float, int]:
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.soak
@pytest.mark.timeout(SECONDS + 900)
def test_soak_memory_and_descriptors_do_not_grow(tmp_path: Path) -> None:
    pair = GatewayPair(tmp_path, limit=LIMIT)
    rng = random.Random(9)
    samples: list[dict[str, float]] = []
    submitted = refused_expected = 0
    try:
        pair.start()
        src = tmp_path / "src"
        src.mkdir()
        start = time.monotonic()
        next_sample = start
        while (elapsed := time.monotonic() - start) < SECONDS:
            batch = []
            for _ in range(rng.randint(2, 10)):
                submitted += 1
                size = rng.choice([0, 100, 2_000, 40_000, 300_000, 1_500_000])
                if rng.random() < 0.03:
                    size, refused_expected = LIMIT + 1, refused_expected + 1
                p = src / f"s{submitted:06d}.bin"
                p.write_bytes(os.urandom(min(size, 4096)) * (size // 4096 + 1))
                p.write_bytes(p.read_bytes()[:size])
                batch.append(p)
            submit_files(pair.outbox, "import", batch, wait=60)
            for p in batch:
                p.unlink()
            if time.monotonic() >= next_sample:
                row: dict[str, float] = {"t": round(elapsed, 1)}
                for agent in AGENTS:
                    rss, fds = _sample(pair.procs[agent].pid)
                    row[f"{agent}_rss_mib"], row[f"{agent}_fds"] = round(rss, 1), fds
                samples.append(row)
                next_sample += SAMPLE_EVERY
            time.sleep(rng.uniform(0.5, 1.5))  # below capacity: a soak, not a flood
        wait_for(
            lambda: (
                pair.receiver_spool.depth("delivered") + pair.sender_spool.depth("quarantine")
                >= submitted
            ),
            300,
            "every soak message accounted for",
        )
        assert pair.sender_spool.depth("quarantine") == refused_expected
        assert pair.receiver_spool.depth("delivered") == submitted - refused_expected
        assert len(list(pair.inbox_new.iterdir())) == submitted - refused_expected
        for gw in ("internet-gw", "internal-gw"):
            assert verify(pair.audit_log(gw)).ok
        assert all(pair.alive(a) for a in AGENTS), pair.logs()
    finally:
        pair.stop()
        report = os.environ.get("ZONEGATE_SOAK_REPORT")
        if report and samples:
            with open(report, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(samples[0]))
                w.writeheader()
                w.writerows(samples)
    # Growth: after a warm-up (first fifth), compare the first and last thirds of the samples.
    steady = samples[len(samples) // 5 :]
    assert len(steady) >= 6, "too few samples to judge growth"
    third = len(steady) // 3
    for agent in AGENTS:
        early = [s[f"{agent}_rss_mib"] for s in steady[:third]]
        late = [s[f"{agent}_rss_mib"] for s in steady[-third:]]
        assert statistics.mean(late) <= statistics.mean(early) * 1.15 + 8, (agent, early, late)
        # A leaked descriptor stays open, so it lifts every later sample, the fewest included;
        # one held while a message is in work shows in some samples only (a busy CI saw an
        # ingest agent at 11 descriptors in one sample, 5 whenever it was between messages).
        # So growth is judged by each third's floor, and bursts by a ceiling no sane agent nears.
        fds = [s[f"{agent}_fds"] for s in steady]
        fd_early, fd_late = min(fds[:third]), min(fds[-third:])
        assert fd_late <= fd_early + 2, (agent, fd_early, fd_late, fds)
        assert max(fds) <= FD_CEILING, (agent, max(fds), fds)
    print(f"\nsoak: {submitted} messages in {SECONDS:.0f}s; last sample {samples[-1]}")
