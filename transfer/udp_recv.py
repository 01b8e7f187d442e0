"""UDP stage 4 (receiver): drain the socket in a tight loop on its own thread.

Why a thread of its own and a large buffer: the most common failure of open-source diodes is
the receiver's kernel dropping datagrams because the socket buffer overflowed while the process
was decoding or writing to disk. This loop does nothing but move datagrams from the kernel into
big preallocated buffers and hand each full buffer over; decoding and disk work happen on the
consumer's side. The socket is bound, never connected, and nothing is ever sent on it.

Why batches: a queue operation and a fresh bytes object per datagram cost more than the
datagram's own processing. The drain receives straight into a 1 MiB buffer (recv_into, one
system call a datagram, the socket non-blocking so no poll() precedes each receive) and hands
over (buffer, end offsets) when the buffer is full or the socket is empty; the consumer gives
the buffer back for reuse.

Why UDP GRO: with the UDP_GRO option the kernel may hand over, in one receive, a run of
datagrams of the same flow and size that it coalesced (a GSO send across loopback, or a NIC's
GRO); a control message gives the segment size, and `gro_segments` cuts the run back into the
datagrams that were sent. Without the option or without coalescing, each receive is one datagram.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import select
import socket
import struct
import threading
from pathlib import Path

__all__ = ["Batch", "UdpDrain", "gro_segments", "kernel_rcvbuf_errors"]

RECEIVE_BUFFER = 64 * 1024 * 1024
#: bytes of datagrams held between the drain and the decoder before the drain drops
MAX_QUEUED_BYTES = 256 * 1024 * 1024
#: one batch buffer; a receive always has 64 KiB of room (a GRO run is at most 64 KiB)
BATCH_BYTES = 1024 * 1024
_ROOM = 65536
SOL_UDP = 17
UDP_GRO = 104  # linux/udp.h
_GRO_CMSG = socket.CMSG_SPACE(4)
_INT = struct.Struct("=i")
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: the enum's & costs microseconds

#: a batch: the buffer and the end offset of each datagram in it (the first starts at 0)
Batch = tuple[bytearray, list[int]]


def kernel_rcvbuf_errors(snmp: Path = Path("/proc/net/snmp")) -> int:
    """The kernel's UDP RcvbufErrors counter for this network namespace (-1 if unreadable)."""
    try:
        lines = [line.split() for line in snmp.read_text().splitlines() if line.startswith("Udp:")]
        head, values = lines[0], lines[1]
        return int(values[head.index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return -1


def gro_segments(start: int, nbytes: int, segment: int) -> list[int]:
    """End offsets of the datagrams in a GRO run of `nbytes` at `start`: all `segment` bytes
    long except the last, which may be shorter (as the kernel builds the run)."""
    if segment <= 0 or segment >= nbytes:
        return [start + nbytes]
    ends = list(range(start + segment, start + nbytes, segment))
    ends.append(start + nbytes)
    return ends


def _gro_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _INT.size:
            return int(_INT.unpack_from(data)[0])
    return 0


class UdpDrain:
    """Bound UDP socket -> batches of datagrams; `dropped`: those the queue had no room for."""

    def __init__(self, host: str, port: int, gro: bool = True) -> None:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        try:  # as root, past net.core.rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.gro = False
        if gro:
            with contextlib.suppress(OSError):  # kernels before 5.0 have no UDP GRO
                self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
        self.sock.bind(info[4])
        self.sock.setblocking(False)
        self.queue: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self.dropped = 0
        self.datagrams = 0
        self.receives = 0  # receive calls that returned data (fewer than datagrams: GRO worked)
        self._bytes_in = 0  # written by the drain only
        self._bytes_out = 0  # written by the consumer only
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"udp-drain-{port}", daemon=True)
        self._thread.start()

    @property
    def rcvbuf(self) -> int:
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def get(self, timeout: float) -> Batch | None:
        try:
            return self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None

    def release(self, batch: Batch) -> None:
        """The consumer is done with a batch: its buffer may be filled again."""
        self._bytes_out += batch[1][-1]
        self._free.put(batch[0])

    def _buffer(self) -> bytearray:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return bytearray(BATCH_BYTES)

    def _run(self) -> None:
        sock, stop, gro = self.sock, self._stop, self.gro
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        buf = self._buffer()
        view = memoryview(buf)
        at, ends = 0, []
        while not stop.is_set():
            try:
                if gro:
                    n, ancdata, flags, _addr = sock.recvmsg_into([view[at : at + _ROOM]], _GRO_CMSG)
                    size = _gro_size(ancdata) if ancdata else 0
                    if flags & _MSG_TRUNC:
                        continue  # longer than any datagram of ours: not one of ours
                else:
                    n = sock.recv_into(view[at : at + _ROOM])
                    size = 0
            except (BlockingIOError, InterruptedError):
                if ends:
                    self._hand_over(buf, ends)
                    buf = self._buffer()
                    view = memoryview(buf)
                    at, ends = 0, []
                poller.poll(200)
                continue
            except OSError as e:
                if stop.is_set() or e.errno == errno.EBADF:
                    return
                raise
            if n == 0:
                continue  # an empty datagram carries nothing of ours
            self.receives += 1
            if size:
                ends += gro_segments(at, n, size)
            else:
                ends.append(at + n)
            at += n
            if len(buf) - at < _ROOM:
                self._hand_over(buf, ends)
                buf = self._buffer()
                view = memoryview(buf)
                at, ends = 0, []

    def _hand_over(self, buf: bytearray, ends: list[int]) -> None:
        self.datagrams += len(ends)
        if self._bytes_in - self._bytes_out + ends[-1] > MAX_QUEUED_BYTES:
            self.dropped += len(ends)
            self._free.put(buf)
            return
        self._bytes_in += ends[-1]
        self.queue.put((buf, ends))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(OSError):
            self.sock.close()
