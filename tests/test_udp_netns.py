"""The UDP link through a one-way path: two network namespaces, a veth pair, and an nft rule
that drops every packet from the receiver's side towards the sender's (acceptance 1, 2, 3, 6).

Each agent is its own process: the sender in the sender's namespace, the receiver in the
receiver's, ingest outside both (it touches no network)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import GatewayPair, make_file, metric_value, wait_for
from netns import OneWayLink, sh
from test_e2e import _assert_exactly_once, _sha256

from zonegate.gateways.agent import AgentContext
from zonegate.gateways.submit import submit_files

KiB, MiB = 1024, 1024 * 1024
PORT = 47000


def _udp(endpoint: str, **extra: object) -> dict:
    return {
        "kind": "udp",
        "endpoint": endpoint,
        "bandwidth": "120 MiB",
        "redundancy": 0.25,
        "repeats": 1,
        "heartbeat": "0.5s",
        "packet_size": 1400,
    } | extra


def _pair(root: Path, link: OneWayLink, sender_t: dict, receiver_t: dict) -> GatewayPair:
    return GatewayPair(
        root,
        transports={"internet-gw": sender_t, "internal-gw": receiver_t},
        netns={"sender": link.sender_ns, "receiver": link.receiver_ns},
    )


def _start(pair: GatewayPair, port: int = PORT) -> None:
    """Receiver first: a datagram reaching a port nobody has bound yet would make the
    receiver's kernel answer with ICMP port-unreachable (dropped by the rule, but counted).
    `port`: the receiver agent's own. Behind a forwarder it is not the one the sender sends to;
    waiting for the forwarder's let the sender start before the receiver was up, and the
    forwarder then dropped the first messages whole (seen in CI on a loaded machine)."""
    pair.start("receiver")
    ns = pair.netns["receiver"]
    wait_for(lambda: f":{port} " in sh("ss", "-Huln", ns=ns), 60, "the receiver's socket")
    pair.start("ingest", "sender")


def _sources(directory: Path, sizes: list[int], seed: int) -> dict[str, str]:
    directory.mkdir()
    expected = {}
    for i, size in enumerate(sizes):
        path = directory / f"u{i:03d}.dat"
        make_file(path, size, seed * 10000 + i)
        expected[path.name] = _sha256(path)
    return expected


def _mixed_sizes(n: int, big: list[int], seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes = [KiB, 64 * MiB, *big]
    sizes += [int(2 ** rng.uniform(10, 20)) for _ in range(n - len(sizes))]  # 1 KiB .. 1 MiB
    rng.shuffle(sizes)
    return sizes


def _metrics(pair: GatewayPair, link: OneWayLink, agent: str) -> str:
    spool = pair.receiver_spool if agent == "receiver" else pair.sender_spool
    path = AgentContext.runtime_file(spool.root, agent)
    wait_for(path.exists, 20, f"{agent} runtime file")
    ns = link.receiver_ns if agent == "receiver" else link.sender_ns
    return link.fetch(ns, json.loads(path.read_text())["metrics"])


def _assert_one_way(link: OneWayLink) -> None:
    """Acceptance 3: not one packet left the receiver's veth, none reached the sender's side."""
    before = link.drop_counter()
    link.probe_towards_sender(5)
    assert link.drop_counter() == before + 5, "the drop rule is not in force"
    assert before == 0, f"the receiver's side tried to send {before} packets towards the sender"
    assert link.counters(link.receiver_ns, link.receiver_dev)["tx_packets"] == 0
    assert link.counters(link.sender_ns, link.sender_dev)["rx_packets"] == 0
    assert link.counters(link.receiver_ns, link.receiver_dev)["rx_packets"] > 0


def _audit(pair: GatewayPair, gateway: str) -> list[dict]:
    path = pair.audit_log(gateway)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _is_lost(record: dict) -> bool:
    return record["event"] == "gap" and "lost on the link" in (record["reason"] or "")


def _run_mixed(
    link: OneWayLink,
    tmp_path: Path,
    sizes: list[int],
    timeout: float,
    transport: dict | None = None,
    check: Callable[[], None] | None = None,
) -> None:
    """`sizes` through the link, each file once; `check` runs before the one-way assertions."""
    endpoint = f"udp://{link.receiver_ip}:{PORT}"
    t = transport or _udp(endpoint)
    pair = _pair(tmp_path / "gw", link, t, t)
    try:
        expected = _sources(tmp_path / "src", sizes, seed=len(sizes))
        _start(pair)
        submit_files(pair.outbox, "import", [tmp_path / "src"])
        delivered = lambda: pair.receiver_spool.depth("delivered")  # noqa: E731
        wait_for(lambda: delivered() >= len(expected), timeout, f"{len(expected)} deliveries")
        time.sleep(1.5)
        _assert_exactly_once(pair, expected)
        text = _metrics(pair, link, "receiver")
        assert metric_value(text, "zonegate_link_lost_messages_total", flow="import") == 0
        assert metric_value(text, "zonegate_udp_rcvbuf_errors") >= 0
        assert "zonegate_udp_rcvbuf_errors" in text
        if check is not None:
            check()
        _assert_one_way(link)
    except BaseException:
        print(pair.logs())
        raise
    finally:
        pair.stop()


def test_500_mixed_files_cross_a_one_way_link_exactly_once(
    oneway: OneWayLink, tmp_path: Path
) -> None:
    """Acceptance 1 and 3: 500 files of 1 KiB to 64 MiB, byte-identical, exactly once."""
    _run_mixed(oneway, tmp_path, _mixed_sizes(500, [8 * MiB], seed=1), timeout=150)


@pytest.mark.slow
def test_500_mixed_files_with_many_large_ones(oneway: OneWayLink, tmp_path: Path) -> None:
    _run_mixed(oneway, tmp_path, _mixed_sizes(500, [64 * MiB] * 6 + [16 * MiB] * 8, 7), 900)


def _random_loss(link: OneWayLink, loss: float) -> None:
    """Drop `loss` of the UDP datagrams reaching the receiver, each on its own chance.

    A kernel-side drop (nftables `numgen random`, this kernel has no netem) at the receiving
    side's prerouting hook; the veth's offloads are turned off first, so each datagram crosses
    as a frame of its own (a GSO send or a GRO run dropped whole would be a burst). The table
    goes with the namespace."""
    sh("ethtool", "-K", link.sender_dev, "tx-udp-segmentation", "off", ns=link.sender_ns)
    ns, dev = link.receiver_ns, link.receiver_dev
    sh("ethtool", "-K", dev, "gro", "off", "rx-udp-gro-forwarding", "off", ns=ns)
    rule = (
        "table inet zgloss {\n chain pre {\n"
        "  type filter hook prerouting priority -300; policy accept;\n"
        f'  iifname "{dev}" meta l4proto udp numgen random mod 10000 < {round(loss * 10000)}'
        " counter drop\n }\n}\n"
    )
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rule, text=True, check=True)


def _random_drops(link: OneWayLink) -> int:
    listing = json.loads(sh("nft", "-j", "list", "table", "inet", "zgloss", ns=link.receiver_ns))
    for item in listing["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise AssertionError("no counter in the loss rule")


def test_500_mixed_files_at_five_percent_random_loss_all_arrive(
    oneway: OneWayLink, tmp_path: Path
) -> None:
    """Acceptance 2 at full size: the same 500 files (1 KiB to 64 MiB) through 5% random loss
    with 25% redundancy: every file arrives, byte-identical, exactly once, none reported lost."""
    _random_loss(oneway, 0.05)

    def the_loss_was_there() -> None:  # about 5% of what reached the receiver's veth
        arrived = oneway.counters(oneway.receiver_ns, oneway.receiver_dev)["rx_packets"]
        share = _random_drops(oneway) / arrived
        assert 0.04 < share < 0.06, f"{share:.4f} of {arrived} datagrams dropped"

    # 40 MiB/s: under the repair path's speed with room for a loaded CI machine (a receiver that
    # cannot keep up drops datagrams, and this test is about the link's loss, not the host's)
    t = _udp(f"udp://{oneway.receiver_ip}:{PORT}", bandwidth="40 MiB")
    sizes = _mixed_sizes(500, [8 * MiB], seed=3)
    _run_mixed(oneway, tmp_path, sizes, 240, transport=t, check=the_loss_was_there)


def _forwarder(link: OneWayLink, port: int, target: int, loss: float) -> subprocess.Popen:
    here = Path(__file__).parent / "lossy_forwarder.py"
    cmd = ["ip", "netns", "exec", link.receiver_ns, sys.executable, str(here)]
    proc = subprocess.Popen(
        [*cmd, link.receiver_ip, str(port), str(target), str(loss), "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_five_percent_loss_with_25_percent_redundancy_loses_nothing(
    oneway: OneWayLink, tmp_path: Path
) -> None:
    """Acceptance 2, first half: random 5% loss (a lossy forwarder: this kernel has no netem)."""
    fwd = _forwarder(oneway, PORT, PORT + 1, 0.05)
    pair = _pair(
        tmp_path / "gw",
        oneway,
        # Paced for the test's Python forwarder: faster, and on a loaded machine its socket
        # buffer overflows in bursts, which is not the 5% random loss this test is about.
        _udp(f"udp://{oneway.receiver_ip}:{PORT}", bandwidth="16 MiB"),
        _udp(f"udp://127.0.0.1:{PORT + 1}"),
    )
    try:
        expected = _sources(tmp_path / "src", _mixed_sizes(60, [4 * MiB], 2)[:60], seed=5)
        # keep this run short: drop the 64 MiB file
        for name in [n for n in expected if (tmp_path / "src" / n).stat().st_size > 8 * MiB]:
            (tmp_path / "src" / name).unlink()
            del expected[name]
        _start(pair, PORT + 1)  # the receiver agent, behind the forwarder
        submit_files(pair.outbox, "import", [tmp_path / "src"])
        wait_for(lambda: pair.receiver_spool.depth("delivered") >= len(expected), 120, "all")
        time.sleep(1.5)
        _assert_exactly_once(pair, expected)
        text = _metrics(pair, oneway, "receiver")
        assert metric_value(text, "zonegate_link_lost_messages_total", flow="import") == 0
        _assert_one_way(oneway)
    except BaseException:
        print(pair.logs())
        raise
    finally:
        pair.stop()
        fwd.kill()
        fwd.wait()


def test_half_loss_reports_exactly_which_messages_were_lost(
    oneway: OneWayLink, tmp_path: Path
) -> None:
    """Acceptance 2, second half: at 50% loss the receiver names every lost message."""
    fwd = _forwarder(oneway, PORT, PORT + 1, 0.5)
    pair = _pair(
        tmp_path / "gw",
        oneway,
        _udp(f"udp://{oneway.receiver_ip}:{PORT}"),
        _udp(f"udp://127.0.0.1:{PORT + 1}"),
    )
    try:
        sizes = [random.Random(9).choice([1 * KiB, 3 * KiB, 40 * KiB]) for _ in range(40)]
        _sources(tmp_path / "src", sizes, seed=6)
        _start(pair, PORT + 1)  # the receiver agent, behind the forwarder
        submit_files(pair.outbox, "import", [tmp_path / "src"])

        def settled() -> bool:
            sent = {r["message"]["id"] for r in _audit(pair, "internet-gw") if r["event"] == "sent"}
            recv = _audit(pair, "internal-gw")
            done = {r["message"]["id"] for r in recv if r["event"] == "delivered"}
            lost = {r["message"].get("id") for r in recv if _is_lost(r)}
            return len(sent) == len(sizes) and sent == done | lost

        wait_for(settled, 90, "every message delivered or reported lost")
        time.sleep(2)
        sent = {r["message"]["id"] for r in _audit(pair, "internet-gw") if r["event"] == "sent"}
        recv = _audit(pair, "internal-gw")
        done = {r["message"]["id"] for r in recv if r["event"] == "delivered"}
        lost = [r["message"].get("id") for r in recv if _is_lost(r)]
        assert lost, "50% loss with 25% redundancy must lose some messages"
        assert None not in lost
        assert sorted(lost) == sorted(sent - done), "lost = exactly what was sent and not delivered"
        text = _metrics(pair, oneway, "receiver")
        assert metric_value(text, "zonegate_link_lost_messages_total", flow="import") == len(lost)
        _assert_one_way(oneway)
    except BaseException:
        print(pair.logs())
        raise
    finally:
        pair.stop()
        fwd.kill()
        fwd.wait()


def test_kill_9_of_the_udp_sender_mid_transfer_then_restart(
    oneway: OneWayLink, tmp_path: Path
) -> None:
    """Acceptance 6: kill -9 of the sender mid-run; after a restart everything arrives once."""
    endpoint = f"udp://{oneway.receiver_ip}:{PORT}"
    pair = _pair(tmp_path / "gw", oneway, _udp(endpoint, bandwidth="30 MiB"), _udp(endpoint))
    try:
        sizes = [int(2 ** random.Random(i).uniform(10, 21)) for i in range(120)] + [24 * MiB]
        expected = _sources(tmp_path / "src", sizes, seed=8)
        _start(pair)
        submitter = threading.Thread(
            target=submit_files, args=(pair.outbox, "import", [tmp_path / "src"])
        )
        submitter.start()
        delivered = lambda: pair.receiver_spool.depth("delivered")  # noqa: E731
        wait_for(lambda: delivered() >= 30, 120, "30 deliveries")
        pair.kill("sender", signal.SIGKILL)
        time.sleep(1.0)
        pair.start("sender")
        submitter.join(120)
        wait_for(lambda: delivered() >= len(expected), 180, "all deliveries after the kill")
        time.sleep(2)
        _assert_exactly_once(pair, expected)
        _assert_one_way(oneway)
    except BaseException:
        print(pair.logs())
        raise
    finally:
        pair.stop()
