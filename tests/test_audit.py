"""Tests for the hash-chained audit log: append, verify, tampering, concurrency, failing closed.

The tampering tests edit a real 20-record log one line at a time and assert the exact line
``verify`` names, so a check that runs in the wrong order (or not at all) shows up as a wrong
line number, not just a pass/fail.
"""

from __future__ import annotations

import itertools
import json
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from zonegate.audit import (
    EVENTS,
    GENESIS_HASH,
    AuditLog,
    AuditRecord,
    AuditWriteError,
    canonical_bytes,
    read_records,
    record_hash,
    verify,
)

N = 20


def make_log(path: Path, n: int = N) -> list[AuditRecord]:
    """A log of ``n`` records whose message.size is 1000 + i, so every line has digits to edit."""
    with AuditLog(path, gateway="gw-city", agent="ingest", zone="internal") as log:
        return [
            log.append(
                "claimed" if i % 2 else "sent",
                message={"id": f"m{i}", "flow": "import", "seq": i, "size": 1000 + i},
                who={"system": "hr"},
                reason=None if i % 3 else "checked by policy",
                attempt=i,
            )
            for i in range(1, n + 1)
        ]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def edit_size(line: bytes) -> bytes:
    """Change the last digit of message.size: a one-byte edit that keeps the JSON canonical."""
    obj = json.loads(line)
    size = obj["message"]["size"]
    old = f'"size":{size}'.encode()
    assert line.count(old) == 1
    new_size = size - 1 if size % 10 else size + 1
    edited = line.replace(old, f'"size":{new_size}'.encode())
    assert len(edited) == len(line) and edited != line
    return edited


def rehash(line: bytes) -> bytes:
    """Re-seal an edited line the way an attacker who knows the format would."""
    obj = json.loads(line)
    obj["hash"] = record_hash(obj)
    return canonical_bytes(obj) + b"\n"


# --- appending -------------------------------------------------------------------------------


def test_append_then_verify_ok(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    records = make_log(path)
    result = verify(path)
    assert result.ok, result.problem
    assert result.records == N
    assert result.first_bad_line is None and result.problem is None
    assert result.last_hash == records[-1].hash
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    parsed = list(read_records(path))
    assert [r["seq"] for r in parsed] == list(range(1, N + 1))
    assert parsed[0]["prev"] == GENESIS_HASH
    for before, after in itertools.pairwise(parsed):
        assert after["prev"] == before["hash"]
    first = parsed[0]
    assert set(first) == {
        "seq",
        "time",
        "gateway",
        "agent",
        "zone",
        "event",
        "message",
        "outcome",
        "reason",
        "who",
        "prev",
        "hash",
        "extra",
    }
    assert first["gateway"] == "gw-city" and first["agent"] == "ingest"
    assert first["zone"] == "internal" and first["event"] == "claimed"
    assert first["message"] == {"id": "m1", "flow": "import", "seq": 1, "size": 1001}
    assert first["outcome"] == "ok" and first["who"] == {"system": "hr"}
    assert first["extra"] == {"attempt": 1}
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-11-25T09:41:56.123456Z")


def test_returned_record_is_the_line_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    records = make_log(path, 3)
    assert [r.line() for r in records] == lines_of(path)
    again = AuditRecord.from_dict(json.loads(lines_of(path)[1]))
    assert again.to_dict() == records[1].to_dict()
    with pytest.raises(TypeError):
        records[0].message["size"] = 1  # type: ignore[index]


def test_plain_record_has_no_extra_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, gateway="gw", agent="cli") as log:
        rec = log.append("agent-started", outcome="info", message={}, who={})
    obj = json.loads(path.read_bytes())
    assert "extra" not in obj
    assert obj["zone"] is None and obj["message"] is None and obj["who"] is None
    assert rec.extra == {}
    assert verify(path).ok


def test_unicode_names_are_kept_readable(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, gateway="市局", agent="ingest") as log:
        log.append("quarantined", message={"name": "报告 2026.docx"}, outcome="refused")
    assert "报告 2026.docx".encode() in path.read_bytes()
    assert verify(path).ok


# --- verify: tampering, line by line ---------------------------------------------------------


@pytest.mark.parametrize("i", range(1, N + 1))
def test_edit_one_byte_names_the_line(tmp_path: Path, i: int) -> None:
    path = tmp_path / "audit.log"
    make_log(path)
    lines = lines_of(path)
    lines[i - 1] = edit_size(lines[i - 1])
    write_lines(path, lines)
    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == i
    assert result.problem == f"line {i}: record hash does not match its contents (edited?)"
    assert result.records == i - 1


@pytest.mark.parametrize("i", range(1, N + 1))
def test_delete_line(tmp_path: Path, i: int) -> None:
    path = tmp_path / "audit.log"
    records = make_log(path)
    lines = lines_of(path)
    del lines[i - 1]
    write_lines(path, lines)
    result = verify(path)
    if i < N:
        # The record that was line i+1 now sits at line i and still says seq i+1.
        assert not result.ok
        assert result.first_bad_line == i
        assert result.problem is not None
        assert result.problem.startswith(f"line {i}: seq {i + 1}, expected {i}")
    else:
        # Cutting the last record leaves a valid shorter chain; the head file beside the log
        # still names seq N, so verify reports the cut at the line that is missing.
        assert not result.ok
        assert result.first_bad_line == N
        assert result.problem is not None
        assert "records were cut from the end" in result.problem
        # Without the head file (an attacker who removes it too) the chain alone cannot tell:
        # signed checkpoints kept elsewhere (a later issue) close that gap.
        Path(str(path) + ".head").unlink()
        alone = verify(path)
        assert alone.ok
        assert alone.records == N - 1
        assert alone.last_hash == records[N - 2].hash


@pytest.mark.parametrize("i", range(1, N + 1))
def test_insert_copy_names_the_inserted_line(tmp_path: Path, i: int) -> None:
    path = tmp_path / "audit.log"
    make_log(path)
    lines = lines_of(path)
    lines.insert(i, lines[i - 1])  # a duplicate of line i becomes line i+1
    write_lines(path, lines)
    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == i + 1
    assert result.problem is not None
    assert result.problem.startswith(f"line {i + 1}: seq {i}, expected {i + 1}")


@pytest.mark.parametrize("i", range(2, N + 1))
def test_insert_copy_of_a_later_line_at_the_front(tmp_path: Path, i: int) -> None:
    path = tmp_path / "audit.log"
    make_log(path)
    lines = lines_of(path)
    lines.insert(0, lines[i - 1])
    write_lines(path, lines)
    result = verify(path)
    assert not result.ok and result.first_bad_line == 1


@pytest.mark.parametrize("i", range(1, N))
def test_swap_names_the_first_of_the_pair(tmp_path: Path, i: int) -> None:
    path = tmp_path / "audit.log"
    make_log(path)
    lines = lines_of(path)
    lines[i - 1], lines[i] = lines[i], lines[i - 1]
    write_lines(path, lines)
    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == i
    assert result.problem is not None
    assert result.problem.startswith(f"line {i}: seq {i + 1}, expected {i}")


@pytest.mark.parametrize("i", range(1, N + 1))
def test_rehashed_edit_is_caught_by_the_next_line(tmp_path: Path, i: int) -> None:
    path = tmp_path / "audit.log"
    make_log(path)
    lines = lines_of(path)
    lines[i - 1] = rehash(edit_size(lines[i - 1]))
    write_lines(path, lines)
    result = verify(path)
    if i < N:
        assert not result.ok
        assert result.first_bad_line == i + 1
        assert result.problem == (
            f"line {i + 1}: prev does not match line {i}'s hash "
            "(a record was deleted, inserted or reordered)"
        )
    else:
        # The last record has no successor to contradict it, but the head file names its
        # original hash.
        assert not result.ok
        assert result.first_bad_line == N
        assert "differs from the one its head file names" in (result.problem or "")


def test_rehashed_first_record_with_forged_prev(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    make_log(path, 3)
    lines = lines_of(path)
    obj = json.loads(lines[0])
    obj["prev"] = "1" * 64
    lines[0] = rehash(canonical_bytes(obj) + b"\n")
    write_lines(path, lines)
    result = verify(path)
    assert not result.ok and result.first_bad_line == 1
    assert result.problem is not None and "genesis" in result.problem


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda b: b.replace(b'"seq":', b'"seq": ', 1), "not in canonical form"),
        (lambda b: b.replace(b"{", b'{"zzz":1,', 1), "not in canonical form"),
        (lambda b: b.replace(b'"claimed"', b'"deleted"'), "not in the audit vocabulary"),
        (lambda b: b[:-2] + b"\n", "not valid JSON"),
        (lambda b: b"[1,2]\n", "not a JSON object"),
    ],
)
def test_malformed_line_names_the_line(
    tmp_path: Path, edit: Callable[[bytes], bytes], expected: str
) -> None:
    path = tmp_path / "audit.log"
    make_log(path, 5)
    lines = lines_of(path)
    lines[2] = edit(lines[2])
    write_lines(path, lines)
    result = verify(path)
    assert not result.ok and result.first_bad_line == 3, result.problem
    assert result.problem is not None and result.problem.startswith("line 3: ")
    assert expected in result.problem


def test_unknown_field_even_if_rehashed(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    make_log(path, 3)
    lines = lines_of(path)
    obj = json.loads(lines[1])
    obj["private_key"] = "x"
    lines[1] = rehash(canonical_bytes(obj) + b"\n")
    write_lines(path, lines)
    result = verify(path)
    assert result.first_bad_line == 2
    assert result.problem == "line 2: unknown field(s): private_key"


def test_missing_and_empty_files(tmp_path: Path) -> None:
    missing = verify(tmp_path / "nope.log")
    assert not missing.ok and missing.records == 0
    assert missing.problem is not None and "no such file" in missing.problem
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    result = verify(empty)
    assert result.ok and result.records == 0 and result.last_hash is None


# --- torn writes -----------------------------------------------------------------------------


def test_torn_last_line_is_named_and_blocks_append(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    make_log(path)
    full = path.read_bytes()
    half = lines_of(path)[5][:100]
    path.write_bytes(full + half)

    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == N + 1
    assert result.problem == f"line {N + 1}: incomplete last record (truncated write)"
    assert result.records == N

    with (
        AuditLog(path, gateway="gw-city", agent="sender") as log,
        pytest.raises(AuditWriteError, match=rf"incomplete record at line {N + 1}"),
    ):
        log.append("sent")
    assert path.read_bytes() == full + half  # not extended, not repaired

    with pytest.raises(ValueError, match=rf"line {N + 1}: incomplete"):
        list(read_records(path))


def test_truncation_inside_a_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    make_log(path)
    lines = lines_of(path)
    path.write_bytes(b"".join(lines[:9]) + lines[9][:-40])
    result = verify(path)
    assert result.first_bad_line == 10
    assert result.problem == "line 10: incomplete last record (truncated write)"


# --- concurrency -----------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from zonegate.audit import AuditLog
    path, agent, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with AuditLog(path, gateway="gw-city", agent=agent) as log:
        for i in range(count):
            log.append("sent", message={"id": f"{agent}-{i}", "size": i})
    """
)


def test_four_processes_append_to_one_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    agents = ["ingest", "sender", "receiver", "cli"]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), agent, "250"])
        for agent in agents
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    result = verify(path)
    assert result.ok, result.problem
    assert result.records == 1000
    records = list(read_records(path))
    assert [r["seq"] for r in records] == list(range(1, 1001))
    ids = {r["message"]["id"] for r in records}
    assert ids == {f"{a}-{i}" for a in agents for i in range(250)}
    # Each process's own records stay in its own order.
    for agent in agents:
        mine = [r["message"]["size"] for r in records if r["agent"] == agent]
        assert mine == list(range(250))


def test_two_handles_in_one_process_share_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    a = AuditLog(path, gateway="gw", agent="ingest")
    b = AuditLog(path, gateway="gw", agent="sender")
    seqs = [log.append("claimed").seq for log in (a, b, a, b)]
    assert seqs == [1, 2, 3, 4]
    assert verify(path).ok


# --- failing closed --------------------------------------------------------------------------


def test_log_path_is_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.mkdir()
    with pytest.raises(AuditWriteError):
        AuditLog(path, gateway="gw", agent="ingest").append("claimed")


def test_parent_is_a_regular_file(tmp_path: Path) -> None:
    parent = tmp_path / "not-a-dir"
    parent.write_text("x")
    with pytest.raises(AuditWriteError):
        AuditLog(parent / "audit.log", gateway="gw", agent="ingest").append("claimed")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(AuditWriteError):
        AuditLog(tmp_path / "no" / "audit.log", gateway="gw", agent="ingest").append("claimed")


def test_symlinked_log_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.log"
    target.write_bytes(b"")
    link = tmp_path / "audit.log"
    link.symlink_to(target)
    with pytest.raises(AuditWriteError):
        AuditLog(link, gateway="gw", agent="ingest").append("claimed")
    assert target.read_bytes() == b""


def test_damaged_last_record_blocks_append(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    make_log(path, 4)
    lines = lines_of(path)
    lines[-1] = edit_size(lines[-1])
    write_lines(path, lines)
    before = path.read_bytes()
    with pytest.raises(AuditWriteError, match="does not hash"):
        AuditLog(path, gateway="gw", agent="ingest").append("claimed")
    assert path.read_bytes() == before


def test_log_removed_or_truncated_under_a_running_agent(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, gateway="gw", agent="ingest")
    for _ in range(3):
        log.append("claimed")
    lines = lines_of(path)
    write_lines(path, lines[:2])
    with pytest.raises(AuditWriteError, match="truncated or replaced"):
        log.append("claimed")
    path.unlink()
    with pytest.raises(AuditWriteError, match="disappeared"):
        log.append("claimed")
    assert not path.exists()


def test_closed_log_refuses(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", gateway="gw", agent="ingest")
    log.close()
    with pytest.raises(AuditWriteError, match="closed"):
        log.append("claimed")


# --- refused calls ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["key", "api_key", "privateKey", "SecretToken", "client_secret", "password2"]
)
def test_key_like_extra_field_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "audit.log"
    with pytest.raises(ValueError, match="key material"):
        AuditLog(path, gateway="gw", agent="ingest").append("key-changed", **{name: "abc"})
    assert not path.exists()


def test_pem_in_a_value_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI...\n-----END PRIVATE KEY-----"
    log = AuditLog(path, gateway="gw", agent="ingest")
    with pytest.raises(ValueError, match="key material"):
        log.append("key-changed", reason=pem)
    with pytest.raises(ValueError, match="key material"):
        log.append("key-changed", note=pem)
    assert not path.exists()


@pytest.mark.parametrize(
    "call",
    [
        {"event": "deleted"},
        {"event": "claimed", "outcome": "maybe"},
        {"event": "claimed", "message": {"body": "x"}},
        {"event": "claimed", "message": {"size": 1.5}},
        {"event": "claimed", "message": {"size": True}},
        {"event": "claimed", "who": {"person": "li", "clearance": "high"}},
        {"event": "claimed", "who": {"person": 7}},
        {"event": "claimed", "reason": 42},
        {"event": "claimed", "note": 1.5},
        {"event": "claimed", "note": None},
        {"event": "claimed", **{f"x{n}": n for n in range(33)}},
        {"event": "claimed", "note": "x" * 70000},
    ],
)
def test_malformed_call_refused_before_any_io(tmp_path: Path, call: dict) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, gateway="gw", agent="ingest")
    event = call.pop("event")
    with pytest.raises(ValueError):
        log.append(event, **call)
    assert not path.exists()


def test_every_event_in_the_vocabulary_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, gateway="gw", agent="demo", zone="internet") as log:
        for event in sorted(EVENTS):
            log.append(event, outcome="info")
    result = verify(path)
    assert result.ok and result.records == len(EVENTS)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError):
        AuditLog("/tmp/x.log", gateway="", agent="ingest")
    with pytest.raises(ValueError):
        AuditLog("/tmp/x.log", gateway="gw", agent="ingest", zone="")


def test_long_records_cross_the_tail_read_blocks(tmp_path: Path) -> None:
    # Records longer than append's 8 KiB backward read block: the last record must still be
    # found whole, or the chain would break at the next append.
    path = tmp_path / "audit.log"
    with AuditLog(path, gateway="gw", agent="ingest") as log:
        for i in range(6):
            log.append("checked", note="n" * (9000 * (i % 3) + 7), step=i)
    result = verify(path)
    assert result.ok, result.problem
    assert result.records == 6


def test_overlong_line_is_named_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    make_log(path, 3)
    with path.open("ab") as f:
        f.write(b"x" * 200_000 + b"\n")
    result = verify(path)
    assert result.first_bad_line == 4
    assert result.problem == "line 4: record longer than 65536 bytes"


# -- group commit: append_many -----------------------------------------------------------------


def test_append_many_is_one_write_and_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os as os_module

    from zonegate.audit.log import AuditEntry

    path = tmp_path / "audit.log"
    log = AuditLog(path, gateway="gw", agent="ingest")
    log.append("agent-started", outcome="info")
    fsyncs: list[int] = []
    writes: list[int] = []
    real_fsync, real_write = os_module.fsync, os_module.write
    monkeypatch.setattr(os_module, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(
        os_module, "write", lambda fd, b: (writes.append(len(b)), real_write(fd, b))[1]
    )
    entries = [
        AuditEntry("claimed", {"id": f"m{i}", "flow": "import", "size": i}, extra={"n": i})
        for i in range(50)
    ]
    records = log.append_many(entries)
    monkeypatch.undo()
    assert len(fsyncs) == 1, "a batch is made durable with one fsync"
    assert len([w for w in writes if w > 1000]) == 1, "and written with one write"
    assert [r.seq for r in records] == list(range(2, 52))
    assert len({r.time for r in records}) == 1, "the records of a batch share their time"
    assert [r.message["id"] for r in records] == [f"m{i}" for i in range(50)]
    result = verify(path)
    assert result.ok and result.records == 51
    assert [r["seq"] for r in read_records(path)] == list(range(1, 52))
    # The chain continues after a batch exactly as after single appends.
    assert log.append("sent").seq == 52
    assert verify(path).ok


def test_append_many_refuses_the_whole_batch_for_one_bad_entry(tmp_path: Path) -> None:
    from zonegate.audit.log import AuditEntry

    path = tmp_path / "audit.log"
    log = AuditLog(path, gateway="gw", agent="ingest")
    log.append("agent-started", outcome="info")
    before = path.read_bytes()
    bad = [
        AuditEntry("claimed", {"id": "m1"}),
        AuditEntry("claimed", {"id": "m2"}, extra={"secret_key": "x"}),
    ]
    with pytest.raises(ValueError, match="key"):
        log.append_many(bad)
    with pytest.raises(ValueError, match="unknown audit event"):
        log.append_many([AuditEntry("claimed"), AuditEntry("no-such-event")])
    assert path.read_bytes() == before, "nothing of a refused batch reaches the log"
    assert log.append_many([]) == []
    assert path.read_bytes() == before


def test_a_batch_that_fails_to_write_leaves_no_part_of_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os as os_module

    from zonegate.audit.log import AuditEntry

    path = tmp_path / "audit.log"
    log = AuditLog(path, gateway="gw", agent="ingest")
    log.append("agent-started", outcome="info")
    before = path.read_bytes()
    real_write = os_module.write

    def short_then_full(fd: int, data: bytes) -> int:
        if len(data) > 1000:  # the batch: half of it lands, then the disk is full
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os_module, "write", short_then_full)
    with pytest.raises(AuditWriteError):
        log.append_many([AuditEntry("claimed", {"id": f"m{i}"}) for i in range(40)])
    monkeypatch.undo()
    assert path.read_bytes() == before, "the torn batch was cut back"
    assert log.append("sent").seq == 2
    assert verify(path).ok


def test_a_batch_rotates_the_log_as_a_whole(tmp_path: Path) -> None:
    from zonegate.audit.log import AuditEntry, segments

    path = tmp_path / "audit.log"
    log = AuditLog(path, gateway="gw", agent="ingest", rotate_bytes=4000)
    for _ in range(3):
        log.append_many([AuditEntry("claimed", {"id": f"m{i}"}) for i in range(12)])
    assert segments(path), "the log rotated"
    for _seq, seg in segments(path):
        assert Path(seg).stat().st_size > 0
    result = verify(path)
    assert result.ok and result.records == 36
