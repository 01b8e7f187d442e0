"""The SFTP drop server against real clients: OpenSSH's `sftp` and paramiko (acceptance 1, 2, 4).

The server is the real `sftp` agent process of a real gateway; the files travel on through the
real ingest, sender and receiver agents. Hostile requests must each be refused with a clear
reason, leave an audit record, and change nothing in the outbox or the spool.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from harness import make_file, wait_for
from sftp_harness import SftpPair

from zonegate.audit.verify import verify

MiB = 1024 * 1024


@pytest.fixture
def sftp_pair(tmp_path: Path) -> Iterator[SftpPair]:
    pair = SftpPair(tmp_path, policy={"text": {"markings": True}})
    try:
        yield pair
    finally:
        pair.stop()


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


# -- acceptance 1 ------------------------------------------------------------------------------


def test_openssh_sftp_and_paramiko_uploads_are_delivered(sftp_pair: SftpPair, tmp_path: Path):
    pair = sftp_pair
    pair.start()
    pair.start_sftp()
    src = tmp_path / "src"
    src.mkdir()
    openssh_file = src / "申请 from-openssh.csv"
    openssh_file.write_text("编号,姓名\n1,张三\n" * 1000)
    paramiko_file = src / "letter-from-paramiko.txt"
    make_file(paramiko_file, 600 * 1024 + 17, seed=7)  # oa may drop up to 1 MiB

    result = pair.openssh("bulk", f'cd /import\nput "{openssh_file}"\nls -l /\n')
    assert result.returncode == 0, result.stderr
    assert "import" in result.stdout  # the jail's root lists the account's flows

    client = pair.paramiko("oa")
    with client.open_sftp() as sftp:
        assert sorted(sftp.listdir("/")) == ["import"]
        attrs = sftp.put(str(paramiko_file), "/import/letter.bin")
        assert attrs.st_size == paramiko_file.stat().st_size
    client.close()

    wait_for(lambda: pair.receiver_spool.depth("delivered") >= 2, 120, "both deliveries")
    delivered = {p.name: _sha(p) for p in pair.inbox_new.iterdir()}
    assert delivered == {
        openssh_file.name: _sha(openssh_file),
        "letter.bin": _sha(paramiko_file),
    }
    records = pair.audit_records()
    received = [r for r in records if r["event"] == "received" and r["agent"] == "sftp"]
    assert {(r["who"]["system"], r["message"]["name"]) for r in received} == {
        ("bulk", openssh_file.name),
        ("oa", "letter.bin"),
    }
    assert {r["who"]["system"] for r in records if r["event"] == "login"} == {"bulk", "oa"}
    assert pair.outbox_files() == []  # claimed from new/, nothing left in tmp/
    for gateway in ("internet-gw", "internal-gw"):
        assert verify(pair.audit_log(gateway)).ok


# -- acceptance 2 ------------------------------------------------------------------------------


class Hostile:
    """Runs one hostile action and checks: refused, audited with a reason, nothing changed."""

    def __init__(self, pair: SftpPair) -> None:
        self.pair = pair

    def refused(
        self, event: str, needle: str, request: str | None = None, left: tuple[str, ...] = ()
    ) -> dict:
        def found() -> dict | None:
            for r in reversed(self.pair.audit_records()):
                if (
                    r["event"] == event
                    and needle in (r["reason"] or "")
                    and (request is None or r.get("extra", {}).get("request") == request)
                ):
                    return r
            return None

        wait_for(lambda: found() is not None, 10, f"an audit record {event}: {needle}")
        record = found()
        assert record is not None and record["outcome"] == "refused"
        files = [f for f in self.pair.outbox_files() if not (left and f.startswith(left))]
        assert files == [], "a refused request left something behind"
        assert self.pair.sender_spool.depth("incoming") == 0
        return record


@pytest.fixture
def hostile(sftp_pair: SftpPair) -> Hostile:
    sftp_pair.start_sftp()  # the drop server alone: whatever it lets through stays visible
    return Hostile(sftp_pair)


def _sftp(pair: SftpPair, account: str = "oa") -> tuple[paramiko.SSHClient, paramiko.SFTPClient]:
    client = pair.paramiko(account)
    return client, client.open_sftp()


def test_dotdot_and_absolute_paths_are_refused(hostile: Hostile, tmp_path: Path) -> None:
    client, sftp = _sftp(hostile.pair)
    for target, needle in [
        ("/import/../../etc/cron.d/evil", "'..'"),
        ("../outbox/import/new/x", "'..'"),
        ("/etc/passwd", "'etc' is not a flow"),
        ("/tmp/evil", "'tmp' is not a flow"),
        ("/import/sub/dir.txt", "no subdirectories"),
    ]:
        with pytest.raises(OSError):
            sftp.open(target, "wb")
        hostile.refused("request-refused", needle, "open")
    client.close()


def test_symlink_and_hardlink_creation_is_refused(hostile: Hostile) -> None:
    pair = hostile.pair
    result = pair.openssh("oa", "-ln -s /etc/passwd /import/pw\n-ln /import/a /import/b\n")
    assert "denied" in (result.stdout + result.stderr).lower()
    hostile.refused("request-refused", "symbolic links cannot be created", "symlink")
    hostile.refused("request-refused", "hard links cannot be created", "link")
    client, sftp = _sftp(pair)
    with pytest.raises(OSError):
        sftp.symlink("/etc/shadow", "/import/shadow.txt")
    with pytest.raises(OSError):
        sftp.rename("/import/a", "/import/b")
    hostile.refused("request-refused", "cannot be renamed", "rename")
    client.close()


def test_reading_or_listing_another_systems_outbox_is_refused(hostile: Hostile) -> None:
    client, sftp = _sftp(hostile.pair, "oa")
    with pytest.raises(OSError):
        sftp.listdir("/letters")  # mail's flow
    hostile.refused("request-refused", "'letters' is not a flow", "list")
    with pytest.raises(OSError):
        sftp.open("/letters/anything.txt", "rb")
    hostile.refused("request-refused", "write-only", "read")
    with pytest.raises(OSError):
        sftp.open("/import/x.txt", "rb")  # its own drop box cannot be read back either
    assert sftp.listdir("/import") == []  # others' files in the shared flow stay invisible
    client.close()


def test_upload_to_a_flow_not_allowed_is_refused(hostile: Hostile, tmp_path: Path) -> None:
    sample = tmp_path / "x.txt"
    sample.write_text("hello\n")
    result = hostile.pair.openssh("oa", f"put {sample} /letters/x.txt\n")
    assert result.returncode != 0
    hostile.refused("request-refused", "'letters' is not a flow this account may use", "open")


def test_password_login_and_unknown_keys_are_refused(hostile: Hostile) -> None:
    pair = hostile.pair
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - the attacker
    with pytest.raises(paramiko.AuthenticationException):
        client.connect("127.0.0.1", port=pair.port, username="oa", password="hunter2",
                       look_for_keys=False, allow_agent=False, timeout=10)  # fmt: skip
    client.close()
    record = hostile.refused("login-refused", "no accepted public key")
    assert record["extra"]["user"] == "oa"
    # another account's key does not open this one
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507
    with pytest.raises(paramiko.AuthenticationException):
        client.connect("127.0.0.1", port=pair.port, username="oa",
                       key_filename=str(pair.client_keys["mail"]),
                       look_for_keys=False, allow_agent=False, timeout=10)  # fmt: skip
    client.close()
    wait_for(
        lambda: sum(r["event"] == "login-refused" for r in pair.audit_records()) >= 2,
        10,
        "a second login-refused",
    )


def test_shell_exec_pty_scp_and_port_forwarding_are_refused(hostile: Hostile) -> None:
    client = hostile.pair.paramiko("oa")
    transport = client.get_transport()
    assert transport is not None
    assert transport.remote_version == "SSH-2.0-zonegate"  # no software version to look up
    for request, needle, action in [
        ("exec", "running a command (id)", lambda ch: ch.exec_command("id")),
        ("scp", "running a command (scp -t /import)", lambda ch: ch.exec_command("scp -t /import")),
        ("shell", "a shell", lambda ch: ch.invoke_shell()),
        ("subsystem", "the subsystem 'netconf'", lambda ch: ch.invoke_subsystem("netconf")),
    ]:
        channel = transport.open_session()
        with pytest.raises(paramiko.SSHException):
            action(channel)
        channel.close()
        hostile.refused("request-refused", needle, request)
    channel = transport.open_session()
    with pytest.raises(paramiko.SSHException):
        channel.get_pty()  # refused by asyncssh itself (allow_pty=False), before any session
    channel.close()
    with pytest.raises(paramiko.ChannelException):
        transport.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 40000))
    hostile.refused("request-refused", "direct-tcpip to 127.0.0.1:22", "port-forward")
    with pytest.raises(paramiko.SSHException):
        transport.request_port_forward("127.0.0.1", 0)
    hostile.refused("request-refused", "tcpip-forward", "port-forward")
    client.close()


def test_an_upload_cut_off_half_way_leaves_only_an_audit_record(hostile: Hostile) -> None:
    pair = hostile.pair
    client, sftp = _sftp(pair)
    f = sftp.open("/import/half.bin", "wb")
    f.write(os.urandom(256 * 1024))
    f.flush()
    tmp = pair.outbox / "import" / "tmp"
    wait_for(lambda: any(tmp.iterdir()), 10, "the partial upload in tmp/")
    transport = client.get_transport()
    assert transport is not None
    transport.sock.shutdown(socket.SHUT_RDWR)  # the line drops; no CLOSE is ever sent
    transport.sock.close()
    record = hostile.refused("upload-aborted", "the session ended before the file was closed")
    assert record["message"]["name"] == "half.bin"
    assert not list((pair.outbox / "import" / "new").iterdir())


def test_a_file_over_the_size_limit_is_refused(hostile: Hostile, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    make_file(big, MiB + 1, seed=1)  # oa may drop 1 MiB
    result = hostile.pair.openssh("oa", f"put {big} /import/big.bin\n")
    assert result.returncode != 0
    hostile.refused("upload-aborted", "too-large: the file is over this account's limit")


def test_more_files_in_flight_than_allowed_are_refused(hostile: Hostile) -> None:
    pair = hostile.pair
    client, sftp = _sftp(pair)
    first = sftp.open("/import/one.txt", "wb")
    second = sftp.open("/import/two.txt", "wb")
    with pytest.raises(OSError):
        sftp.open("/import/three.txt", "wb")  # oa may have 2 in flight
    # the two accepted uploads are in tmp/ until closed; the third left nothing
    record = hostile.refused("request-refused", "2 files in flight", "open", left=("import/tmp",))
    assert len(list((pair.outbox / "import" / "tmp").iterdir())) == 2
    assert record["who"]["system"] == "oa"
    first.write(b"1\n")
    second.write(b"2\n")
    first.close()
    second.close()
    new = pair.outbox / "import" / "new"
    assert sorted(p.name for p in new.iterdir()) == ["one.txt", "two.txt"]
    client.close()


def test_names_with_nul_or_control_characters_are_refused(hostile: Hostile) -> None:
    client, sftp = _sftp(hostile.pair)
    with pytest.raises(OSError):
        sftp.open("/import/a\x00b.txt", "wb")
    hostile.refused("request-refused", "NUL", "open")
    with pytest.raises(OSError):
        sftp.open("/import/evil\x1b[2J.txt", "wb")
    hostile.refused("request-refused", "bad file name", "open")
    client.close()


def test_a_silent_client_is_dropped_at_the_login_timeout(hostile: Hostile) -> None:
    with socket.create_connection(("127.0.0.1", hostile.pair.port), timeout=20) as s:
        banner = s.recv(256)
        assert banner.startswith(b"SSH-2.0-zonegate")
        started = time.monotonic()
        s.settimeout(20)
        while s.recv(4096):
            pass  # the server closes the connection when the login timeout expires
        assert time.monotonic() - started < 15
    hostile.refused("login-refused", "no accepted public key")


# -- acceptance 4 ------------------------------------------------------------------------------


def _constant_memory_upload(pair: SftpPair, tmp_path: Path, size: int) -> None:
    pair.start("ingest")
    pair.start_sftp()
    src = tmp_path / "big.csv"
    line = "编号,姓名,备注\n1,张三,普通数据没有标记\n".encode()
    with open(src, "wb") as f:
        block = line * (MiB // len(line))
        written = 0
        while written < size:
            piece = block[: size - written]
            f.write(piece)
            written += len(piece)
    result = pair.openssh("bulk", f"put {src} /import/big.csv\n", timeout=1800)
    assert result.returncode == 0, result.stderr
    spool = pair.sender_spool
    wait_for(lambda: spool.depth("ready") + spool.depth("quarantine") == 1, 900, "the check")
    assert spool.depth("ready") == 1, pair.audit_records()[-1]
    limit = 100 * MiB
    for agent in ("sftp", "ingest"):
        peak = pair.peak_rss(agent)
        assert peak < limit, f"{agent} peaked at {peak / MiB:.1f} MiB"


def test_a_256_mib_upload_runs_in_constant_memory(sftp_pair: SftpPair, tmp_path: Path) -> None:
    _constant_memory_upload(sftp_pair, tmp_path, 256 * MiB)


@pytest.mark.slow
def test_a_1_gib_upload_runs_in_constant_memory(sftp_pair: SftpPair, tmp_path: Path) -> None:
    _constant_memory_upload(sftp_pair, tmp_path, 1024 * MiB)
