"""The publish flow (internal-gw -> internet-gw, two officers' approvals) as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from harness import metric_value, wait_for, zg

from zonegate.gateways.agent import AgentContext
from zonegate.gateways.demo import write_gateway_pair
from zonegate.gateways.submit import submit_files
from zonegate.transfer.spool import Spool

#: agent -> the gateway that runs it for the publish flow
PUBLISH_AGENTS = {"ingest": "internal-gw", "sender": "internal-gw", "receiver": "internet-gw"}


class PublishPair:
    def __init__(self, root: Path, expires: str = "1h") -> None:
        self.root = root
        self.configs = write_gateway_pair(root, 16 * 1024**2, publish=True, review_expires=expires)
        self.internal = Spool(root / "internal-gw" / "spool")
        self.internet = Spool(root / "internet-gw" / "spool")
        self.people = root / "people"
        self.inbox_new = root / "internet-gw" / "inbox" / "publish" / "new"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def config(self, gateway: str) -> str:
        return str(self.configs[gateway])

    def key(self, person: str) -> str:
        return str(self.people / f"{person}.person.key")

    def start(self, *agents: str) -> None:
        for agent in agents:
            log = open(self.root / f"publish-{agent}.log", "ab")  # noqa: SIM115
            cmd = [sys.executable, "-m", "zonegate.bin.cli", "run", "-v", "--agent", agent]
            cmd += ["--config", self.config(PUBLISH_AGENTS[agent])]
            self.procs[agent] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def submit(self, name: str, data: bytes) -> str:
        """Drop a file on the publish flow and return its id once it waits in review/."""
        src = self.root / "src" / name
        src.parent.mkdir(exist_ok=True)
        src.write_bytes(data)
        submit_files(self.root / "internal-gw" / "outbox", "publish", [src])

        def found() -> str | None:
            for state in ("review", "quarantine"):
                for msg_id in self.internal.ids(state):
                    if self.internal.read_meta(state, msg_id).original_name == name:
                        return msg_id
            return None

        wait_for(lambda: found() is not None, 20, f"{name} to be collected")
        msg_id = found()
        assert msg_id is not None
        return msg_id

    def review(self, *args: str) -> subprocess.CompletedProcess[str]:
        return zg("review", *args, "--config", self.config("internal-gw"))

    def approve(self, msg_id: str, person: str) -> subprocess.CompletedProcess[str]:
        return self.review("approve", msg_id, "--key", self.key(person))

    def audit(self, gateway: str) -> list[dict]:
        log = self.root / gateway / "audit" / "audit.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()]

    def metric(self, agent: str, name: str, **labels: str) -> float:
        spool = self.internal if PUBLISH_AGENTS[agent] == "internal-gw" else self.internet
        path = AgentContext.runtime_file(spool.root, agent)
        wait_for(path.exists, 20, f"{agent} runtime file")
        url = json.loads(path.read_text())["metrics"]
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
            return metric_value(resp.read().decode(), name, **labels)
