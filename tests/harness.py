"""Shared test harness: real gateways as real processes on loopback, in a temp directory."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from zonegate.gateways.agent import AgentContext
from zonegate.gateways.demo import write_gateway_pair
from zonegate.transfer import envelope as env
from zonegate.transfer.ids import new_message_id
from zonegate.transfer.keys import load_encryption_public, load_signing_private
from zonegate.transfer.spool import Spool

AGENTS = {
    "ingest": "internet-gw",
    "sender": "internet-gw",
    "receiver": "internal-gw",
    "sftp": "internet-gw",  # started only by tests that add an sftp section
}


def zg(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
    """Run the real `zonegate` command line in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "zonegate.bin.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


class GatewayPair:
    """internet-gw (ingest + sender) and internal-gw (receiver), each agent its own process."""

    def __init__(
        self,
        root: Path,
        limit: int = 128 * 1024**2,
        transports: dict[str, dict] | None = None,
        netns: dict[str, str] | None = None,
        batch: bool = False,
    ) -> None:
        """`netns` maps an agent to the network namespace its process runs in; `batch` puts
        small messages into containers (docs/batch.md)."""
        self.root = root
        self.netns = netns or {}
        self.configs = write_gateway_pair(root, limit, transports=transports, batch=batch)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.sender_spool = Spool(root / "internet-gw" / "spool")
        self.receiver_spool = Spool(root / "internal-gw" / "spool")
        self.outbox = root / "internet-gw" / "outbox"
        self.inbox_new = root / "internal-gw" / "inbox" / "import" / "new"

    def config(self, agent: str) -> Path:
        return self.configs[AGENTS[agent]]

    def start(
        self, *agents: str, wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        """Start agents; `wrapper` prefixes the command (e.g. faketime, ip netns exec), `env`
        adds to their environment (e.g. ZONEGATE_CRASH_AT)."""
        for agent in agents or ("ingest", "sender", "receiver"):
            log = open(self.root / f"{agent}.log", "ab")  # noqa: SIM115
            ns = self.netns.get(agent)
            cmd = ["ip", "netns", "exec", ns] if ns else []
            cmd += [*wrapper, sys.executable, "-m", "zonegate.bin.cli", "run", "-v"]
            cmd += ["--config", str(self.config(agent)), "--agent", agent]
            # Its own process group: a wrapper that forks (faketime) must not leave the agent
            # running when the wrapper is signalled.
            self.procs[agent] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
            log.close()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        """Signal the agent and whatever wrapper runs it (the process group it leads)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    @staticmethod
    def _wait_group(proc: subprocess.Popen[bytes], timeout: float) -> bool:
        """Wait until no process of the agent's group is left; False on timeout."""
        proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False

    def kill(self, agent: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[agent]
        self._signal(proc, sig)
        # a graceful stop writes a final audit checkpoint; slow on a loaded box
        if not self._wait_group(proc, 90):
            self._signal(proc, signal.SIGKILL)
            self._wait_group(proc, 30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                if self._wait_group(proc, 20):
                    continue
            except subprocess.TimeoutExpired:
                pass
            self._signal(proc, signal.SIGKILL)
            proc.wait()

    def alive(self, agent: str) -> bool:
        return self.procs[agent].poll() is None

    def metrics(self, agent: str) -> str:
        spool = self.sender_spool if AGENTS[agent] == "internet-gw" else self.receiver_spool
        path = AgentContext.runtime_file(spool.root, agent)
        wait_for(path.exists, 20, f"{agent} runtime file")
        url = json.loads(path.read_text())["metrics"]
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
            return resp.read().decode()

    def audit_log(self, gateway: str) -> Path:
        return self.root / gateway / "audit" / "audit.jsonl"

    def logs(self) -> str:
        out = []
        for agent in AGENTS:
            p = self.root / f"{agent}.log"
            if p.exists():
                out.append(f"--- {agent}\n{p.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[GatewayPair]:
    gp = GatewayPair(tmp_path)
    try:
        yield gp
    finally:
        gp.stop()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head == name and not labels:
            return float(value)
        if head.startswith(name + "{"):
            got = dict(
                part.split("=", 1) for part in head[len(name) + 1 : -1].split(",") if "=" in part
            )
            got = {k: v.strip('"') for k, v in got.items()}
            if all(got.get(k) == v for k, v in labels.items()):
                return float(value)
    return 0.0


def make_file(path: Path, size: int, seed: int) -> None:
    """Distinct content per seed without generating `size` random bytes."""
    block = os.urandom(65536)
    tag = seed.to_bytes(8, "big")
    with open(path, "wb") as f:
        written = 0
        i = 0
        while written < size:
            piece = (tag + i.to_bytes(8, "big") + block)[: size - written]
            f.write(piece)
            written += len(piece)
            i += 1


def seal_test_envelope(
    pair: GatewayPair, plaintext: bytes, chunk_size: int = env.DEFAULT_CHUNK_SIZE
):
    """An envelope sealed exactly as internet-gw seals one: (id, header, bytes)."""
    keys = pair.root / "keys"
    signing = load_signing_private(keys / "internet-gw.sign.key")
    recipient = load_encryption_public(keys / "internal-gw.kem.pub")
    msg_id = new_message_id()
    header = env.Header(
        version=1,
        message_id=msg_id,
        flow="import",
        sequence=1,
        sender="internet-gw",
        recipient="internal-gw",
        system="test",
        original_name=f"{msg_id[-8:]}.txt",
        content_type="text/plain",
        size=len(plaintext),
        sha256=hashlib.sha256(plaintext).hexdigest(),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        chunk_size=chunk_size,
        sender_key=env.key_id(signing.public_key()),
        recipient_key=env.key_id(recipient),
        classification="public",
    )
    out = io.BytesIO()
    env.seal(io.BytesIO(plaintext), out, header, recipient, signing)
    return msg_id, header, bytearray(out.getvalue())
