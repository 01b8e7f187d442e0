"""UDP stage 4 (receiver): drain the socket in a tight loop on its own thread.

Why a thread of its own and a large buffer: the most common failure of open-source diodes is
the receiver's kernel dropping datagrams because the socket buffer overflowed while the process
was decoding or writing to disk. This loop does nothing but move datagrams from the kernel into
a queue; decoding and disk work happen on the consumer's side. The socket is bound, never
connected, and nothing is ever sent on it.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from pathlib import Path

__all__ = ["UdpDrain", "kernel_rcvbuf_errors"]

RECEIVE_BUFFER = 64 * 1024 * 1024
#: datagrams held between the drain and the decoder (about 128 MiB at 1400-byte symbols)
MAX_QUEUED = 96 * 1024


def kernel_rcvbuf_errors(snmp: Path = Path("/proc/net/snmp")) -> int:
    """The kernel's UDP RcvbufErrors counter for this network namespace (-1 if unreadable)."""
    try:
        lines = [line.split() for line in snmp.read_text().splitlines() if line.startswith("Udp:")]
        head, values = lines[0], lines[1]
        return int(values[head.index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return -1


class UdpDrain:
    """Bound UDP socket -> queue of datagrams; `dropped` counts what the queue had no room for."""

    def __init__(self, host: str, port: int) -> None:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        try:  # as root, past net.core.rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.sock.bind(info[4])
        self.sock.settimeout(0.2)
        self.queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"udp-drain-{port}", daemon=True)
        self._thread.start()

    @property
    def rcvbuf(self) -> int:
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _run(self) -> None:
        recv, put, size, stop = self.sock.recv, self.queue.put, self.queue.qsize, self._stop
        while not stop.is_set():
            try:
                datagram = recv(65535)
            except TimeoutError:
                continue
            except OSError:
                if stop.is_set():
                    return
                raise
            if size() < MAX_QUEUED:
                put(datagram)
            else:
                self.dropped += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(OSError):
            self.sock.close()
