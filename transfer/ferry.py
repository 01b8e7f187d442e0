"""The ferry-directory transport: envelopes as files in a directory the other side reads.

For sites without a network link at all (removable media carried across, a one-way file share).
The sender writes each envelope under a hidden temporary name, fsyncs it and renames it to its
final name, so only complete files are ever visible. The reader never writes, renames or deletes
anything in the ferry directory: it copies a file into its own scratch directory and remembers
in its own state what it took. A name is remembered in two steps ("P" when handed to the agent,
"T" at the next poll, after the agent has stored it durably), so a crash between the two gives
the file again, marked as a re-send, and the agent's duplicate check drops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path

from ..zones.config import Flow
from .link import ENVELOPE_FILE, Arrival, LinkNote, register_transport

__all__ = ["FerryReader", "FerryWriter", "final_name"]

_NAME = re.compile(r"([0-9a-f]{32})(?:\.resend-[0-9]{1,20})?\.zge")
HEARTBEAT_FILE = "heartbeat.json"
_COPY = 1024 * 1024


def final_name(transfer: str, resend: bool) -> str:
    """A re-send gets a name of its own: the reader may already have taken the first one."""
    return f"{transfer}.resend-{time.time_ns()}.zge" if resend else f"{transfer}.zge"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FerryWriter:
    """Sending end: complete files only, by write-fsync-rename; never reads the directory."""

    connected = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def link_events(self) -> list[str]:
        return []

    def _place(self, name: str, write: object) -> None:
        tmp = self.directory / f".tmp-{name}-{os.getpid()}"
        with open(tmp, "wb") as dst:
            write(dst)  # type: ignore[operator]
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(tmp, self.directory / name)
        _fsync_dir(self.directory)

    def send_envelope(
        self, path: Path, transfer: str, flow: str, sender: str, resend: bool, stop: threading.Event
    ) -> bool:
        if stop.is_set():
            return False

        def copy(dst: object) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, dst, _COPY)  # type: ignore[arg-type]

        self._place(final_name(transfer, resend), copy)
        return True

    def send_heartbeat(
        self, flow: str, sender: str, last_seq: int, sent_at: str, stop: threading.Event
    ) -> bool:
        body = json.dumps({"flow": flow, "sender": sender, "last_seq": last_seq, "time": sent_at})
        self._place(HEARTBEAT_FILE, lambda dst: dst.write(body.encode()))  # type: ignore[attr-defined]
        return True

    def close(self) -> None:
        pass


class FerryReader:
    """Receiving end: copies complete envelopes out; its memory of them lives in its own state."""

    def __init__(self, directory: Path, flow: Flow, scratch: Path, max_length: int) -> None:
        self.directory = directory
        self.flow = flow
        self.scratch = scratch
        self.max_length = max_length
        # scratch is <spool>/tmp/link (wiped at start); what was taken is kept in <spool>/state
        state = scratch.parent.parent / "state"
        state.mkdir(parents=True, exist_ok=True)
        self.log_path = state / f"{flow.name}.ferry-taken"
        self.taken: set[str] = set()
        self.pending: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_path.read_text().splitlines():
                mark, _, name = line.partition(" ")
                if mark == "T":
                    self.taken.add(name)
                    self.pending.discard(name)
                elif mark == "P" and name not in self.taken:
                    self.pending.add(name)
        self.handed: list[str] = []
        self.taken_count = 0
        self.log = open(self.log_path, "a", encoding="ascii")  # noqa: SIM115
        self.last_beat: str | None = None

    def _mark(self, mark: str, names: list[str]) -> None:
        if names:
            self.log.write("".join(f"{mark} {n}\n" for n in names))
            self.log.flush()
            os.fsync(self.log.fileno())

    def poll(self, timeout_ms: int) -> list[Arrival | LinkNote]:
        # The agent has stored what the previous poll handed over: now it counts as taken.
        self._mark("T", self.handed)
        self.taken.update(self.handed)
        self.handed = []
        out: list[Arrival | LinkNote] = []
        beat = self._heartbeat()
        if beat is not None:
            out.append(beat)
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            names = []
        for name in names:
            if name in self.taken or name.startswith(".") or name == HEARTBEAT_FILE:
                continue
            match = _NAME.fullmatch(name)
            if match is None:
                self._mark("T", [name])
                self.taken.add(name)
                out.append(LinkNote("stray", f"file {name[:80]!r} is not an envelope"))
                continue
            item = self._take(name, match.group(1))
            out.append(item)
            if len(out) >= 16:
                break
        if not out:
            time.sleep(timeout_ms / 1000)
        return out

    def _take(self, name: str, transfer: str) -> Arrival | LinkNote:
        src = self.directory / name
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            self._mark("T", [name])
            self.taken.add(name)
            return LinkNote("stray", f"cannot open {name}: {e.strerror}")
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or not 0 < info.st_size <= self.max_length:
                self._mark("T", [name])
                self.taken.add(name)
                return LinkNote("stray", f"{name}: not a regular file of 1..{self.max_length} B")
            # One of its own per file: a poll may take a message and its re-send together.
            self.taken_count += 1
            work = self.scratch / f"{transfer}-ferry-{self.taken_count}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(mode=0o700)
            # Hashed as it is copied: what came off the link, so that damage in the spool
            # later is told from a bad envelope (corrupt/, not quarantine/).
            digest = hashlib.sha256()
            with open(work / ENVELOPE_FILE, "xb") as dst:
                while block := f.read(_COPY):
                    digest.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
                size = dst.tell()
        resend = ".resend-" in name or name in self.pending
        self._mark("P", [name])
        self.handed.append(name)
        return Arrival(transfer, work, resend, size, digest.hexdigest())

    def _heartbeat(self) -> LinkNote | None:
        try:
            text = (self.directory / HEARTBEAT_FILE).read_text()[:4096]
            body = json.loads(text)
        except (OSError, ValueError, RecursionError):
            return None
        if text == self.last_beat or not isinstance(body, dict):
            return None
        self.last_beat = text
        seq = body.get("last_seq")
        if body.get("flow") != self.flow.name or not isinstance(seq, int) or isinstance(seq, bool):
            return LinkNote("stray", "heartbeat file for another flow")
        return LinkNote("heartbeat", last_seq=seq)

    def close(self) -> None:
        self.log.close()


def _writer(flow: Flow) -> FerryWriter:
    return FerryWriter(Path(flow.transport.endpoint))


def _reader(flow: Flow, scratch: Path, max_length: int) -> FerryReader:
    return FerryReader(Path(flow.transport.endpoint), flow, scratch, max_length)


register_transport("ferry", _writer, _reader)
