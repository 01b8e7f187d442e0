"""CurveZMQ on the zmq link: only the configured peer may connect, and nothing on the wire is
readable (not even the envelope header, which the envelope itself leaves in the clear)."""

from __future__ import annotations

import contextlib
import socket
import stat
import threading
from pathlib import Path

import yaml
import zmq
from harness import GatewayPair, seal_test_envelope, wait_for

from zonegate.gateways.demo_configs import free_port
from zonegate.gateways.submit import submit_files
from zonegate.transfer.keys import load_curve_public, load_curve_secret
from zonegate.transfer.zmqlink import CurveKeys, ZmqLinkSender


class Tap:
    """A TCP forwarder between the gateways that keeps a copy of every byte it carries."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.seen = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.srv.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                a.close()
                continue
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(x, y), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                with self.lock:
                    self.seen += data
                dst.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.srv.shutdown(socket.SHUT_RDWR)
        self.srv.close()


def _curve_pair(root: Path, tap: bool) -> tuple[GatewayPair, Tap | None]:
    port = free_port()
    taps = Tap(port) if tap else None
    send_port = taps.port if taps else port
    keys = "../keys"
    transports = {
        "internet-gw": {
            "kind": "zmq",
            "endpoint": f"tcp://127.0.0.1:{send_port}",
            "curve_key": f"{keys}/internet-gw.curve.key",
            "peer_curve_key": f"{keys}/internal-gw.curve.pub",
        },
        "internal-gw": {
            "kind": "zmq",
            "endpoint": f"tcp://127.0.0.1:{port}",
            "curve_key": f"{keys}/internal-gw.curve.key",
            "peer_curve_key": f"{keys}/internet-gw.curve.pub",
        },
    }
    return GatewayPair(root, transports=transports), taps


def test_curve_link_delivers_and_the_wire_shows_nothing_readable(tmp_path: Path) -> None:
    pair, tap = _curve_pair(tmp_path / "gw", tap=True)
    assert tap is not None
    try:
        secret = tmp_path / "gw" / "keys" / "internet-gw.curve.key"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        pair.start()
        src = tmp_path / "src"
        src.mkdir()
        (src / "机密-looking name report.txt").write_text("zonegate curve test payload\n" * 500)
        submit_files(pair.outbox, "import", [src])
        wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 30, "delivery over Curve")
        delivered = pair.inbox_new / "机密-looking name report.txt"
        assert delivered.read_text() == "zonegate curve test payload\n" * 500
        with tap.lock:
            wire = bytes(tap.seen)
        assert len(wire) > 5000, "the tap saw no traffic: the test would prove nothing"
        # The envelope's header is plaintext JSON; over Curve none of it may show on the wire.
        for marker in (b'"flow":"import"', b"report", b"ZGENV", b"ZGL1B", b"ZGL1W"):
            assert marker not in wire, marker
    finally:
        pair.stop()
        tap.close()


def test_only_the_configured_peer_may_connect(tmp_path: Path) -> None:
    pair, _ = _curve_pair(tmp_path / "gw", tap=False)
    try:
        pair.start("receiver")
        cfg_dir = tmp_path / "gw" / "keys"
        rcfg = yaml.safe_load(pair.configs["internal-gw"].read_text())
        endpoint = rcfg["flows"][0]["transport"]["endpoint"]
        server_public = load_curve_public(cfg_dir / "internal-gw.curve.pub")
        rogue_public, rogue_secret = zmq.curve_keypair()
        stop = threading.Event()
        intruders = {
            "a key the receiver does not know": ZmqLinkSender(
                endpoint, curve=CurveKeys(rogue_public, rogue_secret, server_public)
            ),
            "no encryption at all": ZmqLinkSender(endpoint),
        }
        for label, link in intruders.items():
            msg_id, _h, data = seal_test_envelope(pair, f"from {label}\n".encode())
            path = tmp_path / f"{msg_id}.env"
            path.write_bytes(bytes(data))
            # ZMQ_IMMEDIATE: with no accepted connection the send can never go through.
            timer = threading.Timer(3.0, stop.set)
            timer.start()
            sent = link.send_envelope(path, msg_id, "import", "internet-gw", False, stop)
            timer.cancel()
            stop.clear()
            assert not sent, f"{label}: the link accepted a frame"
            assert not link.connected
            link.close()
        # The real sender, with the configured key, gets through.
        public, secret = load_curve_secret(cfg_dir / "internet-gw.curve.key")
        good = ZmqLinkSender(endpoint, curve=CurveKeys(public, secret, server_public))
        msg_id, _h, data = seal_test_envelope(pair, b"from the configured peer\n")
        path = tmp_path / "good.env"
        path.write_bytes(bytes(data))
        wait_for(lambda: bool(good.link_events()) or good.connected, 20, "the peer's handshake")
        assert good.send_envelope(path, msg_id, "import", "internet-gw", False, stop)
        wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 20, "the good one")
        good.close()
        assert pair.receiver_spool.depth("quarantine") == 0
    finally:
        pair.stop()
