"""Signed checkpoints: (tree size, Merkle root, time) signed by the gateway's audit key.

Why: a hash chain (and the Merkle tree over it) shows that nothing *inside* the log changed, but
not that its end was not cut off, or that the whole file was not replaced by a consistent
forgery. A checkpoint signed by a key the forger does not hold, and copied to places the forger
cannot reach (a second file an operator ships elsewhere, syslog), pins the log as it was at that
moment: a later log must contain it unchanged (same root at that size), and must not be shorter.

Checkpoints are JSON lines in ``<log>.checkpoints``, written under an exclusive lock by whichever
agent of the gateway makes one, so their sizes never go down in the file. The signature covers
a domain tag and the canonical JSON of every field but ``sig``.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .log import AuditWriteError, OpenLog, _fsync_dir, _write_all, segments
from .merkle import TreeFrontier, leaf_hash
from .record import GENESIS_HASH, MAX_RECORD_BYTES, canonical_bytes, now
from .syslog import SyslogSender, checkpoint_rfc5424
from .verify import check_line

__all__ = [
    "CHECKPOINT_DOMAIN",
    "Base",
    "Checkpoint",
    "Checkpointer",
    "LogTreeReader",
    "checkpoint_path",
    "key_id",
    "read_checkpoints",
]

CHECKPOINT_DOMAIN = b"zonegate/audit/checkpoint/v1\n"
BASE_DOMAIN = b"zonegate/audit/base/v1\n"
_FIELDS = ("gateway", "size", "root", "time", "key", "sig")


def checkpoint_path(log: str | os.PathLike[str]) -> str:
    """Where a log's own checkpoints are kept: beside it."""
    return os.fspath(log) + ".checkpoints"


def key_id(public_key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw public key: names the key, says nothing secret."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """One signed tree head. ``root`` is hex; ``sig`` is base64 Ed25519 over ``signed_bytes``."""

    gateway: str
    size: int
    root: str
    time: str
    key: str
    sig: str

    def signed_bytes(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "sig"}
        return CHECKPOINT_DOMAIN + canonical_bytes(body)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> bytes:
        return canonical_bytes(self.to_dict()) + b"\n"

    def root_bytes(self) -> bytes:
        return bytes.fromhex(self.root)

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        """True when the signature is this key's over exactly these fields."""
        try:
            public_key.verify(base64.b64decode(self.sig, validate=True), self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def sign(
        cls, key: Ed25519PrivateKey, gateway: str, size: int, root: bytes, time: str | None = None
    ) -> Checkpoint:
        unsigned = cls(gateway, size, root.hex(), time or now(), key_id(key.public_key()), "")
        sig = base64.b64encode(key.sign(unsigned.signed_bytes())).decode("ascii")
        return cls(gateway, size, root.hex(), unsigned.time, unsigned.key, sig)

    @classmethod
    def from_dict(cls, obj: object) -> Checkpoint:
        """Parse one checkpoint; ``ValueError`` saying what is wrong with its shape."""
        if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
            raise ValueError(f"a checkpoint has exactly the fields {', '.join(_FIELDS)}")
        size = obj["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("size must be a non-negative integer")
        for name in ("gateway", "root", "time", "key", "sig"):
            if not isinstance(obj[name], str):
                raise ValueError(f"{name} must be a string")
        if len(obj["root"]) != 64 or any(c not in "0123456789abcdef" for c in obj["root"]):
            raise ValueError("root must be 64 lowercase hex digits")
        return cls(**obj)


def base_path(log: str | os.PathLike[str]) -> str:
    """Where the signed state of pruned records is kept: beside the log."""
    return os.fspath(log) + ".base"


@dataclass(frozen=True)
class Base:
    """What remains of records removed by retention: enough to go on verifying without them.

    ``size`` records were pruned; ``last_hash`` is the hash of the last of them (the ``prev``
    of the first record kept) and ``frontier`` the right edge of the Merkle tree over them
    ((height, hex) pairs), so roots of later checkpoints can still be recomputed. Signed by the
    audit key, because without it anyone could "prune" the start of a log by writing one.
    """

    gateway: str
    size: int
    last_hash: str
    frontier: tuple[tuple[int, str], ...]
    time: str
    key: str
    sig: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frontier"] = [list(x) for x in self.frontier]
        return d

    def signed_bytes(self) -> bytes:
        return BASE_DOMAIN + canonical_bytes(
            {k: v for k, v in self.to_dict().items() if k != "sig"}
        )

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(base64.b64decode(self.sig, validate=True), self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True

    def tree(self) -> TreeFrontier:
        return TreeFrontier.from_stack(self.size, [(h, bytes.fromhex(d)) for h, d in self.frontier])

    @classmethod
    def read(cls, log: str | os.PathLike[str]) -> Base | None:
        """The base of a log, None if it has none; ``ValueError`` if the file is damaged."""
        try:
            with open(base_path(log), "rb") as f:
                obj = json.loads(f.read(1 << 20))
        except FileNotFoundError:
            return None
        try:
            base = cls(
                gateway=str(obj["gateway"]),
                size=int(obj["size"]),
                last_hash=str(obj["last_hash"]),
                frontier=tuple((int(h), str(d)) for h, d in obj["frontier"]),
                time=str(obj["time"]),
                key=str(obj["key"]),
                sig=str(obj["sig"]),
            )
            base.tree()
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"base file {base_path(log)} is damaged ({exc})") from None
        return base


def read_checkpoints(path: str | os.PathLike[str]) -> Iterator[tuple[int, Checkpoint | str]]:
    """(line number, checkpoint or why the line is not one) for each line of a checkpoint file."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                yield lineno, "incomplete line (truncated write)"
                continue
            try:
                obj = json.loads(raw)
                yield lineno, Checkpoint.from_dict(obj)
            except ValueError as exc:
                yield lineno, f"not a checkpoint ({exc})"


class LogTreeReader:
    """Follows a log across its files and keeps the Merkle frontier of everything read so far.

    Each ``update`` reads only the records appended since the last one, checking each record
    and its link to the one before (a checkpoint must never vouch for a damaged log).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.frontier = TreeFrontier()
        self.last_hash = GENESIS_HASH
        self._cursor: tuple[int, int] | None = None  # (first seq of the file, byte offset)

    @property
    def size(self) -> int:
        return self.frontier.size

    def update(self) -> None:
        """Read new records; ``AuditWriteError`` naming the seq if a record does not check."""
        if self.frontier.size == 0:
            try:
                base = Base.read(self.path)
            except ValueError as exc:
                raise AuditWriteError(str(exc)) from None
            if base is not None:
                self.frontier = base.tree()
                self.last_hash = base.last_hash
        with OpenLog(self.path, from_seq=self.frontier.size + 1) as files:
            for log_file in files:
                if log_file.first is not None:
                    self._read(log_file.first, log_file.file)

    def _read(self, first: int, f: BinaryIO) -> None:
        """Take in the records of one file (first record ``first``) past those already read."""
        next_seq = self.frontier.size + 1
        offset = self._cursor[1] if self._cursor and self._cursor[0] == first else 0
        if offset == 0 and first > next_seq:
            raise AuditWriteError(
                f"audit log {self.path}: records {next_seq}..{first - 1} are missing"
            )
        f.seek(offset)
        seq = first + (0 if offset == 0 else next_seq - first)
        while raw := f.readline(MAX_RECORD_BYTES + 1):
            if not raw.endswith(b"\n"):
                break  # being written: not a record yet
            if seq >= next_seq:
                problem, digest = check_line(raw, seq, self.last_hash)
                if problem is not None:
                    raise AuditWriteError(
                        f"audit log {self.path} is damaged at seq {seq}: {problem}; "
                        "refusing to sign a checkpoint over it"
                    )
                self.frontier.append(leaf_hash(raw[:-1]))
                self.last_hash = digest
            seq += 1
            offset += len(raw)
        self._cursor = (first, offset)


class Checkpointer:
    """Writes signed checkpoints of one gateway's log: its own file, a copy, and syslog.

    The primary file is part of the audit record: failing to write it raises
    ``AuditWriteError`` (the caller fails closed). The copy and syslog are second witnesses:
    their failures are counted in ``copy_failures`` / the sender's ``failures`` and reported,
    because stopping every transfer when an export share is down would let anyone who can fill
    a disk stop the gateway.
    """

    def __init__(
        self,
        log_path: str | os.PathLike[str],
        key: Ed25519PrivateKey,
        gateway: str,
        *,
        agent: str = "audit",
        copy_path: str | os.PathLike[str] | None = None,
        syslog: SyslogSender | None = None,
        clock: Callable[[], str] = now,
    ) -> None:
        self.log_path = os.fspath(log_path)
        self.path = checkpoint_path(self.log_path)
        self.key = key
        self.gateway = gateway
        self.agent = agent
        self.copy_path = None if copy_path is None else os.fspath(copy_path)
        self.syslog = syslog
        self.clock = clock
        self.reader = LogTreeReader(self.log_path)
        self.copy_failures = 0
        self.last: Checkpoint | None = None

    def checkpoint(self) -> Checkpoint:
        """Sign the log as it is now and write the checkpoint to every place."""

        try:
            fd = os.open(
                self.path,
                os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
            )
        except OSError as exc:
            raise AuditWriteError(f"cannot open checkpoint file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Under the lock, so that successive checkpoints in the file never shrink.
            self.reader.update()
            cp = Checkpoint.sign(
                self.key, self.gateway, self.reader.size, self.reader.frontier.root(), self.clock()
            )
            line = cp.line()
            _write_all(fd, line)
            os.fsync(fd)
        except OSError as exc:
            raise AuditWriteError(f"cannot write checkpoint file {self.path}: {exc}") from exc
        finally:
            os.close(fd)
        self.last = cp
        if self.copy_path is not None:
            try:
                _append_durably(self.copy_path, line)
            except OSError:
                self.copy_failures += 1
        if self.syslog is not None:
            self.syslog.send(checkpoint_rfc5424(cp.to_dict(), self.agent))
        return cp

    def prune(self, retention: float, now_ts: float | None = None) -> int:
        """Remove rotated files whose newest record is older than ``retention`` seconds.

        Only whole segments, oldest first, and only records a checkpoint written under the same
        lock covers. Before anything is deleted, the signed ``Base`` (chain hash and tree edge
        at the cut) is written durably, so the log still verifies from there on. Returns the
        number of files removed.
        """
        import time as _time

        cutoff = (now_ts if now_ts is not None else _time.time()) - retention
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.reader.update()
            try:
                base = Base.read(self.log_path)
            except ValueError as exc:
                raise AuditWriteError(str(exc)) from None
            frontier = base.tree() if base else TreeFrontier()
            last_hash = base.last_hash if base else GENESIS_HASH
            doomed: list[str] = []
            for first, seg in segments(self.log_path):
                if first != frontier.size + 1:
                    raise AuditWriteError(f"cannot prune: {seg} does not follow the base")
                lines = open(seg, "rb").read().splitlines(keepends=True)  # noqa: SIM115
                newest = json.loads(lines[-1])["time"]
                if _time_of(newest) >= cutoff or first + len(lines) - 1 > self.reader.size:
                    break
                for i, raw in enumerate(lines):
                    problem, digest = check_line(raw, first + i, last_hash)
                    if problem is not None:
                        raise AuditWriteError(f"cannot prune {seg}: {problem}")
                    frontier.append(leaf_hash(raw[:-1]))
                    last_hash = digest
                doomed.append(seg)
            if not doomed:
                return 0
            stack = tuple((h, d.hex()) for h, d in frontier.stack)
            unsigned = Base(self.gateway, frontier.size, last_hash, stack, self.clock(),
                            key_id(self.key.public_key()), "")  # fmt: skip
            sig = base64.b64encode(self.key.sign(unsigned.signed_bytes())).decode("ascii")
            signed = Base(**{**asdict(unsigned), "sig": sig})
            tmp = base_path(self.log_path) + ".tmp"
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_all(out, canonical_bytes(signed.to_dict()) + b"\n")
                os.fsync(out)
            finally:
                os.close(out)
            os.replace(tmp, base_path(self.log_path))
            _fsync_dir(os.path.dirname(os.path.abspath(self.log_path)))
            for seg in doomed:
                os.unlink(seg)
            _fsync_dir(os.path.dirname(os.path.abspath(self.log_path)))
            return len(doomed)
        finally:
            os.close(fd)


def _time_of(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _append_durably(path: str, line: bytes) -> None:
    new = not os.path.exists(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_all(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
