"""Appending to a gateway's audit log, safely from several processes at once.

The ingest, sender and receiver agents of one gateway share one log file. Each append takes an
exclusive ``flock`` on the file, reads only the last record (scanning back from the end, so an
append costs the same on a log of ten lines or ten million), checks it, writes one line, fsyncs,
and unlocks. The record is on disk before ``append`` returns: a caller that writes the audit
record *before* changing state can never show a state change that the log does not.

``append_many`` is the group commit: the records of a whole batch of messages are chained,
written with one ``write`` and made durable with one ``fsync``, under one lock. It is all or
nothing for the caller: either every record of the batch is on disk when it returns, or it raises
and the caller changes no state for any of them (a torn tail is cut back, as for one record). So
"the audit record first" still holds for every message of a batch: the agents append a batch's
records, and only then move any of its messages.

Any failure raises ``AuditWriteError`` and nothing is retried or repaired here: the caller stops
the transfer (fail closed). A damaged tail (a torn last line, a last record that does not hash)
is left exactly as found for ``zonegate audit verify`` and an operator to look at.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, BinaryIO

from .record import (
    EVENTS,
    GENESIS_HASH,
    MAX_EXTRA_FIELDS,
    MAX_RECORD_BYTES,
    OUTCOMES,
    AuditRecord,
    canonical_bytes,
    check_extra_name,
    check_fields,
    hashes_equal,
    now,
    record_hash,
)

# Read the tail in blocks of this size while looking for the start of the last line.
_TAIL_BLOCK = 8192

# O_RDWR, not O_WRONLY: the last record is read through the same descriptor that holds the
# lock. O_NOFOLLOW: a symlink planted at the log path must not redirect audit records.
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW


class AuditWriteError(Exception):
    """The audit record could not be made durable; the caller must stop what it was doing."""


@dataclass(frozen=True)
class AuditEntry:
    """One record to append, before the log gives it its place (seq, time, prev, hash)."""

    event: str
    message: Mapping[str, str | int] | None = None
    outcome: str = "ok"
    reason: str | None = None
    who: Mapping[str, str] | None = None
    extra: Mapping[str, str | int | bool] = field(default_factory=dict)


class AuditLog:
    """One agent's handle on its gateway's audit log.

    The file is opened for each append rather than held open, so that a log that is replaced or
    removed under a running agent is noticed (and refused) instead of being written to a deleted
    inode. Safe to share between threads; each process makes its own.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        gateway: str,
        agent: str,
        zone: str | None = None,
        rotate_bytes: int | None = None,
        rotate_daily: bool = False,
    ) -> None:
        for name, value in (("gateway", gateway), ("agent", agent)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        if zone is not None and (not isinstance(zone, str) or not zone):
            raise ValueError("zone must be a non-empty string or None")
        self.path = os.fspath(path)
        self.gateway = gateway
        self.agent = agent
        self.zone = zone
        self._lock = threading.Lock()
        self._closed = False
        # The highest seq this handle has written: the log must never again end below it.
        self._last_written: int | None = None
        # Rotation: the current file is renamed to a segment ``<path>.<first seq>`` once it
        # would grow past ``rotate_bytes`` or a record falls on a later UTC day than its first.
        self.rotate_bytes = rotate_bytes
        self.rotate_daily = rotate_daily
        self._first_day: tuple[int, str] | None = None  # (inode, day of its first record)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Refuse further appends. No descriptor is held between appends, so nothing to flush."""
        with self._lock:
            self._closed = True

    def append(
        self,
        event: str,
        *,
        message: Mapping[str, str | int] | None = None,
        outcome: str = "ok",
        reason: str | None = None,
        who: Mapping[str, str] | None = None,
        **extra: str | int | bool,
    ) -> AuditRecord:
        """Append one record and return it once it is on disk.

        ``ValueError`` for a malformed call (unknown event or outcome, a field outside the
        schema, an extra field whose name looks like key material): those are bugs to fix, not
        conditions to handle. ``AuditWriteError`` for anything that stops the record reaching
        the disk.
        """
        entry = AuditEntry(event, message, outcome, reason, who, extra)
        return self.append_many([entry])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append a batch of records with one write and one fsync; return them once on disk.

        Every entry is validated before any I/O, so one malformed entry (``ValueError``) refuses
        the whole batch and writes nothing. The records get consecutive seqs and one shared
        time (they became durable at the same instant). ``AuditWriteError`` as for ``append``:
        then none of them is in the log.
        """
        if not entries:
            return []
        batch = [self._validated(e) for e in entries]
        with self._lock:
            if self._closed:
                raise AuditWriteError(f"audit log {self.path} is closed")
            try:
                return self._append_locked(batch)
            except AuditWriteError:
                raise
            except (OSError, ValueError) as exc:
                raise AuditWriteError(f"cannot write audit log {self.path}: {exc}") from exc

    def _validated(self, entry: AuditEntry) -> dict[str, Any]:
        fields = self._build(
            entry.event,
            message=entry.message,
            outcome=entry.outcome,
            reason=entry.reason,
            who=entry.who,
        )
        extra = entry.extra
        for name in extra:
            if problem := check_extra_name(name):
                raise ValueError(problem)
        if len(extra) > MAX_EXTRA_FIELDS:
            raise ValueError(f"{len(extra)} extra fields, at most {MAX_EXTRA_FIELDS} allowed")
        if extra:
            fields["extra"] = dict(extra)
        # Validate everything except the chain now, before any I/O, with placeholder chain
        # values: a bad call must fail the same way whatever state the file is in.
        probe = {**fields, "seq": 1, "time": _PROBE_TIME, "prev": GENESIS_HASH}
        if problem := check_fields(probe, require_hash=False):
            raise ValueError(problem)
        # Size check with placeholders of the final width (seq can only grow by a few digits);
        # encoded only when a cheap bound cannot already rule out a record that long.
        if (
            _size_bound(probe) + 100 > MAX_RECORD_BYTES
            and len(canonical_bytes(probe)) + 100 > MAX_RECORD_BYTES
        ):
            raise ValueError(f"record longer than {MAX_RECORD_BYTES} bytes")
        return fields

    def _build(
        self,
        event: str,
        *,
        message: Mapping[str, str | int] | None,
        outcome: str,
        reason: str | None,
        who: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(sorted(OUTCOMES))}")
        return {
            "gateway": self.gateway,
            "agent": self.agent,
            "zone": self.zone,
            "event": event,
            # An empty mapping is written as null: one spelling for "nothing to say".
            "message": dict(message) if message else None,
            "outcome": outcome,
            "reason": reason,
            "who": dict(who) if who else None,
        }

    def _append_locked(self, batch: list[dict[str, Any]]) -> list[AuditRecord]:
        fd = self._open_current()
        try:
            try:
                last_seq, last_hash = self._read_last(fd)
                if self._last_written is not None and last_seq < self._last_written:
                    raise AuditWriteError(
                        f"audit log {self.path} ends at seq {last_seq} but this agent already "
                        f"wrote seq {self._last_written}: it was truncated or replaced; "
                        "run `zonegate audit verify`"
                    )
                stamp = now()
                records = []
                lines = []
                for fields in batch:
                    last_seq += 1
                    record = {**fields, "seq": last_seq, "time": stamp, "prev": last_hash}
                    record["hash"] = last_hash = record_hash(record)
                    records.append(record)
                    lines.append(canonical_bytes(record) + b"\n")
                data = b"".join(lines)
                if self._should_rotate(fd, len(data), stamp):
                    self._rotate(fd, data)
                else:
                    _append_or_roll_back(fd, data)
                self._last_written = last_seq
                write_head(self.path, last_seq, last_hash)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return [_to_record(r) for r in records]

    def _open_current(self) -> int:
        """Open and lock the file now at ``path``.

        Another agent may rotate the file while this one waits for the lock; the lock then
        belongs to a file that is now a segment, so look again until the locked file is the
        one the path names.
        """
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                here = os.fstat(fd)
                try:
                    now_at_path = os.stat(self.path, follow_symlinks=False)
                except FileNotFoundError:
                    now_at_path = None
                if now_at_path is not None and os.path.samestat(here, now_at_path):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _should_rotate(self, fd: int, length: int, time: str) -> bool:
        info = os.fstat(fd)
        if info.st_size == 0:
            return False
        if self.rotate_bytes is not None and info.st_size + length > self.rotate_bytes:
            return True
        if self.rotate_daily:
            if self._first_day is None or self._first_day[0] != info.st_ino:
                first = _first_record(fd)
                self._first_day = (info.st_ino, first["time"][:10])
            return self._first_day[1] != time[:10]
        return False

    def _rotate(self, fd: int, line: bytes) -> None:
        """Start a new file with ``line`` (one or more records), keeping the old one as a
        segment, atomically.

        The new file is complete (its first records written and fsynced) before it replaces the
        old one, and the old one gets its segment name by a hard link first, so at every
        instant the path names a valid log and no record is ever outside a named file. A crash
        between the link and the replace leaves the segment and the current file as one inode,
        which ``log_files`` recognises and the next rotation finishes.
        """
        first = _first_record(fd)
        segment = segment_path(self.path, first["seq"])
        tmp = f"{self.path}.{os.getpid()}.rotating"
        new = os.open(tmp, _OPEN_FLAGS | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(new, line)
            os.fsync(new)
        finally:
            os.close(new)
        try:
            os.link(self.path, segment)
        except FileExistsError:
            if not os.path.samefile(self.path, segment):
                os.unlink(tmp)
                raise AuditWriteError(
                    f"cannot rotate {self.path}: {segment} exists and is another file"
                ) from None
        os.chmod(segment, 0o400)
        os.replace(tmp, self.path)
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def _open(self) -> int:
        """Open the log; create it (0600, directory fsynced) only if this handle never wrote."""
        try:
            return os.open(self.path, _OPEN_FLAGS)
        except FileNotFoundError:
            if self._last_written is not None:
                raise AuditWriteError(
                    f"audit log {self.path} has disappeared after this agent wrote seq "
                    f"{self._last_written}; not starting a new chain silently"
                ) from None
            if segments(self.path):
                raise AuditWriteError(
                    f"audit log {self.path} is missing but rotated segments of it exist; "
                    "not starting a new chain silently; run `zonegate audit verify`"
                ) from None
        try:
            fd = os.open(self.path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Another agent created it between our two opens; use theirs.
            return os.open(self.path, _OPEN_FLAGS)
        try:
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _read_last(self, fd: int) -> tuple[int, str]:
        """Seq and hash of the last record, reading only the file's tail."""
        size = os.fstat(fd).st_size
        if size == 0:
            segs = segments(self.path)
            if segs:
                # Emptied after a rotation: the chain continues from the newest segment.
                seg_fd = os.open(segs[-1][1], os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    return self._read_last(seg_fd)
                finally:
                    os.close(seg_fd)
            return 0, GENESIS_HASH
        if os.pread(fd, 1, size - 1) != b"\n":
            raise AuditWriteError(
                f"audit log ends with an incomplete record at line {_count_lines(fd) + 1}; "
                "run `zonegate audit verify`"
            )
        # Scan back from just before the final newline for the newline that starts the line.
        end = size - 1
        pos = end
        chunks: list[bytes] = []
        while pos > 0:
            start = max(0, pos - _TAIL_BLOCK)
            block = os.pread(fd, pos - start, start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                chunks.append(block[cut + 1 :])
                break
            chunks.append(block)
            pos = start
            if end - pos > MAX_RECORD_BYTES:
                raise AuditWriteError(_damaged(self.path, "the last record is too long"))
        last = b"".join(reversed(chunks))
        try:
            obj = json.loads(last)
        except ValueError as exc:
            raise AuditWriteError(
                _damaged(self.path, f"the last record is not JSON ({exc})")
            ) from exc
        if not isinstance(obj, dict) or (problem := check_fields(obj)):
            raise AuditWriteError(_damaged(self.path, f"the last record is malformed ({problem})"))
        if canonical_bytes(obj) != last or not hashes_equal(record_hash(obj), obj["hash"]):
            raise AuditWriteError(_damaged(self.path, "the last record does not hash"))
        return obj["seq"], obj["hash"]


#: A valid record time of the final width, for validating a record before it has one.
_PROBE_TIME = "2000-01-01T00:00:00.000000Z"


def _size_bound(record: Mapping[str, Any]) -> int:
    """An upper bound of a (validated) record's canonical JSON length, far cheaper than
    encoding it: the record is plain dicts of str, int, bool and None, whose repr spells every
    key, value and piece of punctuation at least once, and no character of it takes more than
    6 bytes in the JSON (``\\u001f``; a non-ASCII one at most 4 in UTF-8). A walk over the
    fields in Python cost ingest a tenth of its time in a flood."""
    return 6 * len(repr(record)) + 64


def segment_path(path: str | os.PathLike[str], first_seq: int) -> str:
    """The name a rotated file gets: the log's name and the seq of its first record."""
    return f"{os.fspath(path)}.{first_seq:012d}"


def segments(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """(first seq, path) of each rotated segment of the log at ``path``, oldest first.

    A segment that is the same file as the current log (a crash during rotation) is left out:
    its records are read once, from the current file.
    """
    base = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(base))
    prefix = os.path.basename(base) + "."
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        tail = name[len(prefix) :]
        if name.startswith(prefix) and len(tail) == 12 and tail.isdigit():
            full = os.path.join(directory, name)
            try:
                if os.path.exists(base) and os.path.samefile(full, base):
                    continue
            except OSError:
                continue
            found.append((int(tail), full))
    return sorted(found)


def log_files(path: str | os.PathLike[str]) -> list[str]:
    """Every file of the log in order: the segments, oldest first, then the current file."""
    files = [p for _, p in segments(path)]
    if os.path.exists(path) or not files:
        files.append(os.fspath(path))
    return files


@dataclass
class LogFile:
    """One file of a log, open. ``first`` is the seq of its first record (None: the current
    file is empty, or its first line is not yet whole or does not parse)."""

    first: int | None
    name: str
    file: BinaryIO


class OpenLog:
    """Every file of a log holding records from ``from_seq`` on, opened as one consistent set.

    Listing the segments and then opening the current file by name races with a rotation in
    another agent: the name can reach a newer file than the listing saw, so that the segment
    in between is missed or read at the wrong offset (a reader then reports damage that is not
    there). The segments are listed before and after the files are opened; when both listings
    agree, no rotation finished in between, and the open files are the log at one instant.
    Segments never change once named, so holding them open is enough; the current file only
    grows.
    """

    _ATTEMPTS = 100

    def __init__(self, path: str | os.PathLike[str], from_seq: int = 1) -> None:
        self.path = os.fspath(path)
        self.files: list[LogFile] = []
        for _ in range(self._ATTEMPTS):
            if self._try_open(from_seq):
                return
        raise AuditWriteError(
            f"audit log {self.path} rotated under every one of {self._ATTEMPTS} attempts to read it"
        )

    def _try_open(self, from_seq: int) -> bool:
        before = segments(self.path)
        start = 0
        for i, (first, _) in enumerate(before):
            if first <= from_seq:
                start = i
        opened: list[LogFile] = []
        try:
            for first, name in before[start:]:
                opened.append(LogFile(first, name, open(name, "rb")))  # noqa: SIM115 - close()
            try:
                current = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            except FileNotFoundError:
                pass
            else:
                opened.append(LogFile(_first_seq_of(current), self.path, current))
        except FileNotFoundError:
            pass  # a segment pruned between the listing and the open: list again
        else:
            if segments(self.path) == before:
                self.files = opened
                return True
        for f in opened:
            f.file.close()
        return False

    def __enter__(self) -> list[LogFile]:
        return self.files

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self.files:
            f.file.close()
        self.files = []


def _first_seq_of(f: BinaryIO) -> int | None:
    """The seq of the first record of an open log file, leaving it at offset 0."""
    raw = f.readline(MAX_RECORD_BYTES + 1)
    f.seek(0)
    if not raw.endswith(b"\n"):
        return None
    try:
        seq = json.loads(raw)["seq"]
    except (ValueError, KeyError, TypeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _first_record(fd: int) -> dict[str, Any]:
    """The first record of a non-empty log file (its seq names the segment, its day rotates)."""
    raw = os.pread(fd, MAX_RECORD_BYTES + 1, 0)
    end = raw.find(b"\n")
    try:
        obj = json.loads(raw[:end])
        if end < 0 or not isinstance(obj, dict) or check_fields(obj):
            raise ValueError("malformed")
    except ValueError:
        raise AuditWriteError("the first record of the audit log is damaged") from None
    return obj


def _damaged(path: str, what: str) -> str:
    return f"audit log {path} is damaged: {what}; run `zonegate audit verify`"


def _to_record(obj: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        seq=obj["seq"],
        time=obj["time"],
        gateway=obj["gateway"],
        agent=obj["agent"],
        zone=obj["zone"],
        event=obj["event"],
        message=None if obj["message"] is None else MappingProxyType(obj["message"]),
        outcome=obj["outcome"],
        reason=obj["reason"],
        who=None if obj["who"] is None else MappingProxyType(obj["who"]),
        prev=obj["prev"],
        hash=obj["hash"],
        extra=MappingProxyType(obj.get("extra", {})),
    )


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte; a short write is continued, a zero-byte write is an error."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def _fsync_dir(path: str) -> None:
    """Make a new directory entry durable: without it a crash can lose the whole file."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _count_lines(fd: int) -> int:
    """Complete lines in the file. Reads it all, but only on the error path."""
    count = 0
    offset = 0
    while block := os.pread(fd, 1 << 20, offset):
        count += block.count(b"\n")
        offset += len(block)
    return count


def head_path(path: str | os.PathLike[str]) -> str:
    return os.fspath(path) + ".head"


def write_head(path: str | os.PathLike[str], seq: int, digest: str) -> None:
    """Note the newest record's seq and hash beside the log, replaced atomically.

    A hash chain alone cannot show that records were cut from its end: the shorter chain is
    still valid. The head file makes that visible to ``verify`` (a log that ends before the
    head's seq, or whose record at that seq has another hash). It is a hint, not a proof: it is
    not fsynced (after a power cut it may lag the log, which verify accepts) and whoever can
    rewrite the log can rewrite it too; signed checkpoints kept elsewhere are the proof.
    """
    final = head_path(path)
    tmp = f"{final}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, json.dumps({"seq": seq, "hash": digest}).encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, final)


def _append_or_roll_back(fd: int, line: bytes) -> None:
    """Append and fsync whole lines; on failure cut the file back so no partial record remains.

    A full disk can accept half a line: left there, it would make every later append (and
    verify) fail on a torn record that was never acknowledged. Cutting it off restores the log
    exactly as it was before this append, which then raises for the caller to fail closed.
    """
    size = os.fstat(fd).st_size
    try:
        _write_all(fd, line)
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            pass  # the caller fails closed either way; verify will name what is left
        raise
