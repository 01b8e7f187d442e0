"""Endpoint probes against real peers on 127.0.0.1: sipp as a SIP UAS, a TCP listener as H.323.

Only loopback addresses are probed here: the test topology points every endpoint at 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import metric_value, wait_for

from zonegate.gateways.demo_configs import free_port as demo_free_port
from zonegate.gateways.probe import parse_sip_response, probe_h323, probe_sip, sip_options

INTERVAL = 1.0
TIMEOUT = 0.5


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    return demo_free_port(kind)


def write_topology(path: Path, sip_port: int, h323_port: int) -> Path:
    path.write_text(
        f"""version: 1
zones:
  - {{name: government, level: classified, zh: 公务网, en: Government network}}
tiers:
  - {{tier: 1, zh: 一级网, en: Tier 1}}
nodes:
  - name: test-bureau
    zh: 测试局
    en: Test bureau
    tier: 1
    kind: municipal-bureau
    zones: [government]
    gateways:
      - {{name: test-gov-gw, zone: government, address: 127.0.1.1}}
    endpoints:
      - {{name: phone-bridge, role: phone-bridge, protocol: sip, address: 127.0.0.1,
          port: {sip_port}, zone: government}}
      - {{name: video-mcu, role: mcu, protocol: h323, address: 127.0.0.1,
          port: {h323_port}, zone: government}}
""",
        encoding="utf-8",
    )
    return path


def start_sipp(port: int, cwd: Path) -> subprocess.Popen[bytes]:
    """sipp's built-in UAS; -aa answers OPTIONS with 200 OK, as a SIP phone or bridge does."""
    proc = subprocess.Popen(
        ["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-aa", "-nostdin"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: probe_sip("127.0.0.1", port, 0.3)[0], 10, "sipp to answer OPTIONS")
    return proc


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = start_sipp(port, tmp_path)
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


# -- the request ------------------------------------------------------------------------------


def test_sip_options_is_a_proper_rfc3261_request() -> None:
    request = sip_options("10.20.0.11", 5060, "10.20.9.2", 40000)
    text = request.data.decode("ascii")
    assert text.endswith("\r\n\r\n")
    head = text[:-4]
    assert "\n" not in head.replace("\r\n", "")  # every line ends in CRLF
    lines = head.split("\r\n")
    assert lines[0] == "OPTIONS sip:10.20.0.11:5060 SIP/2.0"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Via"].startswith("SIP/2.0/UDP 10.20.9.2:40000;branch=z9hG4bK")
    assert request.branch.startswith("z9hG4bK") and len(request.branch) > len("z9hG4bK") + 8
    assert f"branch={request.branch}" in headers["Via"]
    assert headers["Max-Forwards"] == "70"
    assert ";tag=" in headers["From"] and headers["From"].startswith("<sip:")
    assert headers["To"] == "<sip:10.20.0.11:5060>"
    assert headers["Call-ID"] == request.call_id and "@" in request.call_id
    assert headers["CSeq"] == "1 OPTIONS"
    assert headers["Content-Length"] == "0"
    assert "Contact" in headers
    # Fresh identifiers each time, so responses to old probes are never taken for new ones.
    again = sip_options("10.20.0.11", 5060, "10.20.9.2", 40000)
    assert again.branch != request.branch and again.call_id != request.call_id


def test_sip_options_brackets_ipv6() -> None:
    request = sip_options("fd00::11", 5060, "fd00::2", 40000)
    text = request.data.decode()
    assert text.startswith("OPTIONS sip:[fd00::11]:5060 SIP/2.0\r\n")
    assert "Via: SIP/2.0/UDP [fd00::2]:40000;branch=" in text


def test_parse_sip_response_reads_compact_headers() -> None:
    parsed = parse_sip_response(
        b"SIP/2.0 405 Method Not Allowed\r\nv: SIP/2.0/UDP x\r\ni: abc\r\n\r\n"
    )
    assert parsed == (405, "Method Not Allowed", {"via": ["SIP/2.0/UDP x"], "call-id": ["abc"]})
    assert parse_sip_response(b"OPTIONS sip:x SIP/2.0\r\n\r\n") is None
    assert parse_sip_response(b"\xff\xfe") is None


# -- real peers -------------------------------------------------------------------------------


def test_sip_probe_up_against_sipp(sipp: tuple[subprocess.Popen[bytes], int]) -> None:
    _proc, port = sipp
    up, seconds, detail = probe_sip("127.0.0.1", port, TIMEOUT)
    assert up, detail
    assert detail == "SIP 200 OK"
    assert 0 < seconds < TIMEOUT


def test_sip_probe_ignores_answers_to_other_requests(tmp_path: Path) -> None:
    """A peer that answers with the wrong Call-ID or branch is not taken as alive."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def wrong_answers() -> None:
        sock.settimeout(5)
        data, peer = sock.recvfrom(65535)
        via = next(x for x in data.decode().split("\r\n") if x.startswith("Via:"))
        for reply in (
            f"SIP/2.0 200 OK\r\n{via}\r\nCall-ID: someone-else\r\nContent-Length: 0\r\n\r\n",
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKother\r\n"
            + next(x for x in data.decode().split("\r\n") if x.startswith("Call-ID:"))
            + "\r\nContent-Length: 0\r\n\r\n",
            "garbage",
        ):
            sock.sendto(reply.encode(), peer)

    thread = threading.Thread(target=wrong_answers)
    thread.start()
    try:
        up, _seconds, detail = probe_sip("127.0.0.1", port, TIMEOUT)
    finally:
        thread.join()
        sock.close()
    assert not up
    assert detail == "no SIP response before the timeout"


def test_h323_probe_is_a_tcp_connect() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        up, _seconds, detail = probe_h323("127.0.0.1", port, TIMEOUT)
        assert up, detail
        conn, _ = listener.accept()  # the probe really connected
        conn.close()
    finally:
        listener.close()
    up, _seconds, detail = probe_h323("127.0.0.1", port, TIMEOUT)
    assert not up and "refused" in detail.lower()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
        return resp.read().decode()


def test_probe_agent_up_then_down_within_two_intervals(tmp_path: Path) -> None:
    """Acceptance 3: sipp answers -> up; sipp stops -> down within two probe intervals."""
    sip_port, h323_port, metrics_port = (
        free_port(),
        free_port(socket.SOCK_STREAM),
        free_port(socket.SOCK_STREAM),
    )
    topology = write_topology(tmp_path / "topology.yaml", sip_port, h323_port)
    sipp = start_sipp(sip_port, tmp_path)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", h323_port))
    listener.listen(16)
    log = open(tmp_path / "probe.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen(
        [sys.executable, "-m", "zonegate.bin.cli", "probe", "--topology", str(topology),
         "--interval", str(INTERVAL), "--timeout", str(TIMEOUT), "--json",
         "--metrics", f"127.0.0.1:{metrics_port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    labels = {"endpoint": "phone-bridge", "node": "test-bureau", "protocol": "sip"}
    try:

        def bridge_up() -> bool:
            try:
                return metric_value(scrape(url), "zonegate_probe_up", **labels) == 1
            except OSError:
                return False

        wait_for(bridge_up, 15, "the probe to see sipp up")
        text = scrape(url)
        assert metric_value(text, "zonegate_probe_up", endpoint="video-mcu") == 1
        seen = metric_value(text, "zonegate_probe_last_seen_timestamp_seconds", **labels)
        assert abs(seen - time.time()) < 5
        assert 0 < metric_value(text, "zonegate_probe_duration_seconds", **labels) < TIMEOUT

        sipp.send_signal(signal.SIGKILL)
        sipp.wait(10)
        stopped = time.monotonic()
        wait_for(lambda: not bridge_up(), 2 * INTERVAL + 1, "the probe to see sipp down")
        elapsed = time.monotonic() - stopped
        assert elapsed <= 2 * INTERVAL, f"down only after {elapsed:.2f}s"
        text = scrape(url)
        # Last-seen keeps the last answer; the H.323 endpoint is still up.
        assert metric_value(text, "zonegate_probe_last_seen_timestamp_seconds", **labels) >= seen
        assert metric_value(text, "zonegate_probe_up", endpoint="video-mcu") == 1
        assert metric_value(text, "zonegate_probes_total", outcome="down", **labels) >= 1
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        finally:
            if agent.poll() is None:
                agent.kill()
            if sipp.poll() is None:
                sipp.kill()
            sipp.wait(10)
            listener.close()
            log.close()
    assert agent.returncode == 0
    rounds = [json.loads(line) for line in (tmp_path / "probe.log").read_text().splitlines()
              if line.startswith("[")]  # fmt: skip
    assert rounds and {r["endpoint"] for r in rounds[0]} == {"phone-bridge", "video-mcu"}


def test_probe_once_cli_exit_codes(
    tmp_path: Path, sipp: tuple[subprocess.Popen[bytes], int]
) -> None:
    _proc, sip_port = sipp
    h323_port = free_port(socket.SOCK_STREAM)  # nothing listens: the MCU is down
    topology = write_topology(tmp_path / "topology.yaml", sip_port, h323_port)
    cmd = [sys.executable, "-m", "zonegate.bin.cli", "probe", "--topology", str(topology)]
    r = subprocess.run(
        [*cmd, "--once", "--json", "--timeout", "0.5"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    results = {x["endpoint"]: x for x in json.loads(r.stdout)}
    assert results["phone-bridge"]["up"] is True
    assert results["video-mcu"]["up"] is False
    r = subprocess.run(
        [*cmd, "--once", "--endpoint", "phone-bridge", "--timeout", "0.5"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "phone-bridge" in r.stdout and "SIP 200 OK" in r.stdout
