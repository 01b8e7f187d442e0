"""A benchmark result, its ratio to the baseline measured beside it, the issue's targets, the table.

A figure taken on a shared, noisy machine means nothing alone; its ratio to a baseline from the
same run on the same machine does. `ratio` is always ``value / baseline_value``; whether a higher
or a lower ratio is better follows from the unit (`better`): for rates (MB/s, files/s) higher is
better, for times, latencies and memory lower is better (a ratio of 3 means three times as long,
or as big, as the baseline).

Pure: no I/O, so the schema and the target checks are unit-tested without running anything.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TARGETS",
    "Result",
    "Target",
    "better",
    "exit_code",
    "failed",
    "measured",
    "table",
]

#: Units whose figures are rates: more is better. Everything else (s, ms, MiB, %) is a cost.
RATE_UNITS = frozenset({"MB/s", "MiB/s", "files/s"})


def better(unit: str) -> str:
    """Which way is better for a figure in `unit`: ``"higher"`` for rates, else ``"lower"``."""
    return "higher" if unit in RATE_UNITS else "lower"


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Target:
    """One of issue 8's targets: `field` (``value`` or ``ratio``) `op` `threshold`."""

    field: str
    op: str
    threshold: float

    def __post_init__(self) -> None:
        if self.field not in ("value", "ratio") or self.op not in _OPS:
            raise ValueError(f"bad target {self.field} {self.op} {self.threshold}")

    def text(self, unit: str = "") -> str:
        suffix = f" {unit}" if self.field == "value" and unit else ""
        return f"{self.field} {self.op} {self.threshold:g}{suffix}"

    def met(self, result: Result) -> bool | None:
        """True or False, or None when the figure it judges was not measured."""
        got = result.value if self.field == "value" else result.ratio
        if got is None or not math.isfinite(got):
            return None
        return _OPS[self.op](got, self.threshold)


#: Issue 8's targets, by result name.
TARGETS: dict[str, Target] = {
    "large_file_vs_limit": Target("ratio", ">=", 0.7),
    "large_file_tmpfs_vs_scp": Target("ratio", ">=", 1.0),
    "small_files_vs_limit": Target("ratio", ">=", 1.0),
    "small_p99_ms": Target("value", "<", 250),
    "udp_vs_udpcast": Target("ratio", ">=", 0.8),
    "udp_vs_pydiode": Target("ratio", ">=", 2.0),
    "peak_rss_mib": Target("value", "<=", 150),
}


@dataclass(frozen=True)
class Result:
    """One row: a figure, the baseline it is judged against, and their ratio.

    A measurement that failed keeps its name and carries `error` instead of numbers, so a
    script reading the JSON sees what is missing and why; nothing is ever filled in.
    """

    name: str
    value: float | None
    unit: str
    baseline: str
    baseline_value: float | None
    ratio: float | None
    error: str | None = None
    note: str | None = None  # e.g. the stage a `slowest_stage` row names

    @property
    def target(self) -> Target | None:
        return TARGETS.get(self.name)

    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": _round(self.baseline_value),
            "ratio": _round(self.ratio),
            "better": better(self.unit),
        }
        if self.target is not None:
            out["target"] = self.target.text(self.unit)
            out["met"] = self.met()
        if self.note is not None:
            out["note"] = self.note
        if self.error is not None:
            out["error"] = self.error
        return out


def _round(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(x, 4 if abs(x) < 10 else 2)


def measured(
    name: str,
    value: float,
    unit: str,
    baseline: str,
    baseline_value: float | None,
    *,
    note: str | None = None,
) -> Result:
    """A measured figure; the ratio is computed here, never passed in."""
    ratio = None
    if baseline_value is not None and baseline_value > 0 and math.isfinite(baseline_value):
        ratio = value / baseline_value
    return Result(name, value, unit, baseline, baseline_value, ratio, note=note)


def failed(name: str, reason: str, unit: str = "", baseline: str = "") -> Result:
    return Result(name, None, unit, baseline, None, None, error=reason)


def exit_code(results: Iterable[Result]) -> int:
    """0 when every figure was measured, 1 when any measurement failed (targets do not count)."""
    return 1 if any(r.error is not None for r in results) else 0


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def table(results: Sequence[Result]) -> str:
    """The results as a plain-text table with each target and whether it is met."""
    headers = ["name", "value", "unit", "baseline", "baseline_value", "ratio", "target", "met"]
    rows = []
    for r in results:
        met = r.met()
        name = f"{r.name} ({r.note})" if r.note else r.name
        target = r.target.text(r.unit) if r.target else ""
        row = [name, _fmt(r.value), r.unit, r.baseline, _fmt(r.baseline_value), _fmt(r.ratio)]
        row += [target, "" if r.target is None else {True: "yes", False: "NO", None: "-"}[met]]
        if r.error is not None:
            row = [name, "FAILED", r.unit, r.baseline, "-", "-", target, "-" if target else ""]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    numeric = {1, 4, 5}
    lines = []
    for row in [headers, ["-" * w for w in widths], *rows]:
        cells = [
            c.rjust(w) if i in numeric and row is not headers else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    for r in results:
        if r.error is not None:
            lines.append(f"FAILED {r.name}: {r.error}")
    lines.append(
        "ratio = value / baseline_value: for MB/s and files/s higher is better; "
        "for ms, s, MiB and % lower is better (the ratio is how many times the baseline)."
    )
    return "\n".join(lines)
