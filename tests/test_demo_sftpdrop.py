"""The demo's SFTP drop point as a real server process: what a pushing sender needs works (with
paramiko, as transfer/sftppush.py uses it, and with OpenSSH's own sftp client), and everything
else is refused: other keys, passwords, reading back, listing, replacing an envelope, names
outside the envelope pattern, paths out of the account's directories."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from zonegate.gateways.demo_configs import free_port
from zonegate.gateways.demo_links import DropPoint, LinkPlan
from zonegate.gateways.demo_sftpdrop import listen_file, prepare

ENVELOPE = "0123456789abcdef0123456789abcdef.zge"


class Point:
    def __init__(self, root: Path) -> None:
        (root / "keys").mkdir(parents=True)
        self.drop = root / "drop"
        self.drop.mkdir()
        self.point = DropPoint("gw-b", free_port(), root / "gw-b-drop-point")
        self.point.accounts = {"gw-a": {"report": self.drop}}
        plan = LinkPlan("sftp", root, [], {"gw-b": self.point})
        [self.config] = prepare(plan, 64 * 1024)
        self.identity = root / "keys" / "gw-a.ssh_id_ed25519"
        self.known_hosts = root / "keys" / "gw-a.known_hosts"
        self.log = root / "drop-point.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zonegate.gateways.demo_sftpdrop", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while not listen_file(self.point).exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the drop point did not start"
            time.sleep(0.05)

    def client(self, user: str = "gw-a", key: Path | None = None, **kw) -> paramiko.SFTPClient:
        ssh = paramiko.SSHClient()
        ssh.load_host_keys(str(self.known_hosts))
        ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
        ssh.connect(
            "127.0.0.1",
            self.point.port,
            username=user,
            key_filename=str(key or self.identity),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            **kw,
        )
        return ssh.open_sftp()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def point(tmp_path: Path) -> Iterator[Point]:
    p = Point(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def _write(sftp: paramiko.SFTPClient, path: str, size: int) -> None:
    with sftp.open(path, "wb") as f:  # a refused write shows at the latest when it is closed
        f.write(b"x" * size)


def test_config_and_keys_are_private(point: Point) -> None:
    for path in (point.config, point.identity, *point.point.directory.glob("*_key")):
        assert path.stat().st_mode & 0o077 == 0, path
    listening = json.loads(listen_file(point.point).read_text())
    assert listening["port"] == point.point.port and listening["pid"] == point.proc.pid


def test_a_sender_uploads_then_renames_and_nothing_else(point: Point, tmp_path: Path) -> None:
    sftp = point.client()
    with sftp.open(f"/report/.tmp-{ENVELOPE}", "wb") as f:
        f.write(b"sealed bytes")
    sftp.posix_rename(f"/report/.tmp-{ENVELOPE}", f"/report/{ENVELOPE}")
    assert (point.drop / ENVELOPE).read_bytes() == b"sealed bytes"
    assert not (point.drop / f".tmp-{ENVELOPE}").exists()
    for beat in (b'{"n":1}', b'{"n":2}'):  # the heartbeat file is replaced, every time
        with sftp.open("/report/.tmp-heartbeat.json", "wb") as f:
            f.write(beat)
        sftp.posix_rename("/report/.tmp-heartbeat.json", "/report/heartbeat.json")
        assert (point.drop / "heartbeat.json").read_bytes() == beat

    # an envelope is never replaced, not even by its own sender
    with sftp.open(f"/report/.tmp-{ENVELOPE}", "wb") as f:
        f.write(b"other bytes")
    with pytest.raises(PermissionError):
        sftp.posix_rename(f"/report/.tmp-{ENVELOPE}", f"/report/{ENVELOPE}")
    with pytest.raises(OSError):
        sftp.rename(f"/report/.tmp-{ENVELOPE}", f"/report/{ENVELOPE}")
    assert (point.drop / ENVELOPE).read_bytes() == b"sealed bytes"
    sftp.remove(f"/report/.tmp-{ENVELOPE}")  # its own temporary file: allowed
    refused = {
        "read back": lambda: sftp.open(f"/report/{ENVELOPE}", "rb"),
        "list": lambda: sftp.listdir("/report"),
        "remove an envelope": lambda: sftp.remove(f"/report/{ENVELOPE}"),
        "a name of its own": lambda: sftp.open("/report/.tmp-notes.txt", "wb"),
        "no temporary name": lambda: sftp.open(f"/report/{ENVELOPE}", "wb"),
        "another directory": lambda: sftp.open(f"/dispatch/.tmp-{ENVELOPE}", "wb"),
        "out of the jail": lambda: sftp.open(f"/report/../../.tmp-{ENVELOPE}", "wb"),
        "mkdir": lambda: sftp.mkdir("/report/sub"),
        "symlink": lambda: sftp.symlink(f"/report/{ENVELOPE}", f"/report/.tmp-{ENVELOPE}"),
        "rename elsewhere": lambda: sftp.posix_rename("/report/.tmp-heartbeat.json", "/x"),
        "over the size limit": lambda: _write(sftp, f"/report/.tmp-{ENVELOPE}", 128 * 1024),
    }
    for what, attempt in refused.items():
        with pytest.raises(OSError):
            attempt()
            pytest.fail(f"{what}: accepted")
    assert sorted(p.name for p in point.drop.iterdir() if not p.name.startswith(".tmp-")) == [
        ENVELOPE,
        "heartbeat.json",
    ]


def test_only_the_accounts_key_logs_in(point: Point, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(paramiko.AuthenticationException):
        point.client(key=other)
    with pytest.raises(paramiko.AuthenticationException):
        point.client(user="gw-c")  # the right key, for an account that does not exist
    with pytest.raises(paramiko.AuthenticationException):
        ssh = paramiko.SSHClient()
        ssh.load_host_keys(str(point.known_hosts))
        ssh.connect(
            "127.0.0.1",
            point.point.port,
            username="gw-a",
            password="x",
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
    # and the sender refuses a drop point whose host key it does not know
    (tmp_path / "empty_known_hosts").write_text("")
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(tmp_path / "empty_known_hosts"))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        ssh.connect(
            "127.0.0.1",
            point.point.port,
            username="gw-a",
            key_filename=str(point.identity),
            look_for_keys=False,
            allow_agent=False,
        )


def test_openssh_sftp_client_drops_an_envelope_and_cannot_read_it(
    point: Point, tmp_path: Path
) -> None:
    local = tmp_path / "envelope"
    local.write_bytes(b"sealed by openssh")
    ssh_opts = [
        "-i",
        str(point.identity),
        "-o",
        f"UserKnownHostsFile={point.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-P",
        str(point.point.port),
    ]

    def sftp(batch: str) -> subprocess.CompletedProcess[str]:
        script = tmp_path / "batch"
        script.write_text(batch)
        return subprocess.run(
            ["sftp", "-b", str(script), *ssh_opts, "gw-a@127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    r = sftp(
        f"put {local} /report/.tmp-{ENVELOPE}\nrename /report/.tmp-{ENVELOPE} /report/{ENVELOPE}\n"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (point.drop / ENVELOPE).read_bytes() == b"sealed by openssh"
    r = sftp(f"get /report/{ENVELOPE} {tmp_path / 'back'}\n")
    assert r.returncode != 0 and not (tmp_path / "back").exists()
