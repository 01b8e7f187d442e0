"""UDP stage 6 (receiver): decoded blocks to disk; the LinkReceiver of the udp transport.

Blocks are written at their offsets into `scratch/<id>-<session>/envelope` as they decode, and
the file is fsynced before the Arrival is handed to the agent, as the link contract requires.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..zones.config import Flow
from .link import ENVELOPE_FILE, Arrival, LinkNote
from .udp_decode import (
    Aborted,
    BlockDone,
    Decoder,
    Done,
    Heartbeat,
    Lost,
    Repeat,
    Silent,
    Stray,
)
from .udp_recv import UdpDrain
from .udp_send import udp_address

__all__ = ["UdpEnvelopeReceiver"]

#: batches (of up to 1 MiB each) decoded per poll before returning to the agent (keeps the
#: agent's loop turning: it exports metrics and hands arrivals on between polls)
_BATCHES = 32


class UdpEnvelopeReceiver:
    def __init__(self, flow: Flow, scratch: Path, max_length: int) -> None:
        self.scratch = scratch
        host, port = udp_address(flow.transport.endpoint)
        self.decoder = Decoder(flow.name, flow.sender, max_length, flow.transport.heartbeat)
        self.files: dict[tuple[bytes, int], tuple[Path, int]] = {}  # key -> (dir, fd)
        self.drain = UdpDrain(host, port)

    def _dir(self, key: tuple[bytes, int], transfer: str) -> tuple[Path, int]:
        entry = self.files.get(key)
        if entry is None:
            work = self.scratch / f"{transfer}-{key[0].hex()}-{key[1]}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(mode=0o700)
            fd = os.open(work / ENVELOPE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            entry = self.files[key] = (work, fd)
        return entry

    def _discard(self, key: tuple[bytes, int] | None) -> None:
        entry = self.files.pop(key, None) if key is not None else None
        if entry is not None:
            os.close(entry[1])
            shutil.rmtree(entry[0], ignore_errors=True)

    def poll(self, timeout_ms: int) -> list[Arrival | LinkNote]:
        out: list[Arrival | LinkNote] = []
        batch = self.drain.get(timeout_ms / 1000)
        count = 0
        while batch is not None:
            buf, ends = batch
            events = self.decoder.feed_batch(buf, ends, time.monotonic())
            for event in events:
                note = self._apply(event)
                if note is not None:
                    out.append(note)
            del events  # block views into the decoder's buffers: written, let them go
            self.drain.release(batch)
            count += 1
            batch = self.drain.get(0) if count < _BATCHES else None
        for event in self.decoder.tick(time.monotonic()):
            note = self._apply(event)
            if note is not None:
                out.append(note)
        return out

    def _apply(self, event: object) -> Arrival | LinkNote | None:
        if isinstance(event, BlockDone):
            _work, fd = self._dir(event.key, event.transfer)
            os.pwrite(fd, event.data, event.offset)
            return None
        if isinstance(event, Done):
            work, fd = self._dir(event.key, event.transfer)
            os.fsync(fd)
            os.close(fd)
            del self.files[event.key]
            return Arrival(event.transfer, work, event.resend, event.length)
        if isinstance(event, Lost):
            self._discard(event.key)
            return LinkNote("lost", event.reason, transfer=event.transfer, last_seq=None)
        if isinstance(event, Aborted):
            self._discard(event.key)
            return LinkNote(
                "aborted",
                event.reason,
                transfer=event.transfer,
                received_bytes=event.received_bytes,
            )
        if isinstance(event, Repeat):
            return LinkNote(
                "repeat", "repeat round of a message already complete", transfer=event.transfer
            )
        if isinstance(event, Heartbeat):
            return LinkNote("heartbeat", last_seq=event.last_seq)
        if isinstance(event, Silent):
            return LinkNote("silent", event.reason)
        if isinstance(event, Stray):
            return LinkNote("stray", event.reason)
        return None

    @property
    def queue_drops(self) -> int:
        return self.drain.dropped

    def close(self) -> None:
        self.drain.close()
        for key in list(self.files):
            self._discard(key)
