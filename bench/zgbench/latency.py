"""End-to-end latency per file: from its rename into the outbox to its `delivered` record.

The receiver's `delivered` audit record carries the message id, the original name and the time
the delivery was committed (it precedes the link into the inbox, as every state change is
preceded by its record). The bench knows when it renamed each name into the outbox, and names
are unique within a run, so each file is matched exactly: no guessing from counts or order.
A name delivered under two message ids would be a second copy and is reported, never averaged
away. Pure: records in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .stages import parse_time

__all__ = ["Latencies", "delivery_latencies", "percentile"]


@dataclass
class Latencies:
    seconds: dict[str, float] = field(default_factory=dict)  # name -> latency
    missing: list[str] = field(default_factory=list)  # submitted, never delivered
    duplicated: list[str] = field(default_factory=list)  # delivered under more than one id

    def values(self) -> list[float]:
        return sorted(self.seconds.values())


def delivery_latencies(submitted: Mapping[str, float], records: Iterable[Mapping]) -> Latencies:
    """Match each submitted name (-> epoch seconds of its rename) to its `delivered` record."""
    first: dict[str, float] = {}
    ids: dict[str, set[str]] = {}
    for r in records:
        if r.get("event") != "delivered" or r.get("outcome", "ok") != "ok":
            continue
        message = r.get("message")
        if not isinstance(message, Mapping):
            continue
        name = message.get("name")
        if name not in submitted:
            continue
        t = parse_time(r.get("time"))
        if t is None:
            continue
        ids.setdefault(name, set()).add(str(message.get("id")))
        first[name] = min(t, first.get(name, t))
    out = Latencies()
    for name, sent in submitted.items():
        if name in first:
            out.seconds[name] = first[name] - sent
        else:
            out.missing.append(name)
    out.duplicated = sorted(n for n, s in ids.items() if len(s) > 1)
    return out


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`: a value that was really observed."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
