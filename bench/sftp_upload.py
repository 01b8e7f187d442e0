"""SFTP upload speed: zonegate's drop server against OpenSSH's own sshd, same file, same run.

Starts the gateway's real `sftp` agent and a private `sshd` (its own config, host key and port on
127.0.0.1), uploads one file to each with OpenSSH's `sftp` client in batch mode, and prints MB/s
and the drop server's peak RSS. Needs openssh-client and openssh-server (bin/system-packages.txt).

    .venv/bin/python bench/sftp_upload.py [--size-mib 1024] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from zonegate.gateways.demo import write_gateway_pair
from zonegate.gateways.sftp import listen_file
from zonegate.transfer.keys import generate_ssh_host_key

MiB = 1024 * 1024
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = next(
    (p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
     if os.path.exists(p)), "internal-sftp",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def make_source(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(i.to_bytes(8, "big") + block[8:])


def upload(user: str, port: int, key: Path, known: Path, src: Path, target: str) -> float:
    batch = src.parent / f"batch-{port}"
    batch.write_text(f"put {src} {target}\n")
    cmd = ["sftp", "-b", str(batch), "-P", str(port), "-i", str(key),
           "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
           f"{user}@127.0.0.1"]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"upload to port {port} failed: {result.stderr}")
    return elapsed


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = args.size_mib * MiB
    root = Path(tempfile.mkdtemp(prefix="zg-sftp-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        configs = write_gateway_pair(root, 2 * size)
        client_key = root / "client_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)],
                       check=True)  # fmt: skip
        client_pub = (root / "client_key.pub").read_text().strip()

        # zonegate's drop server
        zg_port = free_port()
        host_private, host_public = generate_ssh_host_key(root / "keys", "internet-gw")
        cfg_path = configs["internet-gw"]
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["sftp"] = {
            "listen": f"127.0.0.1:{zg_port}",
            "host_key": str(host_private),
            "accounts": [{"name": "bench", "authorized_keys": [client_pub], "flows": ["import"],
                          "max_file_size": 2 * size, "bytes_per_day": 4 * size}],
        }  # fmt: skip
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        zg_log = open(root / "sftp-agent.log", "wb")  # noqa: SIM115
        agent = subprocess.Popen(
            [sys.executable, "-m", "zonegate.bin.cli", "run", "--config", str(cfg_path),
             "--agent", "sftp"], stdout=zg_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(agent)
        listen = listen_file(root / "internet-gw" / "spool")
        deadline = time.monotonic() + 30
        while not listen.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        wait_port(zg_port)

        # OpenSSH's sshd, private config and host key, non-default port
        sshd_dir = root / "sshd"
        sshd_dir.mkdir()
        sshd_port = free_port()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(sshd_dir / "host_key")], check=True)  # fmt: skip
        (sshd_dir / "authorized_keys").write_text(client_pub + "\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        (sshd_dir / "sshd_config").write_text(
            f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {sshd_dir / 'host_key'}\n"
            f"AuthorizedKeysFile {sshd_dir / 'authorized_keys'}\nPidFile {sshd_dir / 'pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\n"
            f"Subsystem sftp {SFTP_SERVER}\n"
        )
        sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(sshd_dir / "sshd_config")],
            stderr=open(sshd_dir / "log", "wb"),  # noqa: SIM115
        )
        procs.append(sshd)
        wait_port(sshd_port)

        known = root / "known_hosts"
        zg_host = host_public.read_text().split()[:2]
        sshd_host = (sshd_dir / "host_key.pub").read_text().split()[:2]
        known.write_text(
            f"[127.0.0.1]:{zg_port} {' '.join(zg_host)}\n"
            f"[127.0.0.1]:{sshd_port} {' '.join(sshd_host)}\n"
        )
        src = root / "payload.bin"
        make_source(src, size)
        dest = root / "sshd-dest"
        dest.mkdir()
        user = os.environ.get("USER") or "root"

        zg_s = upload("bench", zg_port, client_key, known, src, "/import/payload.bin")
        rss = peak_rss(agent.pid)
        ssh_s = upload(user, sshd_port, client_key, known, src, str(dest / "payload.bin"))
        result = {
            "size_mib": args.size_mib,
            "zonegate_drop_server_mb_s": round(size / zg_s / 1e6, 1),
            "openssh_sshd_mb_s": round(size / ssh_s / 1e6, 1),
            "zonegate_seconds": round(zg_s, 2),
            "openssh_seconds": round(ssh_s, 2),
            "drop_server_peak_rss_mib": round(rss / MiB, 1),
            "client": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for k, v in result.items():
                print(f"{k}: {v}")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
