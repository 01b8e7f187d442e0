"""The spool: a gateway's on-disk queue, one directory per state, every move a rename.

As in Postfix, the state of a message *is* the directory it sits in, so a crash can never leave a
message in two states or in none: `spool/<state>/<id>/` holds `meta.json` and, depending on the
state, `data` (plaintext, before sealing) or `envelope` (sealed). Moving a message is one
rename of its directory followed by an fsync of both parent directories; a batch of messages may
share that fsync (`move(..., barrier=...)`, see `durable.Barrier`), committed before anything is
done that relies on the move being durable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .durable import Barrier, durable_rename, fsync_dir, replace_durably, replace_file
from .ids import is_message_id

__all__ = ["STATES", "MessageMeta", "Spool", "SpoolError"]

#: Sending side: incoming -> ready -> active -> sent; refused files go to quarantine, files
#: damaged on disk to corrupt. Receiving side: received -> (delivered marker) and quarantine.
#: Flows that need approvals go incoming -> review -> ready (or review -> quarantine).
STATES: tuple[str, ...] = (
    "incoming",
    "review",
    "ready",
    "active",
    "relaying",
    "sent",
    "received",
    "delivered",
    "quarantine",
    "corrupt",
)
#: Scratch areas; never a message state. Each agent has its own so recovery is unambiguous.
SCRATCH: tuple[str, ...] = (
    "tmp/ingest",
    "tmp/link",
    "tmp/deliver",
    "tmp/seal",
    "tmp/reap",
    "state",
)

META = "meta.json"
DATA = "data"
ENVELOPE = "envelope"


class SpoolError(Exception):
    """A spool entry is missing or unreadable; the message is moved to corrupt/ by the caller."""


@dataclass(frozen=True)
class MessageMeta:
    """Everything the gateway knows about one message besides its bytes."""

    id: str
    flow: str
    system: str
    original_name: str
    size: int = 0
    sha256: str = ""
    content_type: str = "application/octet-stream"
    created: str = ""
    seq: int = 0
    classification: str = ""
    reason_code: str | None = None
    reason: str | None = None
    rule: str | None = None
    resent: int = 0
    sent_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        # The same JSON as dataclasses.asdict would give, without its deep copy of `extra`.
        fields = {name: getattr(self, name) for name in _META_FIELDS}
        return json.dumps(fields, ensure_ascii=False, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MessageMeta:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("meta.json is not an object")
        return cls(**{k: v for k, v in raw.items() if k in _META_FIELD_SET})

    def replace(self, **changes: Any) -> MessageMeta:
        return dataclasses.replace(self, **changes)


_META_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MessageMeta))
_META_FIELD_SET = frozenset(_META_FIELDS)


class Spool:
    """Directory-per-state queue rooted at `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # Built once: entry() runs several times per message and step.
        self._dirs = {name: self.root / name for name in (*STATES, *SCRATCH)}

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in (*STATES, *SCRATCH):
            (self.root / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        fsync_dir(self.root)

    def dir(self, state: str) -> Path:
        try:
            return self._dirs[state]
        except KeyError:
            raise ValueError(f"unknown spool state {state!r}") from None

    def entry(self, state: str, msg_id: str) -> Path:
        if not is_message_id(msg_id):
            raise ValueError(f"not a message id: {msg_id!r}")
        return self.dir(state) / msg_id

    def ids(self, state: str) -> list[str]:
        """Ids in a state, oldest first (ids are time-ordered)."""
        try:
            names = os.listdir(self.dir(state))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_message_id(n))

    def depth(self, state: str) -> int:
        try:
            with os.scandir(self.dir(state)) as it:
                return sum(1 for e in it if is_message_id(e.name))
        except FileNotFoundError:
            return 0

    def oldest_age(self, state: str, now: float) -> float:
        """Seconds since the oldest entry of a state was last touched (0 when empty)."""
        oldest: float | None = None
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dir(state)) as it:
            for e in it:
                if not is_message_id(e.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    t = e.stat(follow_symlinks=False).st_mtime
                    oldest = t if oldest is None else min(oldest, t)
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def states_of(self, msg_id: str) -> list[str]:
        return [s for s in STATES if self.entry(s, msg_id).exists()]

    def move(self, msg_id: str, src: str, dst: str, barrier: Barrier | None = None) -> Path:
        """Move a message between states (one rename): durable now, or when `barrier` commits."""
        target = self.entry(dst, msg_id)
        if target.exists():
            raise SpoolError(f"message {msg_id} is already in {dst}/")
        if barrier is None:
            durable_rename(self.entry(src, msg_id), target)
        else:
            os.rename(self.entry(src, msg_id), target)
            barrier.dir(target.parent)
            barrier.dir(self.dir(src))
        return target

    def read_meta(self, state: str, msg_id: str) -> MessageMeta:
        path = self.entry(state, msg_id) / META
        try:
            return MessageMeta.from_json(path.read_bytes())
        except (OSError, ValueError, TypeError, RecursionError) as e:
            # RecursionError: deeply nested JSON; still "unreadable", so it goes to corrupt/
            # instead of crashing the agent on every restart.
            raise SpoolError(f"{path}: unreadable metadata ({e})") from None

    def write_meta(
        self, state: str, msg_id: str, meta: MessageMeta, barrier: Barrier | None = None
    ) -> None:
        """Replace a message's metadata: durable now, or when `barrier` commits."""
        path = self.entry(state, msg_id) / META
        if barrier is None:
            replace_durably(path, meta.to_json())
        else:
            replace_file(path, meta.to_json(), barrier)

    def remove(self, state: str, msg_id: str) -> None:
        path = self.entry(state, msg_id)
        shutil.rmtree(path, ignore_errors=True)
        fsync_dir(path.parent)

    def iter_entries(self, state: str) -> Iterator[tuple[str, Path]]:
        for msg_id in self.ids(state):
            yield msg_id, self.entry(state, msg_id)
