"""An agent's exit code says why it stopped, and the ports a demo gives its links stay its own.

Both from one CI failure: a relay whose endpoint port had been taken by another process's
outgoing connection could never bind it; the agent logged the error and exited 0, the
supervisor restarted it every 30 s, and the demo waited until it was killed.
"""

from __future__ import annotations

import socket

import yaml
from harness import GatewayPair, wait_for

from zonegate.gateways.demo_configs import _ephemeral_low, free_port


def test_an_agent_whose_stage_raises_exits_1_not_0(pair: GatewayPair) -> None:
    cfg = yaml.safe_load(pair.configs["internal-gw"].read_text())
    endpoint = cfg["flows"][0]["transport"]["endpoint"]  # tcp://127.0.0.1:PORT
    port = int(endpoint.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        pair.start("receiver")
        wait_for(lambda: not pair.alive("receiver"), 60, "the receiver to give up")
    assert pair.procs["receiver"].returncode == 1
    log = (pair.root / "receiver.log").read_text()
    assert "Address already in use" in log and "stopping the agent" in log


def test_free_ports_are_below_the_ephemeral_range_and_not_given_twice() -> None:
    """Below the range, no outgoing connection is given the port between our probe and the
    gateway's bind; only a bind by number can take it."""
    low = _ephemeral_low()
    tcp = [free_port() for _ in range(40)]
    udp = [free_port(socket.SOCK_DGRAM) for _ in range(10)]
    assert len(set(tcp + udp)) == 50
    assert all(1024 <= p < low for p in tcp + udp), (low, tcp, udp)
    for p in tcp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_gateway_whose_starter_is_gone_stops_itself(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The demo gives its gateways a lifeline pipe; when the demo dies (SIGKILL: a test's
    timeout), they read EOF and stop with their final checkpoints, instead of running on."""
    import json
    import os
    import subprocess
    import sys

    from zonegate.gateways.demo_configs import write_gateway_pair
    from zonegate.gateways.supervisor import LIFELINE_ENV

    configs = write_gateway_pair(tmp_path, 1024 * 1024)
    read_end, write_end = os.pipe()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "zonegate.bin.cli", "run", "--config", str(configs["internal-gw"])],
        env={**os.environ, LIFELINE_ENV: str(read_end)},
        pass_fds=(read_end,),
        stderr=subprocess.PIPE,
    )
    os.close(read_end)
    try:
        runtime = tmp_path / "internal-gw" / "spool" / "state" / "receiver.json"
        wait_for(runtime.exists, 60, "the receiver agent to start")
        agent_pid = json.loads(runtime.read_text())["pid"]
        assert gateway.poll() is None
        os.close(write_end)  # what the kernel does for a starter that is killed
        assert gateway.wait(60) == 0
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
    _, err = gateway.communicate()
    assert b"the program that started this gateway is gone" in err
    wait_for(lambda: not os.path.exists(f"/proc/{agent_pid}"), 30, "the agent to exit too")
    log = (tmp_path / "internal-gw" / "audit" / "audit.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["event"] == "agent-stopped"
