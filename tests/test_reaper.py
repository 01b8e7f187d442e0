"""The reaper: a removal is a rename at once, the unlink later in its own thread."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import wait_for

from zonegate.transfer.durable import Barrier
from zonegate.transfer.reaper import Reaper


def test_files_and_directories_leave_at_once_and_are_removed_in_the_background(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    entry = spool / "ready" / "m1"
    entry.mkdir(parents=True)
    (entry / "data").write_bytes(b"plaintext" * 1000)
    (entry / "meta.json").write_text("{}")
    single = spool / "active" / "m2" / "data"
    single.parent.mkdir(parents=True)
    single.write_bytes(b"more plaintext")
    reaper = Reaper(spool / "tmp" / "reap")
    barrier = Barrier()
    try:
        reaper.reap(entry, barrier)
        reaper.reap(single, barrier)
        barrier.commit()
        assert not entry.exists() and not single.exists()
        assert single.parent.is_dir()  # only the file was taken
        wait_for(lambda: not any((spool / "tmp" / "reap").iterdir()), 10, "the reaper")
    finally:
        reaper.close()
        barrier.close()


def test_what_an_earlier_run_left_is_removed_at_start(tmp_path: Path) -> None:
    reap = tmp_path / "reap"
    (reap / "123-abc-0").mkdir(parents=True)
    (reap / "123-abc-0" / "data").write_bytes(b"x")
    (reap / "123-abc-1").write_bytes(b"y")
    reaper = Reaper(reap)
    try:
        wait_for(lambda: not any(reap.iterdir()), 10, "the leftovers removed")
    finally:
        reaper.close()


def test_a_missing_path_is_an_error_and_close_drains_the_queue(tmp_path: Path) -> None:
    reaper = Reaper(tmp_path / "reap")
    with pytest.raises(FileNotFoundError):
        reaper.reap(tmp_path / "nothing")
    for i in range(200):
        (tmp_path / f"f{i}").write_bytes(b"z" * 4096)
        reaper.reap(tmp_path / f"f{i}")
    reaper.close()
    assert list((tmp_path / "reap").iterdir()) == []
    assert not reaper._thread.is_alive()
