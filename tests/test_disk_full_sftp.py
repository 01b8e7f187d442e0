"""A full disk under the SFTP drop server: the client is told plainly, nothing half-written is
kept or delivered, the metric says so, and uploads work again once space returns."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness import metric_value, wait_for
from sftp_harness import SftpPair
from test_disk_full import _fill

from zonegate.transfer.spool import Spool


@pytest.fixture
def sftp_on_small_fs(tmp_path: Path) -> Iterator[SftpPair]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)],
                   check=True)  # fmt: skip
    pair = SftpPair(tmp_path / "gw")
    cfg_path = pair.configs["internet-gw"]
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["paths"]["spool"] = str(mount / "spool")
    cfg["paths"]["outbox"] = str(mount / "outbox")
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    pair.sender_spool = Spool(mount / "spool")
    pair.outbox = mount / "outbox"
    pair.mount = mount  # type: ignore[attr-defined]
    try:
        yield pair
    finally:
        pair.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_sftp_upload_to_a_full_disk_fails_clearly_then_recovers(
    sftp_on_small_fs: SftpPair, tmp_path: Path
) -> None:
    pair = sftp_on_small_fs
    pair.start("ingest", "sender", "receiver")
    pair.start_sftp()
    for agent in ("ingest", "sender"):  # up before the disk fills: starting needs a little room
        pair.metrics(agent)
    big = tmp_path / "report.txt"
    big.write_bytes(b"".join(b"line %07d of the quarterly report\n" % i for i in range(60000)))
    filler = _fill(pair.mount)  # type: ignore[attr-defined]

    # OpenSSH's own client (SFTP v3 carries only a status code: it prints "Failure") ...
    r = pair.openssh("bulk", f"put {big} /import/report.txt\n")
    assert r.returncode != 0
    assert 'write remote "/import/report.txt": Failure' in r.stderr, r.stderr
    # ... and a client that shows the server's message (paramiko) reads why.
    client = pair.paramiko("bulk")
    sftp = client.open_sftp()
    with pytest.raises(OSError) as raised, sftp.open("/import/report2.txt", "wb") as f:
        f.set_pipelined(False)  # the error comes with the write that hit the full disk
        f.write(big.read_bytes())
    assert "disk is full" in str(raised.value), raised.value
    sftp.close()
    client.close()
    text = pair.metrics("sftp")
    assert metric_value(text, "zonegate_disk_full") == 1
    assert metric_value(text, "zonegate_rejections_total", stage="sftp", reason="disk-full") == 2
    assert not list((pair.outbox / "import" / "tmp").iterdir()), "half an upload was kept"
    assert not list((pair.outbox / "import" / "new").iterdir())
    refused = [r for r in pair.audit_records() if r["event"] == "upload-aborted"]
    assert refused and refused[-1]["reason"].startswith("disk-full:")

    filler.unlink()
    client = pair.paramiko("bulk")
    sftp = client.open_sftp()
    sftp.put(str(big), "/import/report.txt")
    sftp.close()
    client.close()
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 60, "the upload delivered")
    delivered = pair.inbox_new / "report.txt"
    assert delivered.read_bytes() == big.read_bytes()
    assert metric_value(pair.metrics("sftp"), "zonegate_disk_full") == 0
