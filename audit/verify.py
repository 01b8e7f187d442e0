"""Checking an audit log end to end, and reading it for search and reports.

``verify`` streams the file once (memory does not grow with the log) and stops at the first bad
line, naming it: after one break in the chain, every later line is suspect, and the operator
needs the place where the damage starts, not a cascade of follow-on errors.

What the chain proves: no record was edited, deleted, inserted or reordered *before* the last
record. What it cannot prove on its own: that records were not cut off the end, or that the last
record was not rewritten with a recomputed hash; the signed checkpoints close that gap, and
``verify`` checks them too.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .log import AuditWriteError, LogFile, OpenLog
from .merkle import MerkleTree, leaf_hash, verify_consistency
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
    the records before the first bad one. ``problem`` is a sentence for a person, starting with
    the place (``line N`` for a one-file log, ``FILE line N`` once it has rotated, or the
    checkpoint file and line for a checkpoint that fails).
    """

    ok: bool
    records: int
    first_bad_line: int | None
    problem: str | None
    last_hash: str | None
    first_bad_seq: int | None = None
    file: str | None = None
    checkpoints: int = 0
    signatures_checked: bool = False
    failed_checkpoint: str | None = None
    root: str | None = None
    uncovered: int = 0
    files: tuple[str, ...] = ()


def verify(
    path: str | os.PathLike[str],
    *,
    public_key: Ed25519PublicKey | None = None,
    checkpoint_files: Sequence[str | os.PathLike[str]] = (),
    require_checkpoints: bool = False,
) -> VerifyResult:
    """Verify the records, the tree and the checkpoints of the log at ``path``; never raises.

    Records: every file of the log (rotated segments, then the current file) is streamed once
    and each record checked against the one before it. Tree: the RFC 6962 tree over all
    records is rebuilt. Checkpoints (``<log>.checkpoints`` and each of ``checkpoint_files``,
    e.g. the copy an operator shipped elsewhere): each must be signed by ``public_key`` (when
    given), must not cover more records than the log holds (a cut tail), must have the root the
    log has at its size (a rewrite), and must be consistent with the one before it in its file
    (an RFC 6962 consistency proof built from the log and checked against both signed roots).
    """
    from .checkpoint import Base, checkpoint_path, read_checkpoints

    # The head, the checkpoints and the retention base first, then the files: read the other
    # way round, a rotation or a checkpoint in between could make them name records newer
    # than the files opened hold (a false "cut from the end"). A prune in between (the base
    # changed) means the files opened may no longer follow the base read: read again.
    for _ in range(_ATTEMPTS):
        head = _read_head(path)
        sources = [checkpoint_path(path)] if os.path.exists(checkpoint_path(path)) else []
        sources += [os.fspath(p) for p in checkpoint_files]
        entries: list[tuple[str, list[tuple[int, Any]]]] = []
        problem = None
        for source in sources:
            try:
                entries.append((source, list(read_checkpoints(source))))
            except OSError as exc:
                problem = f"cannot read checkpoint file {source}: {exc}"
                break  # the first that cannot be read is the one reported
        try:
            base = Base.read(path)
        except ValueError as exc:
            base, problem = None, problem or str(exc)
        try:
            opened = OpenLog(path)
        except (AuditWriteError, OSError) as exc:
            return VerifyResult(False, 0, None, f"cannot read the log's files: {exc}", None)
        with opened as log:
            try:
                pruned = Base.read(path) != base
            except ValueError:
                pruned = True
            if pruned and problem is None:
                continue
            inputs = _Inputs(head, entries, base, problem)
            return _verify(path, log, inputs, public_key, require_checkpoints)
    return VerifyResult(
        False, 0, None, f"the log was pruned under each of {_ATTEMPTS} attempts to read it", None
    )


_ATTEMPTS = 10


@dataclass(frozen=True)
class _Inputs:
    """What ``verify`` reads beside the log's files, before opening them."""

    head: tuple[int, str] | str | None
    entries: list[tuple[str, list[tuple[int, Any]]]]
    base: Any  # checkpoint.Base | None (imported late: checkpoint imports this module)
    problem: str | None


def _verify(
    path: str | os.PathLike[str],
    log: list[LogFile],
    inputs: _Inputs,
    public_key: Ed25519PublicKey | None,
    require_checkpoints: bool,
) -> VerifyResult:
    from .checkpoint import key_id

    records = 0
    last_hash: str | None = None
    files = [f.name for f in log] or [os.fspath(path)]
    multi = len(files) > 1

    def bad(lineno: int | None, problem: str, **more: Any) -> VerifyResult:
        return VerifyResult(False, records, lineno, problem, last_hash, files=tuple(files), **more)

    head, entries, base = inputs.head, inputs.entries, inputs.base
    if isinstance(head, str):
        return bad(None, head)
    if inputs.problem is not None:
        return bad(None, inputs.problem)
    head_hash: str | None = None
    wanted_key = key_id(public_key) if public_key is not None else None
    tree: MerkleTree | None = MerkleTree()
    prev = GENESIS_HASH
    frontier = None
    roots: dict[int, bytes] = {}
    needed = {cp.size for _, es in entries for _, cp in es if not isinstance(cp, str)}
    if base is not None:
        if public_key is not None and (
            not hmac.compare_digest(base.key, wanted_key or "") or not base.verify(public_key)
        ):
            return bad(None, "base file (records pruned by retention) is not signed by the "
                       "audit key: the start of the log was cut (forged?)")  # fmt: skip
        tree = None
        frontier = base.tree()
        records = base.size
        prev = base.last_hash
        roots[base.size] = frontier.root()
    if not log:
        return bad(None, f"no such file: {os.fspath(path)}")
    for log_file in log:
        name, f = log_file.name, log_file.file
        where = f"{os.path.basename(name)} " if multi else ""
        lineno = 0
        while True:
            try:
                raw = f.readline(MAX_RECORD_BYTES + 1)
            except OSError as exc:
                return bad(lineno + 1, f"{where}line {lineno + 1}: read error: {exc}")
            if not raw:
                break
            lineno += 1
            seq = records + 1
            problem, this_hash = check_line(raw, seq, prev)
            if problem is not None:
                if multi:
                    problem = f"{problem} (seq {seq})"
                return bad(lineno, f"{where}line {lineno}: {problem}", first_bad_seq=seq, file=name)
            if tree is not None:
                tree.append(leaf_hash(raw[:-1]))
            elif frontier is not None:
                frontier.append(leaf_hash(raw[:-1]))
                if frontier.size in needed:
                    roots[frontier.size] = frontier.root()
            prev = this_hash
            records = seq
            last_hash = prev
            if head is not None and seq == head[0]:
                head_hash = this_hash
    if head is not None:
        seq, digest = head
        if seq > records:
            return bad(
                records + 1,
                f"line {records + 1}: the log ends at record {records} but its head file "
                f"records seq {seq}: records were cut from the end",
                first_bad_seq=records + 1,
            )
        if head_hash is None or not hmac.compare_digest(head_hash, digest):
            return bad(
                seq,
                f"line {seq}: record differs from the one its head file names (replaced?)",
                first_bad_seq=seq,
            )

    # -- checkpoints --------------------------------------------------------------------------
    def root_at(size: int) -> bytes | None:
        if tree is not None:
            return tree.root(size)
        return roots.get(size)

    checked = 0
    covered = 0
    for source, source_entries in entries:
        before = None
        for lineno, cp in source_entries:
            place = f"checkpoint {source} line {lineno}"

            def cp_bad(problem: str, place: str = place) -> VerifyResult:
                return bad(None, f"{place}: {problem}", failed_checkpoint=place)

            if isinstance(cp, str):
                return cp_bad(cp)
            if public_key is not None:
                if not hmac.compare_digest(cp.key, wanted_key or ""):
                    return cp_bad("signed by another key than the audit key given (forged?)")
                if not cp.verify(public_key):
                    return cp_bad("signature does not verify with the audit key (forged?)")
            if cp.size > records:
                return cp_bad(
                    f"signed at {cp.time} over {cp.size} records, but the log now ends at "
                    f"record {records}: records were cut from the end (or the log replaced)"
                )
            root = root_at(cp.size)
            if root is None and base is not None and cp.size < base.size:
                before = cp  # signed over records since pruned by retention: nothing to compare
                checked += 1
                continue
            if root is None or not hmac.compare_digest(root, cp.root_bytes()):
                return cp_bad(
                    f"the first {cp.size} records of the log do not have the root signed at "
                    f"{cp.time}: the log was rewritten or replaced after that checkpoint"
                )
            if before is not None:
                if cp.size < before.size:
                    return cp_bad(
                        f"covers {cp.size} records, fewer than the {before.size} of the "
                        "checkpoint before it (checkpoints reordered or forged)"
                    )
                if before.size > 0 and tree is not None:
                    proof = tree.consistency_proof(before.size, cp.size)
                    if not verify_consistency(
                        before.size, cp.size, proof.hashes, before.root_bytes(), cp.root_bytes()
                    ):
                        return cp_bad("not consistent with the checkpoint before it")
            before = cp
            checked += 1
            covered = max(covered, cp.size)
    if require_checkpoints and records and not checked:
        return bad(
            None,
            "no signed checkpoint covers this log, so a cut tail or a replaced file could not "
            "be detected",
        )
    return VerifyResult(
        True,
        records,
        None,
        None,
        last_hash,
        checkpoints=checked,
        signatures_checked=public_key is not None and checked > 0,
        root=(tree.root() if tree is not None else frontier.root() if frontier else b"").hex(),
        uncovered=records - covered,
        files=tuple(files),
    )


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


def check_line(raw: bytes, lineno: int, prev: str) -> tuple[str | None, str]:
    """(why the record expected at seq ``lineno`` is bad after hash ``prev``, or None; its hash).

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


def read_records(source: str | os.PathLike[str] | BinaryIO) -> Iterator[dict[str, Any]]:
    """Yield each record as parsed, for search and reports. Does NOT verify the chain.

    Raises ``ValueError`` naming the line for a line that is not a JSON object (including a
    torn last line), so a report never silently covers less than the file holds. ``source``
    is a path or a file already open (binary), which is read from where it stands.
    """
    with open(source, "rb") if isinstance(source, (str, os.PathLike)) else nullcontext(source) as f:
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
