"""SFTP upload speed: zonegate's drop server against OpenSSH's own sshd, same file, same run.

Starts the gateway's real `sftp` agent and a private `sshd` (zgbench/sshd.py: its own config,
host key and port on 127.0.0.1), uploads one file to each with OpenSSH's `sftp` client in batch
mode, and prints MB/s and the drop server's peak RSS. Needs openssh-client and openssh-server
(bin/system-packages.txt).

    .venv/bin/python bench/sftp_upload.py [--size-mib 1024] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from zgbench.baselines import make_file
from zgbench.pair import proc_memory
from zgbench.sshd import LocalSshd, free_port, local_sshd, wait_port

from zonegate.gateways.demo import write_gateway_pair
from zonegate.gateways.sftp import listen_file
from zonegate.transfer.keys import generate_ssh_host_key

MiB = 1024 * 1024


def upload(server: LocalSshd, user: str, port: int, known: Path, src: Path, target: str) -> float:
    batch = src.parent / f"batch-{port}"
    batch.write_text(f"put {src} {target}\n")
    cmd = ["sftp", "-b", str(batch), "-P", str(port), *server.client_options(known)]
    cmd.append(f"{user}@127.0.0.1")
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"upload to port {port} failed: {result.stderr}")
    return elapsed


def start_drop_server(root: Path, size: int, client_pub: str) -> tuple[subprocess.Popen, int, Path]:
    """internet-gw's `sftp` agent with one account for the client key; (process, port, host pub)."""
    configs = write_gateway_pair(root, 2 * size)
    port = free_port()
    host_private, host_public = generate_ssh_host_key(root / "keys", "internet-gw")
    cfg_path = configs["internet-gw"]
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["sftp"] = {
        "listen": f"127.0.0.1:{port}",
        "host_key": str(host_private),
        "accounts": [{"name": "bench", "authorized_keys": [client_pub], "flows": ["import"],
                      "max_file_size": 2 * size, "bytes_per_day": 4 * size}],
    }  # fmt: skip
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with open(root / "sftp-agent.log", "wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "zonegate.bin.cli", "run", "--config", str(cfg_path),
             "--agent", "sftp"], stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    listen = listen_file(root / "internet-gw" / "spool")
    deadline = time.monotonic() + 30
    while not listen.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    wait_port(port, proc=agent)
    return agent, port, host_public


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = args.size_mib * MiB
    root = Path(tempfile.mkdtemp(prefix="zg-sftp-bench-"))
    agent = None
    try:
        with local_sshd(root / "sshd") as sshd:
            client_pub = sshd.identity.with_suffix(".pub").read_text().strip()
            agent, zg_port, host_public = start_drop_server(root / "zg", size, client_pub)
            known = root / "known_hosts"
            zg_host = " ".join(host_public.read_text().split()[:2])
            known.write_text(
                f"[127.0.0.1]:{zg_port} {zg_host}\n[127.0.0.1]:{sshd.port} {sshd.host_public}\n"
            )
            src = root / "payload.bin"
            make_file(src, size)
            dest = root / "sshd-dest"
            dest.mkdir()
            zg_s = upload(sshd, "bench", zg_port, known, src, "/import/payload.bin")
            rss = proc_memory(agent.pid).get("VmHWM", 0)
            ssh_s = upload(sshd, sshd.user, sshd.port, known, src, str(dest / "payload.bin"))
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
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
