"""UDP stage 3 (sender): put datagrams on the wire; the LinkSender of the udp transport.

The sender never binds a listening socket and never reads: it only sends (the kernel gives the
socket an ephemeral source port, which nothing ever reads from; SHUT_RD makes that explicit).
A heartbeat thread announces the sender's position every interval, also in the middle of a long
message, so the receiver tells a dead link from a slow one within one interval.

Why UDP GSO (the UDP_SEGMENT control message): every datagram of a block has the same size, so
one sendmsg hands the kernel up to 64 KiB of them, and the kernel (or the NIC) cuts them into
datagrams of exactly that size. A Python call per datagram was most of the sender's time; now it
is one call per ~44 datagrams. Where the kernel or the route refuses GSO, the sender falls back
to one datagram per call, for good. The datagrams on the wire are the same either way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from ..zones.config import Flow
from .udp_encode import EncodedBlock, EncodeParams, EncoderPool, encode_blocks, symbol_size
from .udp_pace import TokenBucket
from .udp_packet import MAX_RECENT, heartbeat_datagram

__all__ = ["UdpLinkSender", "gso_bursts", "udp_address"]

log = logging.getLogger(__name__)

SEND_BUFFER = 8 * 1024 * 1024
IP_UDP_HEADERS = 28  # IPv4 + UDP: what the token bucket counts on top of each datagram
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: the GSO segment size of a send
#: payload bytes of one GSO send: the kernel's limit is one IP packet (64 KiB) less headers
GSO_MAX_BYTES = 65000
#: segments of one GSO send (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels)
GSO_MAX_SEGMENTS = 64
#: messages of this many blocks or more are encoded by the worker pool (smaller ones are done
#: before a worker would have answered)
POOL_BLOCKS = 3
_RETRY = (errno.ENOBUFS, errno.EAGAIN)  # the interface queue is full: wait for it
#: An ICMP "port unreachable" for an earlier datagram (a receiver not bound yet, or
#: restarting) is reported by the kernel on the next send of a connected socket, and that
#: send did not go out. Nothing was read from the link: the kernel only cleared its error.
#: Send again; a one-way device never carries that ICMP back anyway.
_PENDING_ICMP = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
#: GSO refused: no UDP_SEGMENT, a device without checksum offload, or a path that fragments
_NO_GSO = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE)


def udp_address(endpoint: str) -> tuple[str, int]:
    """``udp://HOST:PORT`` / ``udp://[v6]:PORT`` -> (host, port); the config checked the form."""
    rest = endpoint.removeprefix("udp://")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


def gso_bursts(datagram_size: int, count: int, limit: int = GSO_MAX_BYTES) -> Iterator[range]:
    """Index ranges of `count` equal datagrams, each range small enough for one GSO send."""
    per = max(1, min(GSO_MAX_SEGMENTS, limit // datagram_size))
    for first in range(0, count, per):
        yield range(first, min(count, first + per))


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
        try:  # as root, past net.core.wmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, 32, SEND_BUFFER)  # SO_SNDBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.sock.connect(self.addr)  # fixes the destination; a UDP connect sends nothing
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
        self.params = EncodeParams(symbol_size(t.packet_size), t.redundancy, t.repeats)
        self.bucket = TokenBucket(t.bandwidth)
        self.gso = os.environ.get("ZONEGATE_UDP_GSO", "1") != "0"
        self.icmp_errors = 0  # sends refused for an earlier datagram's ICMP error
        self.encoders = encoder_workers()
        self._pool: EncoderPool | None = None
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

    def _sendmsg(
        self, buffers: list[bytes | memoryview], segment: int, stop: threading.Event
    ) -> bool:
        """One sendmsg (a GSO send if `segment`), retried while the interface queue is full."""
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))] if segment else []
        while True:
            try:
                self.sock.sendmsg(buffers, cmsg)
                return True
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in _PENDING_ICMP:
                    self.icmp_errors += 1
                    continue
                if e.errno not in _RETRY:
                    raise
            if stop.wait(0.0005):
                return False

    def _put(self, datagram: bytes | memoryview, stop: threading.Event) -> bool:
        if not self.bucket.take(len(datagram) + IP_UDP_HEADERS, stop):
            return False
        return self._sendmsg([datagram], 0, stop)

    def _put_block(self, block: EncodedBlock, stop: threading.Event) -> bool:
        size = block.datagram_size
        if not self.gso:
            return all(self._put(block.datagram(i), stop) for i in range(block.count))
        for burst in gso_bursts(size, block.count):
            if not self.bucket.take(len(burst) * (size + IP_UDP_HEADERS), stop):
                return False
            try:
                if not self._sendmsg(block.buffers(burst), size if len(burst) > 1 else 0, stop):
                    return False
            except OSError as e:
                if e.errno not in _NO_GSO or len(burst) == 1:
                    raise
                log.warning("flow %s: UDP GSO refused (%s); one datagram a send", self.flow, e)
                self.gso = False  # this burst's budget is taken; the rest take theirs
                if not all(self._sendmsg([block.datagram(i)], 0, stop) for i in burst):
                    return False
                rest = range(burst.stop, block.count)
                return all(self._put(block.datagram(i), stop) for i in rest)
        return True

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
            pool = self._encoder_pool() if length >= POOL_BLOCKS * self.params.block_size else None
            blocks = encode_blocks(
                f, length, transfer, self.session, msgno, resend, self.params, pool
            )
            for block in blocks:
                if not self._put_block(block, stop):
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

    def _encoder_pool(self) -> EncoderPool | None:
        """The worker pool, started on the first message that needs it (None: encode here)."""
        if self._pool is None and self.encoders:
            try:
                self._pool = EncoderPool(self.params, self.encoders)
            except OSError as e:
                log.warning("flow %s: no UDP encoder workers (%s): encoding here", self.flow, e)
                self.encoders = 0
        return self._pool if self._pool is not None and not self._pool.broken else None

    def close(self) -> None:
        self._closed.set()
        self._beat.join(5)
        if self._pool is not None:
            self._pool.close()
        self.sock.close()


def encoder_workers() -> int:
    """Encoder processes for a sender: all cores but one (the sending thread's), 1 to 4;
    ZONEGATE_UDP_ENCODERS overrides it (0: encode in the sending thread)."""
    wanted = os.environ.get("ZONEGATE_UDP_ENCODERS")
    if wanted is not None and wanted.isdigit():
        return int(wanted)
    return max(1, min(4, (os.cpu_count() or 1) - 1))
