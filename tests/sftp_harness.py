"""A GatewayPair whose internet side runs the SFTP drop server, with client keys and clients."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import paramiko
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import GatewayPair, wait_for

from zonegate.gateways.demo_configs import free_port
from zonegate.gateways.sftp import listen_file
from zonegate.transfer.keys import generate_ssh_host_key

ACCOUNTS = {
    "oa": {"flows": ["import"], "max_file_size": 1024 * 1024, "max_in_flight": 2},
    "mail": {"flows": ["letters"]},
    "bulk": {"flows": ["import"], "max_file_size": "2 GiB"},
}


def client_key(path: Path) -> str:
    """Write an OpenSSH Ed25519 client key (0600); return its public line."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


class SftpPair(GatewayPair):
    def __init__(self, root: Path, policy: dict | None = None) -> None:
        super().__init__(root, limit=2 * 1024**3)
        self.port = free_port()
        keys = root / "keys"
        host_private, host_public = generate_ssh_host_key(keys, "internet-gw")
        self.host_public = host_public.read_text().split()[:2]
        self.client_keys: dict[str, Path] = {}
        accounts = []
        for name, extra in ACCOUNTS.items():
            path = root / f"{name}.key"
            line = client_key(path)
            self.client_keys[name] = path
            accounts.append({"name": name, "authorized_keys": [line], **extra})
        cfg_path = self.configs["internet-gw"]
        cfg = yaml.safe_load(cfg_path.read_text())
        letters = json.loads(json.dumps(cfg["flows"][0]))
        letters["name"] = "letters"
        letters["transport"]["endpoint"] = f"tcp://127.0.0.1:{free_port()}"
        cfg["flows"].append(letters)
        if policy:
            cfg["flows"][0]["policy"].update(policy)
        cfg["metrics"]["sftp"] = "127.0.0.1:0"
        cfg["sftp"] = {
            "listen": f"127.0.0.1:{self.port}",
            "host_key": os.path.relpath(host_private, cfg_path.parent),
            "login_timeout": "3s",
            "accounts": accounts,
        }
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(self.host_public)}\n")

    def start_sftp(self) -> None:
        self.start("sftp")
        path = listen_file(self.sender_spool.root)
        wait_for(path.exists, 30, "the SFTP server to listen")
        wait_for(lambda: json.loads(path.read_text())["port"] == self.port, 10, "its port")

    def pid(self, agent: str) -> int:
        return self.procs[agent].pid

    def openssh(
        self, account: str, batch: str, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """Run OpenSSH's own `sftp` in batch mode, key auth, host key checked."""
        script = self.root / f"batch-{account}.txt"
        script.write_text(batch)
        return subprocess.run(
            [
                "sftp",
                "-b",
                str(script),
                "-P",
                str(self.port),
                "-i",
                str(self.client_keys[account]),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "PasswordAuthentication=no",
                f"{account}@127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def paramiko(self, account: str) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            "127.0.0.1",
            port=self.port,
            username=account,
            key_filename=str(self.client_keys[account]),
            look_for_keys=False,
            allow_agent=False,
            timeout=20,
        )
        return client

    def audit_records(self) -> list[dict]:
        path = self.audit_log("internet-gw")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def outbox_files(self) -> list[str]:
        out = []
        for d in sorted(self.outbox.glob("*/*")):
            out += [f"{d.parent.name}/{d.name}/{p.name}" for p in d.iterdir()]
        return out

    def peak_rss(self, agent: str) -> int:
        """VmHWM of a running agent process, in bytes."""
        for line in Path(f"/proc/{self.pid(agent)}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")
