"""Checking an audit log end to end, and reading it for search and reports.

``verify`` streams the file once (memory does not grow with the log) and stops at the first bad
line, naming it: after one break in the chain, every later line is suspect, and the operator
needs the place where the damage starts, not a cascade of follow-on errors.

What the chain proves: no record was edited, deleted, inserted or reordered *before* the last
record. What it cannot prove on its own: that records were not cut off the end, or that the last
record was not rewritten with a recomputed hash. ``VerifyResult.last_hash`` is what a signed
checkpoint (a later issue) will be compared against to close that gap.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .record import (
    GENESIS_HASH,
    MAX_RECORD_BYTES,
    canonical_bytes,
    check_fields,
    hashes_equal,
    record_hash,
)


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of ``verify``.

    ``records`` and ``last_hash`` describe the good prefix: on success the whole log, on failure
    the records before ``first_bad_line``. ``problem`` is a sentence for a person, starting with
    the line number.
    """

    ok: bool
    records: int
    first_bad_line: int | None
    problem: str | None
    last_hash: str | None


def verify(path: str | os.PathLike[str]) -> VerifyResult:
    """Verify the whole chain of the log at ``path``; never raises for a bad or unreadable log."""
    records = 0
    last_hash: str | None = None

    def bad(lineno: int | None, problem: str) -> VerifyResult:
        return VerifyResult(False, records, lineno, problem, last_hash)

    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the error paths need the handle
    except FileNotFoundError:
        return bad(None, f"no such file: {os.fspath(path)}")
    except OSError as exc:
        return bad(None, f"cannot read {os.fspath(path)}: {exc}")
    head = _read_head(path)
    if isinstance(head, str):
        return bad(None, head)
    head_hash: str | None = None
    with f:
        prev = GENESIS_HASH
        while True:
            try:
                raw = f.readline(MAX_RECORD_BYTES + 1)
            except OSError as exc:
                return bad(records + 1, f"line {records + 1}: read error: {exc}")
            if not raw:
                break
            lineno = records + 1
            problem, this_hash = _check_line(raw, lineno, prev)
            if problem is not None:
                return bad(lineno, f"line {lineno}: {problem}")
            prev = this_hash
            records = lineno
            last_hash = prev
            if head is not None and lineno == head[0]:
                head_hash = this_hash
    if head is not None:
        seq, digest = head
        if seq > records:
            return bad(
                records + 1,
                f"line {records + 1}: the log ends at record {records} but its head file "
                f"records seq {seq}: records were cut from the end",
            )
        if head_hash is None or not hmac.compare_digest(head_hash, digest):
            return bad(
                seq, f"line {seq}: record differs from the one its head file names (replaced?)"
            )
    return VerifyResult(True, records, None, None, last_hash)


def _read_head(path: str | os.PathLike[str]) -> tuple[int, str] | str | None:
    """(seq, hash) from the head file beside the log; None if absent; a problem string if bad."""
    name = os.fspath(path) + ".head"
    try:
        with open(name, "rb") as f:
            raw = f.read(4096)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read head file {name}: {exc}"
    try:
        obj = json.loads(raw)
        seq, digest = obj["seq"], obj["hash"]
    except (ValueError, KeyError, TypeError):
        return f"head file {name} is damaged"
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or not isinstance(digest, str):
        return f"head file {name} is damaged"
    return seq, digest


def _check_line(raw: bytes, lineno: int, prev: str) -> tuple[str | None, str]:
    """(why line ``lineno`` is bad given the previous record's hash, or None; its hash).

    The checks run in the order that names the real damage: bytes before JSON before schema,
    then position (seq), then the record's own hash, and only then the link to its neighbour.
    """
    if not raw.endswith(b"\n"):
        if len(raw) > MAX_RECORD_BYTES:
            return f"record longer than {MAX_RECORD_BYTES} bytes", ""
        return "incomplete last record (truncated write)", ""
    body = raw[:-1]
    try:
        obj = json.loads(body)
    except ValueError as exc:
        return f"not valid JSON ({exc})", ""
    if not isinstance(obj, dict):
        return "not a JSON object", ""
    try:
        canonical = canonical_bytes(obj)
    except ValueError:
        canonical = b""
    if canonical != body:
        return "not in canonical form (re-serialising it gives other bytes; edited by hand?)", ""
    if problem := check_fields(obj):
        return problem, ""
    seq = obj["seq"]
    if seq != lineno:
        return (
            f"seq {seq}, expected {lineno} "
            "(a record was deleted, inserted or reordered, or seq was edited)"
        ), ""
    if not hashes_equal(record_hash(obj), obj["hash"]):
        return "record hash does not match its contents (edited?)", ""
    if not hashes_equal(obj["prev"], prev):
        if lineno == 1:
            return "prev of the first record is not the genesis value (64 zeros)", ""
        return (
            f"prev does not match line {lineno - 1}'s hash "
            "(a record was deleted, inserted or reordered)"
        ), ""
    return None, obj["hash"]


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield each record as parsed, for search and reports. Does NOT verify the chain.

    Raises ``ValueError`` naming the line for a line that is not a JSON object (including a
    torn last line), so a report never silently covers less than the file holds.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                raise ValueError(f"line {lineno}: incomplete last record (truncated write)")
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"line {lineno}: not valid JSON ({exc})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"line {lineno}: not a JSON object")
            yield obj
