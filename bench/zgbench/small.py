"""Floods of small reports: 1 KiB files end to end, then latency at half the maximum rate.

1. Baseline: single durable 1 KiB creates on the same disk (write, fsync, rename, fsync dir),
   their rate and each one's latency.
2. Flood: N files (2,000 with --quick, else 10,000) renamed into `outbox/import/new/` at once.
   `small_files_per_s` is N over the time from the first rename to the last `delivered` record;
   `small_files_vs_limit` is the same rate against the baseline's.
3. Paced: new files fed one by one at half the flood's rate (for `paced_seconds` at most, at
   least 100 files); each file's latency is from its rename into `new/` to the receiver's
   `delivered` record for that name (`latency.py`): `small_p50_ms`, `small_p99_ms`.

The pair's import flow has `batch: true` (docs/batch.md), as a bureau sets it for floods of
small reports: the sender seals runs of them into containers. For comparison a second flood of
the same files goes through a pair without it (`small_files_unbatched_per_s`, same baseline).

The stage shares of the flood (`small_stage_share_*`) say which stage the files queue for; the
paced run's are in the JSON details.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from zonegate.transfer.durable import fsync_dir

from .baselines import CreateBaseline, durable_creates
from .context import Context, MiB
from .latency import delivery_latencies, percentile
from .pair import FLOW, BenchError, Pair, running
from .progress import Progress, say
from .results import Result, failed, measured
from .stage_rows import stage_result_names, stage_results
from .stages import busy_shares, stage_shares, timelines

__all__ = ["SMALL_RESULTS", "run_small"]

SMALL_RESULTS = (
    "small_files_vs_limit",
    "small_files_per_s",
    "small_files_unbatched_per_s",
    "small_p50_ms",
    "small_p99_ms",
    *stage_result_names("small_"),
)
BASELINE_CREATES = 2000
SIZE = 1024


def write_files(directory: Path, prefix: str, n: int) -> list[str]:
    """`n` distinct 1 KiB files in `directory` (the outbox's tmp/); returns their names."""
    noise = os.urandom(SIZE)
    names = []
    for i in range(n):
        name = f"{prefix}-{i:06d}.bin"
        (directory / name).write_bytes((i.to_bytes(8, "big") + noise)[:SIZE])
        names.append(name)
    os.sync()
    return names


def last_delivered(pair: Pair, names: set[str]) -> float:
    """The latest `delivered` record time among `names` (all of them must be there)."""
    lines = [t for t in timelines(pair.audit_records(), FLOW).values() if t.name in names]
    times = [t.times["delivered"] for t in lines if "delivered" in t.times]
    if len(times) != len(names):
        raise BenchError(f"{len(times)} delivered records for {len(names)} files")
    return max(times)


def feed_paced(pair: Pair, names: list[str], rate: float) -> dict[str, float]:
    """Rename `names` into new/ one by one, `rate` a second; returns name -> rename time."""
    submitted: dict[str, float] = {}
    progress = Progress("small paced feed", len(names))
    start = time.monotonic()
    for i, name in enumerate(names):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        os.rename(pair.outbox_tmp / name, pair.outbox_new / name)
        submitted[name] = time.time()
        if i % 20 == 0:
            pair.check_alive()
            progress.update(i + 1, f"{rate:.1f} files/s")
    progress.close()
    return submitted


def flood(pair: Pair, n: int, ctx: Context) -> tuple[dict[str, float], float]:
    """`n` files renamed into new/ at once; (name -> rename time, files/s end to end)."""
    say(f"small: writing {n} files of 1 KiB into outbox/{FLOW}/tmp/")
    names = write_files(pair.outbox_tmp, "flood", n)
    say(f"small: flood: renaming {n} files into outbox/{FLOW}/new/ at once")
    submitted: dict[str, float] = {}
    for name in names:
        os.rename(pair.outbox_tmp / name, pair.outbox_new / name)
        submitted[name] = time.time()
    fsync_dir(pair.outbox_new)
    pair.wait_delivered(n, ctx.timeout, "small flood")
    rate = n / (last_delivered(pair, set(submitted)) - min(submitted.values()))
    say(f"  {n} delivered: {rate:.1f} files/s")
    return submitted, rate


def paced(pair: Pair, already: int, rate: float, ctx: Context) -> dict[str, float]:
    """Files fed one by one at half the flood's `rate`; name -> rename time."""
    half = rate / 2
    count = max(100, min(ctx.small_files, round(half * ctx.paced_seconds)))
    say(f"small: paced: {count} files at {half:.1f} files/s (half the flood's rate)")
    names = write_files(pair.outbox_tmp, "paced", count)
    submitted = feed_paced(pair, names, half)
    pair.wait_delivered(already + count, ctx.timeout, "small paced")
    return submitted


def run_small(ctx: Context) -> list[Result]:
    work = ctx.folder("small")

    def baseline(when: str) -> CreateBaseline:
        b = durable_creates(work / "baseline", BASELINE_CREATES)
        say(f"  baseline {when}: {BASELINE_CREATES} single durable 1 KiB creates, {b.rate:.0f}/s")
        return b

    before = baseline("before")
    pair = Pair(work / "pair", 64 * MiB, ctx.profiler, batch=True)
    fed: dict[str, float] = {}
    paced_error = None
    try:
        with running(pair, "small"):
            flooded, rate = flood(pair, ctx.small_files, ctx)
            flood_seal = pair.stage_seconds("sender", "seal")
            flood_busy = pair.busy_seconds()
            try:
                fed = paced(pair, len(flooded), rate, ctx)
            except BenchError as e:
                paced_error = str(e)
            paced_seal = pair.stage_seconds("sender", "seal")
        records = pair.audit_records()
        delivered = sorted(os.listdir(pair.inbox_new))
        expected = sorted([*flooded, *fed])
        if paced_error is None and delivered != expected:
            missing = sorted(set(expected) - set(delivered))
            extra = sorted(set(delivered) - set(expected))
            raise BenchError(f"inbox mismatch: missing {missing[:10]}, unexpected {extra[:10]}")
    finally:
        if not ctx.keep:
            pair.discard_data()
    unbatched = _unbatched_flood(work, ctx)
    after = baseline("after")
    base = CreateBaseline((before.rate + after.rate) / 2, [*before.latencies, *after.latencies])
    lines = timelines(records, FLOW).values()
    timeline = stage_shares([t for t in lines if t.name in flooded], flooded, flood_seal)
    shares = busy_shares(flood_busy, len(flooded))
    details: dict = {
        "flood_files": len(flooded),
        "baseline_creates": BASELINE_CREATES,
        "baseline_rate": {"before": round(before.rate, 1), "after": round(after.rate, 1)},
        "flood_stages": shares.to_json(),
        "flood_timeline_stages": timeline.to_json(),
        "log_problems": pair.log_problems()[:50],
    }
    ctx.details["small"] = details
    out = [
        measured(name, rate, "files/s", "single durable 1 KiB creates", base.rate)
        for name in ("small_files_vs_limit", "small_files_per_s")
    ]
    out.append(unbatched(base.rate))
    if paced_error is not None:
        out += [failed(name, paced_error, "ms") for name in ("small_p50_ms", "small_p99_ms")]
    else:
        out += _latency_rows(fed, records, base.latencies, details)
        seal = None
        if paced_seal is not None and flood_seal is not None:
            seal = paced_seal - flood_seal
        details["paced_stages"] = stage_shares(
            [t for t in lines if t.name in fed], fed, seal
        ).to_json()
    return out + stage_results(shares, "small-file flood", "small_")


def _unbatched_flood(work: Path, ctx: Context) -> Callable[[float], Result]:
    """The same flood through a pair whose flow seals every message alone (no `batch`);
    returns the row, to be made once the baseline is known."""
    pair = Pair(work / "pair-unbatched", 64 * MiB, None, batch=False)
    try:
        with running(pair, "small-unbatched"):
            _submitted, rate = flood(pair, ctx.small_files, ctx)
    except BenchError as e:
        error = str(e)
        return lambda _base: failed("small_files_unbatched_per_s", error, "files/s")
    finally:
        if not ctx.keep:
            pair.discard_data()
    return lambda base: measured(
        "small_files_unbatched_per_s", rate, "files/s", "single durable 1 KiB creates", base
    )


def _latency_rows(
    paced: dict[str, float], records: list[dict], base_latencies: list[float], details: dict
) -> list[Result]:
    lat = delivery_latencies(paced, records)
    if lat.missing or lat.duplicated:
        reason = f"{len(lat.missing)} paced files without a delivered record"
        reason += f", {len(lat.duplicated)} delivered twice"
        return [failed(name, reason, "ms") for name in ("small_p50_ms", "small_p99_ms")]
    values = lat.values()
    span = max(paced.values()) - min(paced.values())
    details["paced"] = {
        "files": len(paced),
        "feed_rate": round((len(paced) - 1) / span, 2) if span > 0 else None,
        "latency_ms": {
            p: round(percentile(values, q) * 1000, 2)
            for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
    }
    rows = []
    for p in (50, 99):
        rows.append(
            measured(
                f"small_p{p}_ms", percentile(values, p) * 1000, "ms",
                f"p{p} of one durable 1 KiB create", percentile(base_latencies, p) * 1000,
            )
        )  # fmt: skip
    return rows
