"""UDP stage 3 (sender): put datagrams on the wire; the LinkSender of the udp transport.

The sender never binds a listening socket and never reads: it only calls sendto (the kernel
gives the socket an ephemeral source port, which nothing ever reads from; SHUT_RD makes that
explicit). A heartbeat thread announces the sender's position every interval, also in the
middle of a long message, so the receiver tells a dead link from a slow one within one interval.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections import deque
from pathlib import Path

from ..zones.config import Flow
from .udp_encode import EncodeParams, encode_message
from .udp_pace import TokenBucket
from .udp_packet import MAX_RECENT, heartbeat_datagram

__all__ = ["UdpLinkSender", "udp_address"]

SEND_BUFFER = 4 * 1024 * 1024
HEADER_ROOM = 28 + 48 + 4  # IP + UDP headers, our header, RaptorQ payload id


def udp_address(endpoint: str) -> tuple[str, int]:
    """``udp://HOST:PORT`` / ``udp://[v6]:PORT`` -> (host, port); the config checked the form."""
    rest = endpoint.removeprefix("udp://")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


class UdpLinkSender:
    """Sends each envelope `repeats` times as RaptorQ-protected datagrams, paced."""

    connected = True  # connection-less: a send always makes progress

    def __init__(self, flow: Flow, session: bytes | None = None) -> None:
        t = flow.transport
        self.flow = flow.name
        self.sender = flow.sender
        host, port = udp_address(t.endpoint)
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.addr = info[4]
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.sock.connect(self.addr)  # fixes the destination; a UDP connect sends nothing
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
        self.params = EncodeParams(t.packet_size, t.redundancy, t.repeats)
        self.bucket = TokenBucket(t.bandwidth)
        self.interval = t.heartbeat
        self.session = session or os.urandom(8)
        self.msgno = 0  # last message number started
        self.position = 0  # last message number finished (all rounds)
        self.last_seq = 0
        self.recent: deque[tuple[int, str]] = deque(maxlen=MAX_RECENT)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._beat = threading.Thread(target=self._beat_loop, name=f"udp-beat-{flow.name}")
        self._beat.daemon = True
        self._beat.start()

    def link_events(self) -> list[str]:
        return []

    def _put(self, datagram: bytes, stop: threading.Event) -> bool:
        if not self.bucket.take(len(datagram) + 28, stop):
            return False
        while True:
            try:
                self.sock.send(datagram)
                return True
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:  # ENOBUFS: the interface queue is full, wait for it
                if e.errno not in (105, 11):
                    raise
            if stop.wait(0.0005):
                return False

    def send_envelope(
        self, path: Path, transfer: str, flow: str, sender: str, resend: bool, stop: threading.Event
    ) -> bool:
        with self._lock:
            self.msgno += 1
            msgno = self.msgno
        with open(path, "rb") as f:
            length = f.seek(0, 2)
            if length == 0:
                raise ValueError(f"{path}: an envelope is never empty")
            packets = encode_message(f, length, transfer, self.session, msgno, resend, self.params)
            for datagram in packets:
                if not self._put(datagram, stop):
                    return False
        with self._lock:
            self.position = msgno
            self.recent.append((msgno, transfer))
        self._heartbeat(stop)  # tells the receiver at once that this message is over
        return True

    def _heartbeat(self, stop: threading.Event) -> bool:
        with self._lock:
            datagram = heartbeat_datagram(
                self.session,
                self.position,
                self.flow,
                self.sender,
                self.last_seq,
                max(1, int(self.interval * 1000)),
                tuple(self.recent),
            )
        return self._put(datagram, stop)

    def send_heartbeat(
        self, flow: str, sender: str, last_seq: int, sent_at: str, stop: threading.Event
    ) -> bool:
        with self._lock:
            self.last_seq = last_seq
        return self._heartbeat(stop)

    def _beat_loop(self) -> None:
        while not self._closed.wait(self.interval):
            with contextlib.suppress(OSError):
                self._heartbeat(self._closed)

    def close(self) -> None:
        self._closed.set()
        self._beat.join(5)
        self.sock.close()
