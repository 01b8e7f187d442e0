"""A full disk under the sending gateway's spool: dropping fails with a clear error, ingest and
the sender wait (with a metric) instead of crashing or losing anything, nothing half-written is
delivered, and once space returns every file arrives exactly once.

The spool and outbox share one small tmpfs that the test mounts (the claim is a rename, so they
must share a filesystem); the audit log stays on another filesystem, as a deployment should keep
it, so that a full spool does not also stop the audit trail.
"""

from __future__ import annotations

import errno
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness import GatewayPair, metric_value, wait_for

from zonegate.gateways.submit import submit_files
from zonegate.transfer.spool import Spool

MiB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mount)],
                   check=True)  # fmt: skip
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path | None:
    """Write until the filesystem says no; returns the filler file (None: it was full already,
    the agents having taken what was left)."""
    filler = directory / "filler"
    block = b"\xaa" * 65536
    try:
        # Unbuffered: a buffered file keeps what the full disk refused and raises it again
        # when closed, outside the loop that expects it.
        f = open(filler, "wb", buffering=0)  # noqa: SIM115 - closed by the with below
    except OSError as e:
        assert e.errno == errno.ENOSPC
        return None
    with f:
        try:
            while True:
                f.write(block)  # a partial write is fine: the next one fails
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_full_spool_disk_waits_then_resumes_losing_nothing(
    pair: GatewayPair, small_fs: Path, tmp_path: Path
) -> None:
    cfg_path = pair.configs["internet-gw"]
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["paths"]["spool"] = str(small_fs / "spool")
    cfg["paths"]["outbox"] = str(small_fs / "outbox")
    cfg_path.write_text(yaml.safe_dump(cfg))
    pair.sender_spool = Spool(small_fs / "spool")
    pair.outbox = small_fs / "outbox"
    pair.start()

    src = tmp_path / "src"
    src.mkdir()
    expected = {}
    for i in range(8):
        p = src / f"case-{i}.bin"
        p.write_bytes(hashlib.sha256(str(i).encode()).digest() * (MiB // 32))
        expected[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()

    submit_files(pair.outbox, "import", [src / "case-0.bin"])
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 30, "the first delivery")

    filler = _fill(small_fs)
    assert filler is not None
    # A system dropping a file now gets the filesystem's own clear error, and nothing is queued.
    with pytest.raises(OSError) as raised:
        submit_files(pair.outbox, "import", [src / "case-1.bin"], wait=1)
    assert raised.value.errno == errno.ENOSPC
    assert list((pair.outbox / "import" / "new").iterdir()) == []

    # Room for the drops but not for claiming and sealing them all: agents must wait, not die.
    with open(filler, "r+b") as f:
        f.truncate(filler.stat().st_size - 7 * MiB - 256 * 1024)
    submit_files(pair.outbox, "import", [src / f"case-{i}.bin" for i in range(1, 8)], wait=5)
    spool_filler = _fill(small_fs / "spool")  # take what is left, so the next write fails
    wait_for(
        lambda: any(
            metric_value(pair.metrics(a), "zonegate_disk_full") == 1 for a in ("ingest", "sender")
        ),
        30,
        "an agent to report the full disk",
    )
    assert all(pair.alive(a) for a in ("ingest", "sender", "receiver")), pair.logs()
    delivered_while_full = {p.name for p in pair.inbox_new.iterdir()}
    for name in delivered_while_full:
        got = hashlib.sha256((pair.inbox_new / name).read_bytes()).hexdigest()
        assert got == expected[name], f"{name} was delivered damaged while the disk was full"

    filler.unlink()
    if spool_filler is not None:
        spool_filler.unlink()
    wait_for(
        lambda: pair.receiver_spool.depth("delivered") == 8, 60, "every file after space returned"
    )
    assert sorted(p.name for p in pair.inbox_new.iterdir()) == sorted(expected)
    for name, digest in expected.items():
        assert hashlib.sha256((pair.inbox_new / name).read_bytes()).hexdigest() == digest
    wait_for(lambda: metric_value(pair.metrics("sender"), "zonegate_disk_full") == 0, 10, "clear")
    assert pair.sender_spool.depth("corrupt") == 0
    assert pair.sender_spool.depth("quarantine") == 0
    from zonegate.audit.verify import verify

    for gw in ("internet-gw", "internal-gw"):
        assert verify(pair.audit_log(gw)).ok
