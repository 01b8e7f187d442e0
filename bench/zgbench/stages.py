"""Where the end-to-end time goes, per stage, from what the agents themselves record.

Every state change of a message is preceded by its audit record, and every record carries a time,
so the two gateways' audit logs give each message's timeline:

    rename into outbox/<flow>/new/   (the bench's own clock; else the `claimed` record)
    claimed, checked, accepted       ingest
    sealed (before sealing), sent    sender
    received-on-link, verified       receiver (verified: signature checked, plaintext written)
    delivered                        receiver

The stages are the intervals between them, each ending at its boundary record:

    ingest   start            -> accepted           claim, hash, content policy (and the wait in
                                                    the outbox before the claim)
    seal     accepted         -> sealed, + sealing  the wait in ready/ and the sealing itself
    link     sealed + sealing -> received-on-link   the wait in active/, the send, the transfer
    open     received-on-link -> verified           verify the signature, decrypt, write
    deliver  verified         -> delivered          approvals, sequence, the delivery record

The `sealed` record is written before the envelope is made, so the sealing itself is taken from
the sender's `zonegate_stage_duration_seconds{stage="seal"}` histogram (its sum over the run)
and moved from `link` to `seal`. Without that histogram, `seal` runs to the `sent` record
instead (and so includes the send), which the result's notes say.

Batching makes that timeline coarse: an agent writes the records of a whole batch at once, with
one time, after the batch's work (the receiver writes `received-on-link`, `verified` and
`delivered` of a message in memory together). So the stage shares reported are the agents' own
busy time per stage, `busy_shares`: the wall time each agent spent working on a stage, whole
batches counted once and waits left out (`zonegate_stage_busy_seconds_total{stage}`):

    ingest   ingest: claim, hash, content policy, the batch's commits
    seal     sender: encryption and signature (a large file is sealed while it is sent)
    link     sender `send` + receiver `receive`: handing envelopes to the link, taking them off
    open     receiver: signature check and decryption (a large file's, as it arrives)
    deliver  receiver: records, markers, links into the inbox, the commits

each as a percent of their total. The agents run side by side, so the stage busy longest is the
bottleneck. The audit timeline stays in the details, to show where messages wait.

Written defensively, because the agents change (group commit, batching): a missing record makes
its stage count as zero and its time fall into the next stage, with a note; times that run
backwards (records of two processes) are clamped so that the stages still add up exactly to the
end-to-end time. Shares are sums over all messages, so with many messages in flight a stage's
share includes the time messages wait for it: the stage with the largest share is the
bottleneck. Pure: records in, numbers out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "BUSY_SOURCES",
    "STAGES",
    "StageShares",
    "Timeline",
    "busy_shares",
    "counter_values",
    "histogram_sums",
    "parse_time",
    "stage_shares",
    "timelines",
]

STAGES = ("ingest", "seal", "link", "open", "deliver")

#: the record that ends each stage (the `seal` stage ends at `sent` when there is no histogram)
_ENDS = {
    "ingest": "accepted",
    "seal": "sealed",
    "link": "received-on-link",
    "open": "verified",
    "deliver": "delivered",
}
#: every record of a message's way, in the order they are written
EVENT_ORDER = (
    "claimed", "checked", "accepted", "sealed", "sent", "received-on-link", "verified",
    "delivered",
)  # fmt: skip
TIMELINE_EVENTS = frozenset(EVENT_ORDER)


def parse_time(text: object) -> float | None:
    """An audit record's time (ISO 8601 UTC, e.g. 2026-12-01T08:05:53.527656Z) as epoch seconds."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@dataclass
class Timeline:
    """One message's first record time per event, and the original name the records give it."""

    id: str
    name: str | None = None
    times: dict[str, float] = field(default_factory=dict)


def timelines(records: Iterable[Mapping], flow: str | None = None) -> dict[str, Timeline]:
    """Message id -> its timeline, from the records of any number of logs in any order.

    Only successful steps count (`outcome` ok): a refused check or a duplicate is not a stage
    of a delivered message. Re-sends (`resent`) are ignored; the first `sent` counts.
    """
    out: dict[str, Timeline] = {}
    for r in records:
        event = r.get("event")
        message = r.get("message")
        if event not in TIMELINE_EVENTS or not isinstance(message, Mapping):
            continue
        msg_id = message.get("id")
        if not isinstance(msg_id, str) or not msg_id:
            continue
        if flow is not None and message.get("flow") not in (flow, None):
            continue
        if r.get("outcome", "ok") != "ok":
            continue
        t = parse_time(r.get("time"))
        if t is None:
            continue
        tl = out.setdefault(msg_id, Timeline(msg_id))
        name = message.get("name")
        if tl.name is None and isinstance(name, str) and name:
            tl.name = name
        tl.times[event] = min(t, tl.times.get(event, t))
    return out


@dataclass
class StageShares:
    seconds: dict[str, float]  # per stage, summed over the messages counted
    end_to_end: float  # summed over the same messages: the stages add up to it exactly
    messages: int
    notes: list[str]
    #: finer: "a -> b" between consecutive records (and "start" for the rename), summed
    intervals: dict[str, float] = field(default_factory=dict)

    def shares(self) -> dict[str, float]:
        """Per stage, percent of the end-to-end time."""
        if self.end_to_end <= 0:
            return {}
        return {s: 100.0 * self.seconds[s] / self.end_to_end for s in STAGES}

    def slowest(self) -> str | None:
        shares = self.shares()
        return max(shares, key=lambda s: shares[s]) if shares else None

    def to_json(self) -> dict:
        return {
            "messages": self.messages,
            "end_to_end_seconds_sum": round(self.end_to_end, 6),
            "stage_seconds_sum": {s: round(v, 6) for s, v in self.seconds.items()},
            "share_percent": {s: round(v, 2) for s, v in self.shares().items()},
            "slowest": self.slowest(),
            "intervals_seconds_sum": {k: round(v, 6) for k, v in self.intervals.items()},
            "notes": self.notes,
        }


def stage_shares(
    lines: Iterable[Timeline],
    submitted: Mapping[str, float] | None = None,
    seal_seconds: float | None = None,
) -> StageShares:
    """Sum each stage over every delivered message; see the module doc for the stages.

    `submitted` maps an original name to when the bench renamed it into the outbox (epoch
    seconds); a message not in it starts at its `claimed` record. `seal_seconds` is the sum of
    the sender's seal histogram over the same messages.
    """
    ends = dict(_ENDS)
    notes: list[str] = []
    if seal_seconds is None:
        ends["seal"] = "sent"
        notes.append("no seal histogram: 'seal' runs to the sent record and includes the send")
    seconds = dict.fromkeys(STAGES, 0.0)
    intervals: dict[str, float] = {}
    total = 0.0
    counted = 0
    missing: Counter[str] = Counter()
    skipped = 0
    backwards = 0
    for tl in lines:
        start = None
        if submitted is not None and tl.name is not None:
            start = submitted.get(tl.name)
        if start is None:
            start = tl.times.get("claimed")
        end = tl.times.get("delivered")
        if start is None or end is None:
            skipped += 1
            continue
        if end < start:
            backwards += 1
            end = start
        _add_intervals(intervals, tl, start, end)
        prev = start
        for stage in STAGES:
            t = tl.times.get(ends[stage])
            if t is None:
                missing[ends[stage]] += 1
                t = prev
            t = min(max(t, prev), end)
            if stage == "deliver":
                t = end
            seconds[stage] += t - prev
            prev = t
        total += end - start
        counted += 1
    if seal_seconds is not None:
        moved = min(max(0.0, seal_seconds), seconds["link"])
        if moved < seal_seconds:
            notes.append(
                f"the seal histogram ({seal_seconds:.3f}s) exceeds the time from sealed to "
                f"received-on-link ({seconds['link']:.3f}s); only that much was moved"
            )
        seconds["seal"] += moved
        seconds["link"] -= moved
    for event, n in sorted(missing.items()):
        notes.append(f"no '{event}' record for {n} message(s): that stage counted in the next")
    if skipped:
        notes.append(f"{skipped} message(s) without a start or a delivered record left out")
    if backwards:
        notes.append(f"{backwards} message(s) delivered before their start time (clock?)")
    return StageShares(seconds, total, counted, notes, intervals)


#: stage -> the (agent, `stage` label of zonegate_stage_busy_seconds_total) that make it up
BUSY_SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "ingest": (("ingest", "ingest"),),
    "seal": (("sender", "seal"),),
    "link": (("sender", "send"), ("receiver", "receive")),
    "open": (("receiver", "open"),),
    "deliver": (("receiver", "deliver"),),
}
BUSY_METRIC = "zonegate_stage_busy_seconds_total"


def busy_shares(busy: Mapping[str, float | None], messages: int) -> StageShares:
    """Shares of the agents' busy time per stage (see the module doc); a stage none of whose
    counters was found counts zero and says so. `end_to_end` is the sum of the stages here."""
    seconds = {s: max(0.0, busy.get(s) or 0.0) for s in STAGES}
    notes = [
        f"no busy-time counter for stage {s}: counted as 0" for s in STAGES if busy.get(s) is None
    ]
    notes.append("shares of the agents' summed busy time per stage (batches counted once)")
    return StageShares(seconds, sum(seconds.values()), messages, notes)


def counter_values(text: str, metric: str = BUSY_METRIC) -> dict[str, float]:
    """Per `stage` label, the value of a Prometheus counter in text exposition format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != metric:
            continue
        stage = dict(_LABEL.findall(m.group(2) or "")).get("stage")
        if stage is None:
            continue
        try:
            out[stage] = out.get(stage, 0.0) + float(m.group(3))
        except ValueError:
            continue
    return out


def _add_intervals(sums: dict[str, float], tl: Timeline, start: float, end: float) -> None:
    prev_name, prev = "start", start
    for event in EVENT_ORDER:
        t = tl.times.get(event)
        if t is None:
            continue
        t = min(max(t, prev), end)
        key = f"{prev_name} -> {event}"
        sums[key] = sums.get(key, 0.0) + (t - prev)
        prev_name, prev = event, t


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def histogram_sums(
    text: str, metric: str = "zonegate_stage_duration_seconds", flow: str | None = None
) -> dict[str, tuple[float, float]]:
    """Per `stage` label, (sum, count) of a Prometheus histogram in text exposition format."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in (f"{metric}_sum", f"{metric}_count"):
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        if flow is not None and labels.get("flow") != flow:
            continue
        stage = labels.get("stage")
        if stage is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        pair = out.setdefault(stage, [0.0, 0.0])
        pair[0 if m.group(1).endswith("_sum") else 1] += value
    return {k: (v[0], v[1]) for k, v in out.items()}
