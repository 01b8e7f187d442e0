"""Spool states on disk and the durable file steps they are built from."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from zonegate.transfer.durable import durable_output, replace_durably, write_durably
from zonegate.transfer.ids import new_message_id
from zonegate.transfer.spool import SCRATCH, STATES, MessageMeta, Spool, SpoolError


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.create()
    return s


def put(spool: Spool, state: str, msg_id: str | None = None, name: str = "a.txt") -> str:
    msg_id = msg_id or new_message_id()
    spool.entry(state, msg_id).mkdir()
    spool.write_meta(state, msg_id, MessageMeta(msg_id, "import", "web", name))
    return msg_id


# --- spool ---------------------------------------------------------------------------------


def test_create_makes_every_state_dir_0700_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        s = Spool(tmp_path / "spool")
        s.create()
    finally:
        os.umask(old)
    assert mode_of(s.root) == 0o700
    for name in (*STATES, *SCRATCH):
        path = s.root / name
        assert path.is_dir(), name
        assert mode_of(path) == 0o700, f"{name}: {mode_of(path):o}"


def test_create_is_idempotent(spool: Spool) -> None:
    msg_id = put(spool, "ready")
    spool.create()
    assert spool.ids("ready") == [msg_id]


def test_move_is_a_rename_keeping_the_inode(spool: Spool) -> None:
    msg_id = put(spool, "incoming")
    (spool.entry("incoming", msg_id) / "data").write_bytes(b"payload")
    before = os.stat(spool.entry("incoming", msg_id)).st_ino
    data_before = os.stat(spool.entry("incoming", msg_id) / "data").st_ino
    target = spool.move(msg_id, "incoming", "ready")
    assert target == spool.entry("ready", msg_id)
    assert os.stat(target).st_ino == before
    assert os.stat(target / "data").st_ino == data_before
    assert (target / "data").read_bytes() == b"payload"
    assert not spool.entry("incoming", msg_id).exists()
    assert spool.states_of(msg_id) == ["ready"]


def test_move_refuses_to_overwrite_an_existing_target(spool: Spool) -> None:
    msg_id = put(spool, "ready", name="first")
    put(spool, "active", msg_id, name="second")
    with pytest.raises(SpoolError, match="already in active"):
        spool.move(msg_id, "ready", "active")
    assert spool.read_meta("ready", msg_id).original_name == "first"
    assert spool.read_meta("active", msg_id).original_name == "second"
    assert spool.states_of(msg_id) == ["ready", "active"]


def test_move_refuses_an_empty_target_directory(spool: Spool) -> None:
    """rename(2) would silently replace an empty directory; the spool must not."""
    msg_id = put(spool, "ready")
    spool.entry("active", msg_id).mkdir()
    with pytest.raises(SpoolError):
        spool.move(msg_id, "ready", "active")
    assert spool.entry("ready", msg_id).is_dir()


def test_move_of_a_missing_entry_raises_and_creates_nothing(spool: Spool) -> None:
    msg_id = new_message_id()
    with pytest.raises(OSError):
        spool.move(msg_id, "ready", "active")
    assert spool.states_of(msg_id) == []


def test_ids_are_sorted_and_ignore_non_id_names(spool: Spool) -> None:
    ids = [new_message_id() for _ in range(5)]
    for msg_id in reversed(ids):
        spool.entry("ready", msg_id).mkdir()
    d = spool.dir("ready")
    (d / ".tmp").mkdir()
    (d / "garbage").write_text("x")
    (d / (ids[0].upper())).mkdir()  # upper-case hex is not an id
    (d / (ids[0] + ".tmp")).mkdir()
    (d / ids[0][:-1]).mkdir()
    assert spool.ids("ready") == sorted(ids)
    assert spool.depth("ready") == 5
    assert [m for m, _ in spool.iter_entries("ready")] == sorted(ids)


def test_ids_and_depth_of_a_missing_state_dir_are_empty(tmp_path: Path) -> None:
    s = Spool(tmp_path / "never-created")
    assert s.ids("ready") == []
    assert s.depth("ready") == 0
    assert s.oldest_age("ready", time.time()) == 0.0


@pytest.mark.parametrize(
    "bad", ["../x", "..", "", "/etc/passwd", "0" * 31, "0" * 33, "g" * 32, "0" * 31 + "/"]
)
def test_entry_refuses_non_id_names(spool: Spool, bad: str) -> None:
    with pytest.raises(ValueError, match="not a message id"):
        spool.entry("ready", bad)


@pytest.mark.parametrize("state", ["../ready", "nope", "", "tmp"])
def test_dir_refuses_unknown_states(spool: Spool, state: str) -> None:
    with pytest.raises(ValueError, match="unknown spool state"):
        spool.dir(state)


def test_meta_round_trip_on_disk_with_chinese_names(spool: Spool) -> None:
    msg_id = new_message_id()
    spool.entry("ready", msg_id).mkdir()
    meta = MessageMeta(
        id=msg_id,
        flow="import",
        system="公文系统",
        original_name="关于印发《2026年工作要点》的通知.docx",
        size=1234,
        sha256="ab" * 32,
        seq=7,
        classification="内部",
        reason="名称 不合规",
        extra={"审批": ["张三", "李四"], "n": 1},
    )
    spool.write_meta("ready", msg_id, meta)
    raw = (spool.entry("ready", msg_id) / "meta.json").read_bytes()
    assert "关于印发".encode() in raw  # stored as UTF-8, not \\u escapes
    assert spool.read_meta("ready", msg_id) == meta
    assert MessageMeta.from_json(meta.to_json()) == meta


def test_meta_from_json_ignores_unknown_fields() -> None:
    meta = MessageMeta(new_message_id(), "import", "web", "x")
    raw = meta.to_json()[:-1] + b', "future_field": 1}'
    assert MessageMeta.from_json(raw) == meta


def test_write_meta_replaces_and_leaves_no_temp_file(spool: Spool) -> None:
    msg_id = put(spool, "ready", name="old")
    meta = spool.read_meta("ready", msg_id).replace(original_name="new", resent=2)
    spool.write_meta("ready", msg_id, meta)
    assert spool.read_meta("ready", msg_id) == meta
    assert sorted(os.listdir(spool.entry("ready", msg_id))) == ["meta.json"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"id": "abc", "flow": "import"',  # truncated
        b"\xff\xfe\x00\x01garbage",
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"id": "x"}',  # required fields missing
        b"\x00" * 4096,
        b"[" * 100_000,  # nested far deeper than the decoder recurses
    ],
)
def test_read_meta_on_damaged_meta_raises_spool_error(spool: Spool, content: bytes) -> None:
    msg_id = put(spool, "ready")
    (spool.entry("ready", msg_id) / "meta.json").write_bytes(content)
    with pytest.raises(SpoolError, match="unreadable metadata"):
        spool.read_meta("ready", msg_id)


def test_read_meta_missing_raises_spool_error(spool: Spool) -> None:
    msg_id = new_message_id()
    spool.entry("ready", msg_id).mkdir()
    with pytest.raises(SpoolError):
        spool.read_meta("ready", msg_id)


def test_depth_and_oldest_age(spool: Spool) -> None:
    assert spool.depth("sent") == 0
    assert spool.oldest_age("sent", time.time()) == 0.0
    now = time.time()
    a, b, c = put(spool, "sent"), put(spool, "sent"), put(spool, "sent")
    os.utime(spool.entry("sent", a), (now - 300, now - 300))
    os.utime(spool.entry("sent", b), (now - 100, now - 100))
    os.utime(spool.entry("sent", c), (now - 10, now - 10))
    # a non-id entry that is older still must not count
    junk = spool.dir("sent") / "junk"
    junk.mkdir()
    os.utime(junk, (now - 9999, now - 9999))
    assert spool.depth("sent") == 3
    assert spool.oldest_age("sent", now) == pytest.approx(300, abs=0.01)
    # a clock that went backwards never yields a negative age
    assert spool.oldest_age("sent", now - 1000) == 0.0
    spool.remove("sent", a)
    assert spool.depth("sent") == 2
    assert spool.oldest_age("sent", now) == pytest.approx(100, abs=0.01)
    assert spool.states_of(a) == []


# --- durable steps -------------------------------------------------------------------------


def test_write_durably_writes_new_file_with_mode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_durably(path, b"hello", mode=0o600)
    assert path.read_bytes() == b"hello"
    assert mode_of(path) == 0o600


def test_write_durably_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"original")
    with pytest.raises(FileExistsError):
        write_durably(path, b"new")
    assert path.read_bytes() == b"original"


@pytest.mark.parametrize("dangling", [False, True])
def test_write_durably_refuses_a_planted_symlink(tmp_path: Path, dangling: bool) -> None:
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_bytes(b"precious")
    link = tmp_path / "planted"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        write_durably(link, b"attacker data")
    assert link.is_symlink()
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == b"precious"


def test_replace_durably_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"old contents")
    ino_before = os.stat(path).st_ino
    replace_durably(path, b"new")
    assert path.read_bytes() == b"new"
    # a new inode renamed over the old one, not an in-place rewrite
    assert os.stat(path).st_ino != ino_before
    assert mode_of(path) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["state"]


def test_replace_durably_over_a_stale_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state"
    stale = tmp_path / f".state.{os.getpid()}.tmp"
    stale.write_bytes(b"left by a crash")
    replace_durably(path, b"fresh")
    assert path.read_bytes() == b"fresh"
    assert sorted(os.listdir(tmp_path)) == ["state"]


def test_replace_durably_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "state"
    path.symlink_to(victim)
    replace_durably(path, b"new")
    assert not path.is_symlink()
    assert path.read_bytes() == b"new"
    assert victim.read_bytes() == b"precious"


def test_durable_output_keeps_file_on_clean_exit(tmp_path: Path) -> None:
    path = tmp_path / "out"
    with durable_output(path) as f:
        f.write(b"part 1 ")
        f.write(b"part 2")
    assert path.read_bytes() == b"part 1 part 2"
    assert mode_of(path) == 0o600


def test_durable_output_removes_file_when_body_raises(tmp_path: Path) -> None:
    path = tmp_path / "out"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), durable_output(path) as f:
        f.write(b"half")
        raise Boom
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_durable_output_refuses_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError), durable_output(path) as f:
        f.write(b"never")
    assert path.read_bytes() == b"keep"


# -- group commit: Barrier ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["fsync", "syncfs", "auto"])
def test_barrier_commits_what_it_names_and_forgets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    from zonegate.transfer import durable

    monkeypatch.setattr(durable, "_STRATEGY", strategy)
    synced: list[str] = []
    real = durable._fsync_path
    monkeypatch.setattr(durable, "_fsync_path", lambda p: (synced.append(p), real(p))[1])
    calls: list[int] = []
    if durable._SYNCFS is not None:
        real_syncfs = durable._SYNCFS
        monkeypatch.setattr(durable, "_SYNCFS", lambda fd: (calls.append(fd), real_syncfs(fd))[1])
    barrier = durable.Barrier()
    try:
        for i in range(10):
            durable.write_new(tmp_path / f"f{i}", b"x" * i, barrier)
        durable.replace_file(tmp_path / "f3", b"replaced", barrier)
        assert len(barrier) == 11, "ten files and their directory, each named once"
        barrier.commit()
        assert (tmp_path / "f3").read_bytes() == b"replaced"
        assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
        if strategy == "fsync" or durable._SYNCFS is None:
            assert sorted(synced) == sorted([str(tmp_path / f"f{i}") for i in range(10)]
                                            + [str(tmp_path)])  # fmt: skip
        elif strategy == "syncfs":
            assert calls and not synced, "one syncfs for the file system instead"
        assert len(barrier) == 0
        synced.clear()
        barrier.commit()  # nothing named: nothing to do
        assert synced == []
        durable.write_new(tmp_path / "g", b"g", barrier)
        barrier.discard()
        barrier.commit()
        assert synced == [], "a discarded phase is not made durable"
    finally:
        barrier.close()


def test_barrier_reports_a_failed_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zonegate.transfer import durable

    def failing(path: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durable, "_STRATEGY", "fsync")
    monkeypatch.setattr(durable, "_fsync_path", failing)
    barrier = durable.Barrier()
    durable.write_new(tmp_path / "f", b"x", barrier)
    with pytest.raises(OSError, match="Input/output"):
        barrier.commit()
    if durable._SYNCFS is not None:
        monkeypatch.setattr(durable, "_STRATEGY", "syncfs")
        monkeypatch.setattr(durable, "_SYNCFS", lambda fd: -1)
        for i in range(8):
            durable.write_new(tmp_path / f"s{i}", b"x", barrier)
        with pytest.raises(OSError, match="syncfs"):
            barrier.commit()
    barrier.close()


def test_move_with_a_barrier_renames_now_and_names_both_directories(spool: Spool) -> None:
    from zonegate.transfer.durable import Barrier

    msg_id = new_message_id()
    (spool.entry("ready", msg_id)).mkdir()
    barrier = Barrier()
    target = spool.move(msg_id, "ready", "active", barrier)
    assert target.is_dir() and not spool.entry("ready", msg_id).exists()
    assert len(barrier) == 2
    barrier.commit()
    barrier.close()
