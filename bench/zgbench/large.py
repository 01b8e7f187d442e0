"""One large file outbox -> inbox over the ZeroMQ link, on this disk and on a tmpfs.

- `large_file_vs_limit` (family `large`): the gateway pair on the work dir's disk, against two
  durable copies and one hashlib SHA-256 pass of the same file on the same disk (the work the
  hardware must do for it). Also `peak_rss_mib` (the largest resident memory of any agent
  during the run, against an idle agent just after start) and the stage shares.
- `large_file_tmpfs_vs_scp` (family `tmpfs`): the whole pair (spools, outbox, inbox, audit logs)
  on a tmpfs, against OpenSSH `scp -c aes256-gcm@openssh.com` of the same file to the same tmpfs
  through a private local sshd: the software against the software, with the disk taken away.

The time is from the rename into `outbox/import/new/` to the receiver's `delivered` record; the
delivered file's SHA-256 must equal the source's, or there is no figure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from zonegate.transfer.durable import fsync_dir

from .baselines import durable_copies, make_file, sha256_file
from .context import Context, MiB
from .pair import FLOW, BenchError, Pair, running
from .progress import say
from .results import Result, measured
from .sshd import LocalSshd, local_sshd
from .stage_rows import stage_result_names, stage_results
from .stages import StageShares, busy_shares, stage_shares, timelines
from .tmpfs import prefault, tmpfs

__all__ = ["DISK_RESULTS", "TMPFS_RESULTS", "run_disk", "run_tmpfs"]

DISK_RESULTS = ("large_file_vs_limit", "peak_rss_mib", *stage_result_names())
TMPFS_RESULTS = ("large_file_tmpfs_vs_scp",)
NAME = "large.bin"
SCP_CIPHER = "aes256-gcm@openssh.com"


@dataclass
class LargeRun:
    seconds: float
    peak_rss: dict[str, int]
    idle_rss: dict[str, int]
    shares: StageShares  # busy time per stage, from the agents' histograms
    problems: list[str]
    timeline: StageShares  # the same interval from the audit records: where it waited

    def details(self, size: int, baseline: str, before: float, after: float) -> dict:
        """The JSON details: raw seconds, both baseline runs, memory per agent, stages."""
        return {
            "bytes": size,
            "seconds": round(self.seconds, 4),
            baseline: {"before": round(before, 4), "after": round(after, 4)},
            "peak_rss_mib": {a: round(v / MiB, 1) for a, v in self.peak_rss.items()},
            "idle_rss_mib": {a: round(v / MiB, 1) for a, v in self.idle_rss.items()},
            "stages": self.shares.to_json(),
            "timeline_stages": self.timeline.to_json(),
            "log_problems": self.problems[:50],
        }


def _limit(size: int) -> int:
    return max(2 * size, 64 * MiB)


def send_large(
    root: Path, src: Path, src_sha: str, ctx: Context, phase: str, warm: int = 0
) -> LargeRun:
    """A fresh pair under `root` moves `src` once; time, memory and stages from its records.

    `warm`: bytes to prefault on `root`'s file system just before the clock starts (tmpfs)."""
    pair = Pair(root, _limit(src.stat().st_size), ctx.profiler)
    try:
        with running(pair, phase):
            staged = pair.outbox_tmp / NAME
            shutil.copyfile(src, staged)
            with open(staged, "rb+") as f:
                os.fsync(f.fileno())
            if warm:
                prefault(root, warm)
            say(f"{phase}: submitting {src.stat().st_size // MiB} MiB into outbox/{FLOW}/new/")
            os.rename(staged, pair.outbox_new / NAME)
            submitted = time.time()
            fsync_dir(pair.outbox_new)
            pair.wait_delivered(1, ctx.timeout, phase)
            seal = pair.stage_seconds("sender", "seal")
            busy = pair.busy_seconds()
        delivered = list(pair.inbox_new.iterdir())
        if len(delivered) != 1:
            raise BenchError(f"inbox/{FLOW}/new holds {len(delivered)} files, expected 1")
        got_sha = sha256_file(delivered[0])
        if got_sha != src_sha:
            raise BenchError(f"SHA-256 mismatch: source {src_sha}, delivered {got_sha}")
        lines = [t for t in timelines(pair.audit_records(), FLOW).values() if t.name == NAME]
        if len(lines) != 1 or "delivered" not in lines[0].times:
            raise BenchError(
                f"expected one delivered record for {NAME}, found {len(lines)} messages"
            )
        seconds = lines[0].times["delivered"] - submitted
        timeline = stage_shares(lines, {NAME: submitted}, seal)
        shares = busy_shares(busy, 1)
        say(f"  delivered in {seconds:.2f}s, SHA-256 matches; slowest stage: {shares.slowest()}")
        problems = pair.log_problems()
        for line in problems[:10]:
            say(f"  log: {line}")
    finally:
        if not ctx.keep:
            pair.discard_data()
    return LargeRun(seconds, pair.peak_rss(), pair.idle_rss, shares, problems, timeline)


def run_disk(ctx: Context) -> list[Result]:
    size = ctx.large_size
    work = ctx.folder("large")
    say(f"large: writing a {size // MiB} MiB source file")
    src = work / "source.bin"
    src_sha = make_file(src, size)

    def baseline(when: str) -> float:
        s = durable_copies(src, work / "baseline")
        say(f"  baseline {when}: 2 durable copies + SHA-256 in {s:.2f}s")
        return s

    try:
        before = baseline("before")
        run = send_large(work / "pair", src, src_sha, ctx, "large")
        after = baseline("after")
    finally:
        src.unlink()
    base_s = (before + after) / 2
    ctx.details["large"] = run.details(size, "baseline_seconds", before, after)
    peak = max(run.peak_rss.values(), default=0) / MiB
    idle = max(run.idle_rss.values(), default=0) / MiB
    return [
        measured(
            "large_file_vs_limit", size / 1e6 / run.seconds, "MB/s",
            "2 durable copies + SHA-256, same disk", size / 1e6 / base_s,
        ),
        measured("peak_rss_mib", peak, "MiB", "largest idle agent after start", idle),
        *stage_results(run.shares, "large file"),
    ]  # fmt: skip


def scp_seconds(server: LocalSshd, src: Path, dest: Path, warm: int = 0) -> float:
    """OpenSSH scp of `src` to `dest` through the private sshd on loopback; SHA-256 checked.

    `warm`: bytes to prefault on `dest`'s file system just before the clock starts (tmpfs)."""
    cmd = ["scp", "-q", "-c", SCP_CIPHER, "-P", str(server.port), *server.client_options()]
    cmd += [str(src), f"{server.user}@127.0.0.1:{dest}"]
    if warm:
        prefault(dest.parent, warm)
    started = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if r.returncode != 0:
        raise BenchError(f"scp failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    if sha256_file(dest) != sha256_file(src):
        raise BenchError("scp delivered a file whose SHA-256 differs from the source")
    dest.unlink()
    return elapsed


def run_tmpfs(ctx: Context) -> list[Result]:
    size = ctx.large_size
    work = ctx.folder("tmpfs")
    # source, a copy in the outbox and spool, an envelope on each side, the delivered file
    # Both sides prefault the same amount: what ours allocates while timed (its envelope and the
    # delivered file), a margin over scp's one copy; see tmpfs.prefault for why.
    warm = 2 * size + 64 * MiB
    with tmpfs(work / "mnt", 6 * size + 512 * MiB) as mnt, local_sshd(work / "sshd") as server:
        src = mnt / "source.bin"
        say(f"tmpfs: writing a {size // MiB} MiB source file on the tmpfs")
        src_sha = make_file(src, size)
        (mnt / "scp").mkdir()

        def baseline(when: str) -> float:
            s = scp_seconds(server, src, mnt / "scp" / NAME, warm)
            say(f"  baseline {when}: scp -c {SCP_CIPHER} to the tmpfs in {s:.2f}s")
            return s

        before = baseline("before")
        try:
            run = send_large(mnt / "pair", src, src_sha, ctx, "tmpfs", warm)
        finally:
            _keep_logs(mnt / "pair", work / "pair-logs")
        shutil.rmtree(mnt / "pair")  # room for the second scp on a small tmpfs
        after = baseline("after")
    base_s = (before + after) / 2
    ctx.details["tmpfs"] = run.details(size, "scp_seconds", before, after)
    ctx.details["tmpfs"]["prefault_bytes"] = warm
    return [
        measured(
            "large_file_tmpfs_vs_scp", size / 1e6 / run.seconds, "MB/s",
            f"scp -c {SCP_CIPHER} to tmpfs", size / 1e6 / base_s,
        )
    ]  # fmt: skip


def _keep_logs(pair_root: Path, dest: Path) -> None:
    """Agent logs and audit logs out of the tmpfs before it goes (the data itself goes)."""
    if not pair_root.exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for log in pair_root.glob("*.log"):
        shutil.copy2(log, dest / log.name)
    for gw in ("internet-gw", "internal-gw"):
        audit = pair_root / gw / "audit"
        if audit.is_dir():
            shutil.copytree(audit, dest / gw / "audit", dirs_exist_ok=True)
