"""A private OpenSSH sshd on 127.0.0.1: a free port, a temporary host key and client key.

Its own config, keys and pid file live in a directory the caller owns; nothing of the system's
sshd is read or changed. The client side is OpenSSH's own `ssh`/`scp`/`sftp` with strict host
key checking against a known_hosts file written here, so a benchmark can never talk to a
different server by mistake.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zonegate.gateways.demo_configs import free_port  # re-exported for bench/sftp_upload.py

__all__ = ["LocalSshd", "free_port", "keygen", "local_sshd", "wait_port"]

SFTP_SERVER = next(
    (p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
     if os.path.exists(p)), "internal-sftp",
)  # fmt: skip


def wait_port(port: int, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def keygen(path: Path) -> Path:
    """An Ed25519 key pair without passphrase at `path` (private, 0600) and `path`.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass(frozen=True)
class LocalSshd:
    port: int
    user: str
    identity: Path  # the client's private key
    known_hosts: Path
    host_public: str  # "ssh-ed25519 AAAA..."
    directory: Path

    def client_options(self, known_hosts: Path | None = None) -> list[str]:
        """Options for ssh/scp/sftp: this key only, no prompts, only the host keys listed in
        `known_hosts` (default: this server's alone)."""
        known = known_hosts or self.known_hosts
        return [
            "-i", str(self.identity), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "GlobalKnownHostsFile=/dev/null",
        ]  # fmt: skip


@contextmanager
def local_sshd(directory: Path) -> Iterator[LocalSshd]:
    """Run sshd until the block ends; RuntimeError (with its log) if it does not come up."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin):
        raise RuntimeError("sshd not found: install openssh-server")
    directory.mkdir(parents=True, exist_ok=True)
    host, client = keygen(directory / "host_key"), keygen(directory / "client_key")
    (directory / "authorized_keys").write_text((directory / "client_key.pub").read_text())
    port = free_port()
    host_public = " ".join((directory / "host_key.pub").read_text().split()[:2])
    known = directory / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_public}\n")
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPidFile {directory / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\n"
        f"Subsystem sftp {SFTP_SERVER}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = directory / "sshd.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stderr=f)
    try:
        try:
            wait_port(port, 20, proc)
        except RuntimeError as e:
            raise RuntimeError(f"sshd did not start: {e}: {log.read_text()[-1000:]}") from None
        yield LocalSshd(port, getpass.getuser(), client, known, host_public, directory)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
