"""ZeroMQ PUSH/PULL link adapter: the receiver binds, the sender connects, nothing replies.

Only byte-moving lives here; framing rules are in `linkframe`. The sender's socket sets
ZMQ_IMMEDIATE so frames queue only to a connected peer (a dead receiver blocks the sender
instead of filling memory), bounded high-water marks and kernel buffers so the bytes in flight
at any moment are bounded (that bound sizes the resend window), and never calls recv on the
link. The receiver's socket never sends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from .linkframe import MAX_PAYLOAD, begin_frame, data_frame, end_frame

__all__ = ["ZmqLinkReceiver", "ZmqLinkSender", "in_flight_bound"]

HWM = 16
SOCKET_BUFFER = 4 * 1024 * 1024


def in_flight_bound() -> int:
    """Most bytes that can sit in queues and kernel buffers between the two processes."""
    return 2 * HWM * MAX_PAYLOAD + 2 * SOCKET_BUFFER


class ZmqLinkSender:
    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        self.sock.setsockopt(zmq.SNDBUF, SOCKET_BUFFER)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self.sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED
        )
        self.sock.connect(endpoint)
        self.connected = False

    def link_events(self) -> list[str]:
        """Connection changes seen since the last call: 'up' or 'down' (from the monitor pipe)."""
        events: list[str] = []
        while self.monitor.poll(0):
            ev = recv_monitor_message(self.monitor)
            kind = ev["event"]
            if kind in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_CONNECTED):
                if not self.connected:
                    self.connected = True
                    events.append("up")
            elif kind == zmq.EVENT_DISCONNECTED and self.connected:
                self.connected = False
                events.append("down")
        return events

    def _send(self, frames: Iterable[bytes | memoryview], stop: threading.Event) -> bool:
        parts = list(frames)
        while not stop.is_set():
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                self.sock.poll(200, zmq.POLLOUT)
        return False

    def send_frames(self, frames: list[bytes], stop: threading.Event) -> bool:
        return self._send(frames, stop)

    def send_envelope(
        self,
        path: Path,
        transfer: str,
        flow: str,
        sender: str,
        resend: bool,
        stop: threading.Event,
    ) -> bool:
        """Stream one envelope file; False if asked to stop before the END frame left."""
        import hashlib

        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            length = f.seek(0, 2)
            f.seek(0)
            if not self._send(begin_frame(transfer, flow, sender, length, resend), stop):
                return False
            offset = 0
            while True:
                chunk = f.read(MAX_PAYLOAD)
                if not chunk:
                    break
                h.update(chunk)
                if not self._send(data_frame(transfer, offset, chunk), stop):
                    return False
                offset += len(chunk)
        return self._send(end_frame(transfer, h.digest()), stop)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close()


class ZmqLinkReceiver:
    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, HWM)
        self.sock.setsockopt(zmq.RCVBUF, SOCKET_BUFFER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_PAYLOAD + 4096)
        self.sock.bind(endpoint)

    def recv(self, timeout_ms: int) -> list[bytes] | None:
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return self.sock.recv_multipart(copy=True)

    def close(self) -> None:
        self.sock.close()
