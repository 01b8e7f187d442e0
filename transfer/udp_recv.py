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

Why the receive call keeps the GIL: a decoder thread busy in pure CPU (RaptorQ decoding of
lossy blocks, holding the GIL) and a drain that gives the GIL up at every receive, as each of
Python's socket calls does, take turns in the drain's disfavour: measured at 5% loss, the
kernel's queue grew to its 128 MiB limit and dropped 110,000 datagrams while the decoder's own
queue held 190 MiB. So the drain calls recvmsg(2), non-blocking, through ctypes.PyDLL, which
keeps the GIL during the call: once the drain has the GIL it empties the socket, and it lets go
only when it waits in poll() or when the interpreter's switch interval makes it. A backlog then
builds in the drain's queue, where it is ours to count, not in the kernel's. Where libc cannot be
called through ctypes, the socket's own recvmsg_into is used.

Why UDP GRO: with the UDP_GRO option the kernel may hand over, in one receive, a run of
datagrams of the same flow and size that it coalesced (a GSO send across loopback, or a NIC's
GRO); a control message gives the segment size, and `gro_segments` cuts the run back into the
datagrams that were sent. Without the option or without coalescing, each receive is one datagram.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import queue
import select
import socket
import struct
import threading
from pathlib import Path

__all__ = ["Batch", "UdpDrain", "gro_segments", "kernel_rcvbuf_errors"]

log = logging.getLogger(__name__)

RECEIVE_BUFFER = 64 * 1024 * 1024
#: bytes of datagrams held between the drain and the decoder before the drain drops
MAX_QUEUED_BYTES = 256 * 1024 * 1024
#: one batch buffer; a receive always has 64 KiB of room (a GRO run is at most 64 KiB)
BATCH_BYTES = 1024 * 1024
_ROOM = 65536
_SPARE = 16  # free batch buffers kept for reuse
SOL_UDP = 17
UDP_GRO = 104  # linux/udp.h
_GRO_CMSG = socket.CMSG_SPACE(4)
_INT = struct.Struct("=i")
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: the enum's & costs microseconds

#: a batch: the buffer and the end offset of each datagram in it (the first starts at 0)
Batch = tuple[bytearray, list[int]]
_CONTROL = 64  # bytes of control buffer for recvmsg: the UDP_GRO message takes 20 of them
_CMSG = struct.Struct("=Qiii")  # cmsg_len, level, type, and the int that follows (LP64 Linux)


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _RecvKeepingGil:
    """recvmsg(2) with MSG_DONTWAIT through ctypes.PyDLL (the GIL stays held during the call):
    (bytes, GRO segment size); (-1, 0) when nothing waits; (0, 0) for a truncated datagram."""

    def __init__(self, fd: int) -> None:
        call = ctypes.PyDLL(None, use_errno=True).recvmsg
        call.argtypes = (ctypes.c_int, ctypes.POINTER(_Msghdr), ctypes.c_int)
        call.restype = ctypes.c_ssize_t
        self.call, self.fd = call, fd
        self.iov = _Iovec()
        self.control = ctypes.create_string_buffer(_CONTROL)
        control = ctypes.cast(self.control, ctypes.c_void_p)
        self.msg = _Msghdr(None, 0, ctypes.pointer(self.iov), 1, control, _CONTROL, 0)
        self.ref = ctypes.byref(self.msg)

    def __call__(self, buf: bytearray, address: int, at: int) -> tuple[int, int]:
        self.iov.iov_base, self.iov.iov_len = address + at, _ROOM
        msg = self.msg
        msg.msg_controllen = _CONTROL
        n = self.call(self.fd, self.ref, socket.MSG_DONTWAIT)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return -1, 0
            raise OSError(err, os.strerror(err))
        if msg.msg_flags & _MSG_TRUNC:
            return 0, 0
        if msg.msg_controllen >= _CMSG.size:
            _length, level, kind, size = _CMSG.unpack_from(self.control)
            if level == SOL_UDP and kind == UDP_GRO:
                return n, size
        return n, 0


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
        self._pins: dict[int, ctypes.Array[ctypes.c_char]] = {}  # id(buffer) -> its ctypes view
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
        if self._free.qsize() >= _SPARE:  # past a burst: let the extra buffers go
            self._pins.pop(id(batch[0]), None)
            return
        self._free.put(batch[0])

    def _buffer(self) -> tuple[bytearray, int]:
        """A free batch buffer and its address (a buffer never moves: it is never resized)."""
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            buf = bytearray(BATCH_BYTES)
            # A ctypes view pins the buffer; kept with it, it gives the address for recvmsg.
            self._pins[id(buf)] = (ctypes.c_char * len(buf)).from_buffer(buf)
        return buf, ctypes.addressof(self._pins[id(buf)])

    def _python_receive(self, buf: bytearray, _address: int, at: int) -> tuple[int, int]:
        """The fallback receive: the socket's own (it gives the GIL up at every call)."""
        try:
            n, ancdata, flags, _addr = self.sock.recvmsg_into(
                [memoryview(buf)[at : at + _ROOM]], _GRO_CMSG
            )
        except (BlockingIOError, InterruptedError):
            return -1, 0
        if flags & _MSG_TRUNC:
            return 0, 0
        return n, _gro_size(ancdata) if ancdata else 0

    def _run(self) -> None:
        try:
            receive = _RecvKeepingGil(self.sock.fileno())
        except (OSError, AttributeError) as e:
            log.warning("UDP drain: recvmsg through ctypes unavailable (%s)", e)
            receive = self._python_receive
        sock, stop = self.sock, self._stop
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        buf, address = self._buffer()
        at, ends = 0, []
        while not stop.is_set():
            try:
                n, size = receive(buf, address, at)
            except OSError as e:
                if stop.is_set() or e.errno == errno.EBADF:
                    return
                raise
            if n < 0:  # the socket is empty: hand over what we have, then wait (GIL released)
                if ends:
                    self._hand_over(buf, ends)
                    buf, address = self._buffer()
                    at, ends = 0, []
                poller.poll(200)
                continue
            if n == 0:
                continue  # an empty or truncated datagram carries nothing of ours
            self.receives += 1
            if size:
                ends += gro_segments(at, n, size)
            else:
                ends.append(at + n)
            at += n
            if len(buf) - at < _ROOM:
                self._hand_over(buf, ends)
                buf, address = self._buffer()
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
