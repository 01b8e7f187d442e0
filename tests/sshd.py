"""A real OpenSSH sshd for tests: 127.0.0.1, a free port, its own config, host key and user key."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zonegate.gateways.demo_configs import free_port


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    identity: Path
    known_hosts: Path
    drop: Path

    @property
    def endpoint(self) -> str:
        return f"sftp://{self.user}@127.0.0.1:{self.port}{self.drop}"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True
        )
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    port = free_port()
    known = d / "known_hosts"
    host_pub = " ".join((d / "host.pub").read_text().split()[:2])
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    drop = tmp_path / "drop"
    drop.mkdir()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    log = d / "sshd.log"
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stderr=open(log, "wb"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {log.read_text()}")
            time.sleep(0.1)
        yield SshServer(port, getpass.getuser(), d / "client", known, drop)
    finally:
        proc.terminate()
        proc.wait(10)
