"""A lossy UDP forwarder for tests (the kernel here has no netem): drops a share of datagrams.

Run inside the receiver's network namespace: it listens where the sender sends and forwards to
the receiver agent's port on that namespace's loopback, so it never sends towards the sender.
Usage: python lossy_forwarder.py LISTEN_HOST LISTEN_PORT TARGET_PORT LOSS SEED
"""

from __future__ import annotations

import contextlib
import random
import socket
import sys


def main() -> None:
    host, port, target, loss, seed = sys.argv[1:6]
    rng = random.Random(int(seed))
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, 33, 64 * 1024 * 1024)  # SO_RCVBUFFORCE (root)
    rx.bind((host, int(port)))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(("127.0.0.1", int(target)))
    p = float(loss)
    recv, send, rand = rx.recv, tx.send, rng.random
    print("ready", flush=True)
    while True:
        datagram = recv(65535)
        if rand() >= p:
            with contextlib.suppress(ConnectionRefusedError):  # receiver not up yet: lost too
                send(datagram)


if __name__ == "__main__":
    main()
