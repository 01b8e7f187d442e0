"""What a link is to the agents: the contract every transport (zmq, udp, ferry, sftp) keeps.

The sender agent hands a link one sealed envelope file at a time and never reads from it; the
receiver agent polls its link for envelopes that have arrived *whole and durably on disk* in a
scratch directory, plus notes about the link (heartbeats, aborted transfers, stray input,
messages the transport knows it lost). How bytes cross (frames over TCP, FEC-protected UDP
datagrams, files on removable media) is each transport's own business.

One exception, for small envelopes on a transport whose sender re-sends its resend window when
the connection comes back (zmq): the envelope may arrive in memory (`Arrival.payload`), written
nowhere yet. Should the receiver die before it made the message durable, the connection drops
with it and the sender sends the message again, so nothing is lost; keeping it on disk first
would only cost a file per message. An agent that needs the file calls `materialize`.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..zones.config import Flow
from .durable import fsync_dir, open_exclusive

__all__ = [
    "Arrival",
    "LinkBroken",
    "LinkNote",
    "LinkReceiver",
    "LinkSender",
    "LinkStream",
    "StreamSink",
    "materialize",
    "open_receiver",
    "open_sender",
    "register_transport",
]

ENVELOPE_FILE = "envelope"


@dataclass(frozen=True)
class Arrival:
    """A complete envelope at `directory / "envelope"`, fsynced; the agent takes the directory.

    With `payload` set, the envelope is those bytes (checked against `sha256`) and nothing is on
    disk: `directory` is where it goes if it is to be kept (`materialize`).
    """

    transfer: str
    directory: Path
    resend: bool
    size: int
    #: hex SHA-256 of the envelope as it came off the link: later damage on disk shows against it
    sha256: str = ""
    payload: bytes | None = None
    #: the envelope went, as it came, into this sink the agent gave for it (`stream_to`)
    sink: StreamSink | None = None

    @property
    def streamed(self) -> bool:
        return self.sink is not None


def materialize(arrival: Arrival) -> Arrival:
    """The arrival as a durable file in its directory (a no-op for one already on disk)."""
    if arrival.payload is None:
        return arrival
    work = arrival.directory
    work.mkdir(mode=0o700)
    with open_exclusive(work / ENVELOPE_FILE) as f:
        f.write(arrival.payload)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(work)
    fsync_dir(work.parent)
    return Arrival(arrival.transfer, work, arrival.resend, arrival.size, arrival.sha256)


@dataclass(frozen=True)
class LinkNote:
    """Something the agent should count or record: kind is a bounded metric label.

    Kinds: "heartbeat" (last_seq set), "aborted" (a transfer broke off), "stray" (input that
    belongs to nothing), "lost" (the transport knows a message will never complete).
    """

    kind: str
    reason: str = ""
    last_seq: int | None = None
    transfer: str | None = None
    received_bytes: int = 0


class LinkSender(Protocol):
    """Sending end: never listens, never reads."""

    @property
    def connected(self) -> bool:
        """Whether a send can make progress now (connection-less transports: always True)."""
        ...

    def link_events(self) -> list[str]:
        """Connection changes since the last call: "up" / "down" (connection-less: none)."""
        ...

    def send_envelope(
        self, path: Path, transfer: str, flow: str, sender: str, resend: bool, stop: threading.Event
    ) -> bool:
        """Send one envelope; False if `stop` was set, or the connection went down, before it
        was handed over whole (the caller sends it again later)."""
        ...

    def send_heartbeat(
        self, flow: str, sender: str, last_seq: int, sent_at: str, stop: threading.Event
    ) -> bool: ...

    def close(self) -> None: ...


class LinkStream(Protocol):
    """An envelope being sent while it is written (`LinkSender.open_stream`, where offered)."""

    def write(self, data: bytes | memoryview) -> int:
        """Send the next bytes; raises `LinkBroken` if the link went down or stop was set."""
        ...

    def finish(self) -> bool:
        """All `length` bytes written: end the transfer; False if it could not be ended."""
        ...


class LinkBroken(Exception):
    """A streamed envelope could not go on: the connection went down, or the agent stops."""


class StreamSink(Protocol):
    """Where a receiving transport puts an envelope's bytes as they come (`stream_to`): the
    agent decrypts them on the fly instead of having them stored first. Completion comes as an
    `Arrival` with `streamed` set, in the same poll as the last bytes.

    A sink whose `verifies_envelope` is true checks the envelope end to end as it comes (tags,
    signature, length): the transport may then skip its own digest of the bytes, and the
    Arrival's `sha256` is the digest the sender claimed for them."""

    verifies_envelope: bool

    def write(self, data: bytes) -> None: ...

    def abort(self, reason: str) -> None:
        """The transfer broke off: nothing of it is to be kept."""
        ...


class LinkReceiver(Protocol):
    """Receiving end: writes nothing towards the sender."""

    def poll(self, timeout_ms: int) -> list[Arrival | LinkNote]: ...

    def close(self) -> None: ...


SenderFactory = Callable[[Flow], LinkSender]
ReceiverFactory = Callable[[Flow, Path, int], LinkReceiver]
_TRANSPORTS: dict[str, tuple[SenderFactory, ReceiverFactory]] = {}
#: the module that implements (and registers) each transport kind
_MODULES = {"zmq": "zmqlink", "udp": "udp", "ferry": "ferry", "sftp": "sftppush"}


def register_transport(kind: str, sender: SenderFactory, receiver: ReceiverFactory) -> None:
    _TRANSPORTS[kind] = (sender, receiver)


def _factories(kind: str) -> tuple[SenderFactory, ReceiverFactory]:
    if kind not in _TRANSPORTS and kind in _MODULES:
        # Imported on first use only, so a gateway loads the libraries of its own transports.
        importlib.import_module(f"{__package__}.{_MODULES[kind]}")  # registers itself

    try:
        return _TRANSPORTS[kind]
    except KeyError:
        raise ValueError(f"no transport of kind {kind!r}") from None


def open_sender(flow: Flow) -> LinkSender:
    return _factories(flow.transport.kind)[0](flow)


def open_receiver(flow: Flow, scratch: Path, max_length: int) -> LinkReceiver:
    """`scratch` is the agent's private directory for envelopes still arriving."""
    return _factories(flow.transport.kind)[1](flow, scratch, max_length)
