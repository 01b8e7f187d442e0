"""The auditor's tools over one or more logs: search, the story of one message, export,
inclusion proofs a third party can check, and sender/receiver reconciliation.

Read-only by design (the auditor role changes nothing): every function reads the log files and
returns data; the command line only formats it. Reads go through ``OpenLog`` so rotated
segments are covered as one log.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .checkpoint import Checkpoint, checkpoint_path, key_id, read_checkpoints
from .log import OpenLog
from .merkle import MerkleTree, leaf_hash, verify_inclusion
from .syslog import record_rfc5424
from .verify import VerifyResult, read_records, verify

__all__ = [
    "Filter",
    "Reconciliation",
    "check_proof",
    "export_lines",
    "iter_log",
    "prove",
    "reconcile",
    "search",
    "story",
]


def iter_log(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every record of a log, all files in order. Does not verify (``verify`` does)."""
    with OpenLog(path) as files:
        for log_file in files:
            yield from read_records(log_file.file)


@dataclass(frozen=True)
class Filter:
    """What an auditor searches by; every field given must match (None matches anything).

    ``since``/``until`` are RFC 3339 prefixes compared as text: record times are fixed-width
    UTC, so ``--since 2026-11-25`` and ``--until 2026-11-25T10`` mean what they say.
    """

    msg_id: str | None = None
    flow: str | None = None
    seq_from: int | None = None
    seq_to: int | None = None
    since: str | None = None
    until: str | None = None
    person: str | None = None
    event: str | None = None
    outcome: str | None = None
    sha256: str | None = None
    gateway: str | None = None

    def matches(self, r: Mapping[str, Any]) -> bool:
        message = r.get("message") or {}
        who = r.get("who") or {}
        checks = (
            (self.msg_id, message.get("id")),
            (self.flow, message.get("flow")),
            (self.person, who.get("person")),
            (self.event, r.get("event")),
            (self.outcome, r.get("outcome")),
            (self.sha256, message.get("sha256")),
            (self.gateway, r.get("gateway")),
        )
        if any(want is not None and want != got for want, got in checks):
            return False
        seq = message.get("seq")
        if self.seq_from is not None and not (isinstance(seq, int) and seq >= self.seq_from):
            return False
        if self.seq_to is not None and not (isinstance(seq, int) and seq <= self.seq_to):
            return False
        time = r.get("time", "")
        if self.since is not None and time < self.since:
            return False
        # ``until`` is inclusive of everything the prefix names (until 2026-11-25 = that day).
        return not (self.until is not None and time[: len(self.until)] > self.until)


def search(logs: Sequence[str | os.PathLike[str]], flt: Filter) -> Iterator[dict[str, Any]]:
    for path in logs:
        for r in iter_log(path):
            if flt.matches(r):
                yield r


def story(logs: Sequence[str | os.PathLike[str]], msg_id: str) -> list[dict[str, Any]]:
    """Every record of one message across the given logs (both gateways), in time order.

    Ties (same microsecond on two hosts) keep log order, so one gateway's own order is never
    shuffled; clocks of two gateways are only as good as their NTP, which the output shows by
    naming the gateway of each step.
    """
    found = [
        (r["time"], i, r["seq"], r)
        for i, path in enumerate(logs)
        for r in iter_log(path)
        if (r.get("message") or {}).get("id") == msg_id
    ]
    found.sort(key=lambda t: (t[0], t[1], t[2]))
    return [t[3] for t in found]


def export_lines(records: Iterable[Mapping[str, Any]], fmt: str) -> Iterator[str]:
    """Each record as one line (no newline) in ``fmt``: ``rfc5424`` or ``jsonl``."""
    for r in records:
        if fmt == "rfc5424":
            yield record_rfc5424(r)
        elif fmt == "jsonl":
            yield json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        else:
            raise ValueError(f"unknown export format {fmt!r}")


def _latest_checkpoint(log: str | os.PathLike[str]) -> Checkpoint | None:
    path = checkpoint_path(log)
    if not os.path.exists(path):
        return None
    best = None
    for _, cp in read_checkpoints(path):
        if isinstance(cp, Checkpoint) and (best is None or cp.size >= best.size):
            best = cp
    return best


def prove(log: str | os.PathLike[str], msg_id: str) -> list[dict[str, Any]]:
    """Inclusion proofs for every record of ``msg_id``, each against the newest checkpoint
    that covers it (records after the last checkpoint are proved against the current tree and
    marked unsigned: ``checkpoint`` is null).

    Each bundle carries the record's exact line, so a third party needs only the bundle, the
    audit public key and ``check_proof`` (RFC 9162 arithmetic), not the log.
    """
    lines: list[bytes] = []
    tree = MerkleTree()
    wanted: list[int] = []
    # The checkpoint before the files, so that the files hold at least what it signs.
    cp = _latest_checkpoint(log)
    with OpenLog(log) as files:
        for log_file in files:
            for raw in log_file.file:
                if not raw.endswith(b"\n"):
                    break
                tree.append(leaf_hash(raw[:-1]))
                obj = json.loads(raw)
                if (obj.get("message") or {}).get("id") == msg_id:
                    wanted.append(tree.size - 1)
                    lines.append(raw[:-1])
    if cp is not None and cp.size > tree.size:
        cp = None  # the log is shorter than its checkpoint: verify will say why
    out = []
    for index, line in zip(wanted, lines, strict=True):
        signed = cp is not None and index < cp.size
        size = cp.size if signed and cp is not None else tree.size
        proof = tree.inclusion_proof(index, size)
        out.append(
            {
                "record": line.decode("utf-8"),
                "leaf_index": index,
                "tree_size": size,
                "root": tree.root(size).hex(),
                "proof": [h.hex() for h in proof.hashes],
                "checkpoint": cp.to_dict() if signed and cp is not None else None,
            }
        )
    return out


def check_proof(bundle: Mapping[str, Any], public_key: Ed25519PublicKey | None) -> str | None:
    """Why a proof bundle does not hold, or None if it does; what a third party runs."""
    try:
        leaf = leaf_hash(bundle["record"].encode("utf-8"))
        proof = [bytes.fromhex(h) for h in bundle["proof"]]
        root = bytes.fromhex(bundle["root"])
        index, size = int(bundle["leaf_index"]), int(bundle["tree_size"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed proof bundle ({exc})"
    if not verify_inclusion(leaf, index, size, proof, root):
        return "the inclusion proof does not lead from the record to the root"
    raw_cp = bundle.get("checkpoint")
    if raw_cp is None:
        return "no signed checkpoint covers this record yet" if public_key else None
    try:
        cp = Checkpoint.from_dict(dict(raw_cp))
    except ValueError as exc:
        return f"malformed checkpoint ({exc})"
    if cp.size != size or not hmac.compare_digest(cp.root_bytes(), root):
        return "the proof is not against the checkpoint it carries"
    if public_key is not None and (
        not hmac.compare_digest(cp.key, key_id(public_key)) or not cp.verify(public_key)
    ):
        return "the checkpoint is not signed by the audit key"
    return None


# -- reconciliation ----------------------------------------------------------------------------

_SENDER_EVENTS = ("sealed", "sent", "resent")


@dataclass(frozen=True)
class Reconciliation:
    """The result of ``reconcile``: per flow counts, and every message not delivered as sealed.

    ``missing`` entries name where the message stopped (its last event on either side).
    ``logs`` holds each log's verification: a reconciliation of a log that does not verify
    proves nothing, so ``ok`` needs both intact.
    """

    ok: bool
    flows: Mapping[str, Mapping[str, int]]
    missing: tuple[Mapping[str, Any], ...]
    logs: tuple[Mapping[str, Any], ...] = field(default=())


def _vr(path: str | os.PathLike[str], r: VerifyResult) -> dict[str, Any]:
    return {"log": os.fspath(path), "ok": r.ok, "records": r.records, "problem": r.problem}


def reconcile(
    sender_log: str | os.PathLike[str],
    receiver_log: str | os.PathLike[str],
    *,
    sender_key: Ed25519PublicKey | None = None,
    receiver_key: Ed25519PublicKey | None = None,
) -> Reconciliation:
    """Prove, message by message, that what the sender sealed was delivered unchanged.

    A message is delivered when the receiver's log has a ``delivered`` record with its id and
    the same SHA-256 the sender sealed. Everything else is listed with the place it stopped.
    """
    checks = (
        _vr(sender_log, verify(sender_log, public_key=sender_key)),
        _vr(receiver_log, verify(receiver_log, public_key=receiver_key)),
    )
    sealed: dict[str, dict[str, Any]] = {}
    sender_last: dict[str, dict[str, Any]] = {}
    for r in iter_log(sender_log):
        m = r.get("message") or {}
        mid = m.get("id")
        if not mid:
            continue
        if r["event"] == "sealed" and r["outcome"] == "ok":
            sealed.setdefault(mid, dict(m))
        if mid in sealed:
            sender_last[mid] = r
    receiver_last: dict[str, dict[str, Any]] = {}
    delivered: dict[str, str | None] = {}
    for r in iter_log(receiver_log):
        m = r.get("message") or {}
        mid = m.get("id")
        if not mid or mid not in sealed:
            continue
        receiver_last[mid] = r
        if r["event"] == "delivered" and r["outcome"] == "ok":
            delivered[mid] = m.get("sha256")
    flows: dict[str, dict[str, int]] = {}
    missing = []
    for mid, m in sealed.items():
        counts = flows.setdefault(str(m.get("flow")), {"sealed": 0, "delivered": 0, "missing": 0})
        counts["sealed"] += 1
        if mid in delivered and delivered[mid] == m.get("sha256"):
            counts["delivered"] += 1
            continue
        counts["missing"] += 1
        if mid in delivered:
            where = f"delivered with another SHA-256 ({delivered[mid]})"
        elif mid in receiver_last:
            last = receiver_last[mid]
            where = f"receiver: last {last['event']} ({last['outcome']})"
            if last.get("reason"):
                where += f": {last['reason']}"
        else:
            last = sender_last[mid]
            where = f"sender: last {last['event']}, never recorded by the receiver"
        missing.append(
            {
                "id": mid,
                "flow": m.get("flow"),
                "seq": m.get("seq"),
                "sha256": m.get("sha256"),
                "name": m.get("name"),
                "stopped": where,
            }
        )
    missing.sort(key=lambda x: (str(x["flow"]), x["seq"] if isinstance(x["seq"], int) else 0))
    ok = not missing and all(c["ok"] for c in checks)
    return Reconciliation(ok, flows, tuple(missing), checks)
