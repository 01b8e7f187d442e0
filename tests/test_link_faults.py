"""Link faults: the link goes down for a long while and comes back, the receiver restarts while
the sender keeps sending, the sending gateway's clock jumps backwards. No loss, no duplicate.

ZONEGATE_LINK_DOWN_SECONDS sets how long the link stays down (default 20 s; the soak runs use
minutes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import yaml
from harness import GatewayPair, metric_value, wait_for

from zonegate.audit.verify import verify
from zonegate.gateways.demo_configs import free_port
from zonegate.gateways.submit import submit_files

LINK_DOWN = float(os.environ.get("ZONEGATE_LINK_DOWN_SECONDS") or 20)


class CuttableLink:
    """A TCP forwarder standing in for the network between the gateways; it can be cut."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(8)
        self.listener = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                a, _ = srv.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                a.close()  # the receiver is not up yet; the sender will reconnect
                continue
            with self.lock:
                self.conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(x, y), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        assert self.listener is not None
        # shutdown wakes the thread blocked in accept(); close alone would leave it listening
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                # linger 0: close sends RST, the connection dies mid-frame like a cut cable
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()


def _files(directory: Path, start: int, n: int, size: int = 200_000) -> dict[str, str]:
    directory.mkdir(exist_ok=True)
    out = {}
    for i in range(start, start + n):
        p = directory / f"f{i:03d}.bin"
        p.write_bytes(hashlib.sha256(str(i).encode()).digest() * (size // 32))
        out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _exactly_once(pair: GatewayPair, expected: dict[str, str]) -> None:
    assert sorted(p.name for p in pair.inbox_new.iterdir()) == sorted(expected)
    for name, digest in expected.items():
        assert hashlib.sha256((pair.inbox_new / name).read_bytes()).hexdigest() == digest
    assert pair.receiver_spool.depth("quarantine") == 0
    for gw in ("internet-gw", "internal-gw"):
        result = verify(pair.audit_log(gw))
        assert result.ok, f"{gw}: {result.problem}"


def test_link_down_for_a_long_while_then_back(pair: GatewayPair, tmp_path: Path) -> None:
    cfg_path = pair.configs["internet-gw"]
    cfg = yaml.safe_load(cfg_path.read_text())
    receiver_port = int(cfg["flows"][0]["transport"]["endpoint"].rsplit(":", 1)[1])
    link = CuttableLink(receiver_port)
    cfg["flows"][0]["transport"]["endpoint"] = f"tcp://127.0.0.1:{link.port}"
    cfg_path.write_text(yaml.safe_dump(cfg))
    pair.start()
    expected = _files(tmp_path / "a", 0, 30)
    submit_files(pair.outbox, "import", [tmp_path / "a"])
    wait_for(lambda: pair.receiver_spool.depth("delivered") >= 10, 60, "some deliveries")

    link.down()
    cut_at = time.monotonic()
    expected |= _files(tmp_path / "b", 30, 30)
    submit_files(pair.outbox, "import", [tmp_path / "b"])
    wait_for(
        lambda: metric_value(pair.metrics("sender"), "zonegate_link_up", flow="import") == 0,
        30,
        "the sender to see the link down",
    )
    time.sleep(max(0.0, LINK_DOWN - (time.monotonic() - cut_at)))
    stuck = pair.receiver_spool.depth("delivered")
    assert stuck < len(expected), "nothing should cross a cut link"
    link.up()
    wait_for(lambda: pair.receiver_spool.depth("delivered") == len(expected), 120, "all after")
    time.sleep(2)
    _exactly_once(pair, expected)
    assert metric_value(pair.metrics("sender"), "zonegate_link_up", flow="import") == 1
    link.down()


def test_receiver_restarts_while_the_sender_keeps_sending(
    pair: GatewayPair, tmp_path: Path
) -> None:
    pair.start()
    expected = _files(tmp_path / "a", 0, 80, size=50_000)
    t = threading.Thread(target=submit_files, args=(pair.outbox, "import", [tmp_path / "a"]))
    t.start()
    for _ in range(3):
        time.sleep(1.0)
        pair.kill("receiver", signal.SIGTERM)
        time.sleep(0.5)
        pair.start("receiver")
    t.join(60)
    wait_for(lambda: pair.receiver_spool.depth("delivered") == len(expected), 120, "all")
    time.sleep(2)
    _exactly_once(pair, expected)


def test_sender_clock_jumps_backwards(pair: GatewayPair, tmp_path: Path) -> None:
    pair.start()
    expected = _files(tmp_path / "a", 0, 15)
    submit_files(pair.outbox, "import", [tmp_path / "a"])
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 15, 60, "the first batch")
    before = max(pair.receiver_spool.ids("delivered"))
    pair.kill("ingest", signal.SIGTERM)
    pair.kill("sender", signal.SIGTERM)
    # Only the wall clock jumps, as on a real host: libfaketime also fakes CLOCK_MONOTONIC by
    # default, and then every timed wait of the agent (an idle sleep) never returns.
    wrapper = ("env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", "-2h")
    pair.start("ingest", "sender", wrapper=wrapper)
    expected |= _files(tmp_path / "b", 15, 15)
    submit_files(pair.outbox, "import", [tmp_path / "b"])
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 30, 60, "the second batch")
    time.sleep(2)
    _exactly_once(pair, expected)
    newest = [i for i in pair.receiver_spool.ids("delivered") if i < before]
    # Ids carry the sending clock: the second batch's ids sort before the first's.
    assert len(newest) >= 15, "the clock jump did not reach the sending gateway"
