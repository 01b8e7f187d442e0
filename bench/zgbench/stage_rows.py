"""Stage shares as result rows: `<prefix>stage_share_<stage>` and `<prefix>slowest_stage`.

Each row's value is the stage's percent of the summed stage busy time (stages.busy_shares) and
its baseline that whole (100 %), so `ratio` is the stage's fraction of it; the `slowest_stage`
row names its stage in `note`.
"""

from __future__ import annotations

from .results import Result, failed, measured
from .stages import STAGES, StageShares

__all__ = ["stage_result_names", "stage_results"]


def stage_result_names(prefix: str = "") -> tuple[str, ...]:
    return (*(f"{prefix}stage_share_{s}" for s in STAGES), f"{prefix}slowest_stage")


def stage_results(shares: StageShares, what: str, prefix: str = "") -> list[Result]:
    names = stage_result_names(prefix)
    pct = shares.shares()
    if not pct:
        reason = "no stage time measured"
        if shares.notes:
            reason += ": " + "; ".join(shares.notes)
        return [failed(n, reason, "%") for n in names]
    baseline = f"{what}: summed stage time"
    rows = [measured(n, pct[s], "%", baseline, 100.0) for n, s in zip(names, STAGES, strict=False)]
    slowest = shares.slowest()
    assert slowest is not None
    rows.append(measured(names[-1], pct[slowest], "%", baseline, 100.0, note=slowest))
    return rows
