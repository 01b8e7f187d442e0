"""Acceptance 5: a report relayed across three tiers, each gateway its own processes and keys.

waitan-jo-gov-gw (tier 3) -> district-huangpu-gov-gw (tier 2, relay) -> municipal-bureau-intra-gw
(tier 1). The relay's spool never holds plaintext; the final audit trail shows every hop; a relay
that alters the envelope, a forged hop record and a missing one are refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import wait_for, zg

from zonegate.audit.verify import verify
from zonegate.gateways.demo_configs import BUREAU, DISTRICT, JUDICIAL, REPORT, write_relay_chain
from zonegate.gateways.submit import submit_files
from zonegate.transfer import envelope as env
from zonegate.transfer import hops as hop_records
from zonegate.transfer.ids import new_message_id
from zonegate.transfer.keys import load_encryption_public, load_signing_private
from zonegate.transfer.spool import Spool
from zonegate.transfer.zmqlink import ZmqLinkSender
from zonegate.zones.config import load_gateway_config
from zonegate.zones.topology import load_topology, route

ROOT = Path(__file__).resolve().parent.parent
MARKER = b"ZG-RELAY-PLAINTEXT-MARKER-5c1e"
AGENTS = {"ingest": JUDICIAL, "sender": JUDICIAL, "relay": DISTRICT, "receiver": BUREAU}


class Chain:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.configs = write_relay_chain(root)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *agents: str) -> None:
        for agent in agents:
            log = open(self.root / f"{agent}.log", "ab")  # noqa: SIM115
            cmd = [sys.executable, "-m", "zonegate.bin.cli", "run", "-v", "--agent", agent]
            cmd += ["--config", str(self.configs[AGENTS[agent]])]
            self.procs[agent] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def spool(self, gateway: str, sub: str = "") -> Spool:
        return Spool(self.root / gateway / "spool" / sub if sub else self.root / gateway / "spool")

    def audit_log(self, gateway: str) -> Path:
        return self.root / gateway / "audit" / "audit.jsonl"

    def audit(self, gateway: str) -> list[dict]:
        return [json.loads(line) for line in self.audit_log(gateway).read_text().splitlines()]

    def logs(self) -> str:
        return "\n".join(
            f"--- {a}\n{(self.root / f'{a}.log').read_text(errors='replace')[-3000:]}"
            for a in self.procs
        )


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = Chain(tmp_path / "chain")
    try:
        yield c
    finally:
        c.stop()


def _files_holding(directory: Path, needle: bytes) -> list[Path]:
    return [
        p
        for p in directory.rglob("*")
        if p.is_file() and not p.is_symlink() and needle in p.read_bytes()
    ]


def test_route_in_configs_is_the_topology_route() -> None:
    topology = load_topology(ROOT / "configs" / "topology.yaml")
    nodes = [n.name for n in route(topology, "waitan-jo", "municipal-bureau")]
    assert nodes == ["waitan-jo", "district-huangpu", "municipal-bureau"]
    gateways = {g.name for n in topology.nodes for g in n.gateways}
    assert {JUDICIAL, DISTRICT, BUREAU} <= gateways


def test_three_hop_report_no_plaintext_at_relay_every_hop_audited(
    chain: Chain, tmp_path: Path
) -> None:
    for gw in (JUDICIAL, DISTRICT, BUREAU):
        checked = zg("config", "check", str(chain.configs[gw]))
        assert checked.returncode == 0, checked.stdout + checked.stderr
    src = tmp_path / "src"
    src.mkdir()
    expected = {}
    for i, size in enumerate((0, 1000, 3 * 1024 * 1024 + 17)):
        data = (MARKER + os.urandom(97)) * (size // (len(MARKER) + 97) + 1) if size else b""
        name = f"report-{i} 报告.dat"
        (src / name).write_bytes(data[:size] if size else MARKER)
        expected[name] = hashlib.sha256((src / name).read_bytes()).hexdigest()
    chain.start("receiver", "relay", "sender", "ingest")
    submit_files(chain.root / JUDICIAL / "outbox", REPORT, [src])
    inbox = chain.root / BUREAU / "inbox" / REPORT / "new"
    bureau = chain.spool(BUREAU)
    wait_for(lambda: bureau.depth("delivered") >= len(expected), 60, "3 relayed deliveries")
    assert all(p.poll() is None for p in chain.procs.values()), chain.logs()

    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in inbox.iterdir()}
    assert got == expected
    assert bureau.depth("quarantine") == 0

    relay_spool = chain.spool(DISTRICT, "relay")
    assert relay_spool.depth("sent") == len(expected)
    # The scan can find the marker (it is in what arrived) and finds none at the relay.
    assert _files_holding(inbox, MARKER)
    assert _files_holding(chain.root / DISTRICT, MARKER) == []
    assert len([p for p in (chain.root / DISTRICT).rglob("*") if p.is_file()]) > 3

    # The delivered record at the bureau lists the hop; the relay audited its own step.
    delivered = [r for r in chain.audit(BUREAU) if r.get("event") == "delivered"]
    assert len(delivered) == len(expected)
    for rec in delivered:
        hops = json.loads(rec["extra"]["hops"])
        assert [(h["gateway"], h["from"], h["to"]) for h in hops] == [(DISTRICT, JUDICIAL, BUREAU)]
    msg_id = delivered[0]["message"]["id"]
    relayed = [
        r
        for r in chain.audit(DISTRICT)
        if r.get("event") == "relayed" and r["message"]["id"] == msg_id
    ]
    assert len(relayed) == 1 and relayed[0]["extra"]["hop_to"] == BUREAU

    logs = [str(chain.audit_log(g)) for g in (JUDICIAL, DISTRICT, BUREAU)]
    shown = zg("audit", "show", msg_id, *logs, "--json")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    order = [text.find(f'"{e}"') for e in ("sealed", "verified", "relayed", "delivered")]
    assert -1 not in order and order == sorted(order), text[:2000]
    for log in logs:
        result = verify(Path(log))
        assert result.ok, f"{log}: {result.problem}"


# --------------------------------------------------------------------------- refusals


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seal(keys: Path, plaintext: bytes, seq: int) -> tuple[str, env.Header, bytes]:
    """An envelope exactly as the judicial office seals a report for the bureau."""
    signing = load_signing_private(keys / f"{JUDICIAL}.sign.key")
    recipient = load_encryption_public(keys / f"{BUREAU}.kem.pub")
    msg_id = new_message_id()
    header = env.Header(
        version=1,
        message_id=msg_id,
        flow=REPORT,
        sequence=seq,
        sender=JUDICIAL,
        recipient=BUREAU,
        system="test",
        original_name=f"{msg_id[-8:]}.txt",
        content_type="text/plain",
        size=len(plaintext),
        sha256=hashlib.sha256(plaintext).hexdigest(),
        created=_now(),
        chunk_size=4096,
        sender_key=env.key_id(signing.public_key()),
        recipient_key=env.key_id(recipient),
        classification="classified",
    )
    out = io.BytesIO()
    env.seal(io.BytesIO(plaintext), out, header, recipient, signing)
    return msg_id, header, out.getvalue()


def _wrap(inner: bytes, header: env.Header, signer_file: Path) -> bytes:
    """A hop wrapper as a relay writes it, signed with the key in `signer_file`."""
    record = hop_records.make_hop(
        load_signing_private(signer_file),
        gateway=DISTRICT,
        came_from=JUDICIAL,
        goes_to=BUREAU,
        header=header,
        envelope_sha256=hashlib.sha256(inner).hexdigest(),
        previous=(),
        at=_now(),
    )
    out = io.BytesIO()
    hop_records.write_wrapper(out, (record,), io.BytesIO(inner))
    return out.getvalue()


class Wire:
    """The test's end of one link: the real PUSH adapter, playing the gateway named `sender`."""

    def __init__(self, endpoint: str, sender: str, tmp: Path) -> None:
        self.link = ZmqLinkSender(endpoint)
        self.sender = sender
        self.tmp = tmp
        self.stop = threading.Event()
        wait_for(lambda: bool(self.link.link_events()) or self.link.connected, 20, "link up")

    def send(self, msg_id: str, data: bytes) -> None:
        path = self.tmp / f"{msg_id}-{os.urandom(4).hex()}.env"
        path.write_bytes(data)
        assert self.link.send_envelope(path, msg_id, REPORT, self.sender, False, self.stop)


def _refusals(audit: list[dict]) -> dict[str, str]:
    return {
        r["message"]["id"]: r["reason"]
        for r in audit
        if r.get("event") in ("quarantined", "replay") and r.get("message")
    }


def test_altered_envelope_and_forged_or_missing_hop_records_are_refused(
    chain: Chain, tmp_path: Path
) -> None:
    keys = chain.root / "keys"
    flow = load_gateway_config(chain.configs[BUREAU]).flow(REPORT)
    chain.start("receiver", "relay")
    into_bureau = Wire(flow.transport.endpoint, DISTRICT, tmp_path)
    into_relay = Wire(flow.via[0].transport.endpoint, JUDICIAL, tmp_path)
    try:
        # Control: correctly wrapped by the district's real key -> delivered.
        good_id, header, inner = _seal(keys, b"good report\n", 1)
        into_bureau.send(good_id, _wrap(inner, header, keys / f"{DISTRICT}.sign.key"))
        bureau = chain.spool(BUREAU)
        wait_for(lambda: bureau.depth("delivered") == 1, 20, "the valid relayed envelope")

        cases: dict[str, str] = {}
        # A relay that alters the envelope and signs its hop over the altered bytes.
        msg_id, header, inner = _seal(keys, b"x" * 9000, 2)
        altered = bytearray(inner)
        altered[len(altered) - 64 - 30] ^= 1
        into_bureau.send(msg_id, _wrap(bytes(altered), header, keys / f"{DISTRICT}.sign.key"))
        cases[msg_id] = "bad-signature"
        # A hop record forged with a key that is not the district's.
        msg_id, header, inner = _seal(keys, b"forged hop\n", 3)
        into_bureau.send(msg_id, _wrap(inner, header, keys / f"{JUDICIAL}.sign.key"))
        cases[msg_id] = "bad-hop"
        # A valid hop record lifted onto another envelope.
        msg_id, header, inner = _seal(keys, b"lifted hop\n", 4)
        _other_id, other_header, other_inner = _seal(keys, b"other\n", 5)
        lifted = _wrap(other_inner, other_header, keys / f"{DISTRICT}.sign.key")
        _hops, offset = hop_records.read_wrapper(io.BytesIO(lifted))
        into_bureau.send(msg_id, lifted[:offset] + inner)
        cases[msg_id] = "bad-hop"
        # No hop record at all on a relayed flow (the relay was bypassed).
        msg_id, header, inner = _seal(keys, b"bypass\n", 6)
        into_bureau.send(msg_id, inner)
        cases[msg_id] = "bad-hop"

        wait_for(lambda: set(cases) <= set(_refusals(chain.audit(BUREAU))), 20, "bureau refusals")
        refusals = _refusals(chain.audit(BUREAU))
        for msg_id, code in cases.items():
            assert refusals[msg_id].startswith(code), (code, refusals[msg_id])
        assert bureau.depth("delivered") == 1
        assert list((chain.root / BUREAU / "inbox" / REPORT / "tmp").iterdir()) == []

        # The relay itself refuses an envelope altered on the way from the judicial office,
        # and one whose id it has already relayed (a replay).
        relay = chain.spool(DISTRICT, "relay")
        msg_id, header, inner = _seal(keys, b"y" * 5000, 7)
        bad = bytearray(inner)
        bad[len(bad) - 64 - 10] ^= 1
        into_relay.send(msg_id, bytes(bad))
        ok_id, _h, ok_inner = _seal(keys, b"relayed once\n", 8)
        into_relay.send(ok_id, ok_inner)
        wait_for(lambda: relay.depth("sent") == 1, 20, "one relayed envelope")
        into_relay.send(ok_id, ok_inner)
        wait_for(lambda: relay.depth("quarantine") == 2, 20, "two relay refusals")
        relay_refusals = _refusals(chain.audit(DISTRICT))
        assert relay_refusals[msg_id].startswith("bad-signature")
        assert relay_refusals[ok_id].startswith("replay")
        wait_for(lambda: bureau.depth("delivered") == 2, 20, "the relayed one delivered")
    finally:
        into_bureau.link.close()
        into_relay.link.close()
