"""The UDP link's sans-I/O parts: the datagram parser refuses and never crashes, and the decoder
completes, loses and reports messages under loss patterns, without sockets."""

from __future__ import annotations

import contextlib
import io
import os
import random
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from zonegate.transfer.udp_decode import Aborted, Decoder, Done, Lost, Repeat, Silent, Stray
from zonegate.transfer.udp_encode import EncodeParams, encode_message
from zonegate.transfer.udp_pace import TokenBucket
from zonegate.transfer.udp_packet import (
    DataPacket,
    HeartbeatPacket,
    PacketError,
    data_datagram,
    heartbeat_datagram,
    parse,
)
from zonegate.transfer.udp_recv import kernel_rcvbuf_errors

TID = "0123456789abcdef0123456789abcdef"


def _tid(i: int) -> str:
    return f"{i:032x}"


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=2000))
def test_parser_never_crashes_only_refuses(data: bytes) -> None:
    try:
        packet = parse(data)
    except PacketError:
        return
    assert isinstance(packet, DataPacket | HeartbeatPacket)


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=1))
def test_parser_refuses_every_corruption_of_a_valid_header(pos: int, byte: bytes) -> None:
    good = data_datagram(b"s" * 8, 3, TID, 5000, 4096, 1, 100, 0, False, b"\0\0\0\1" + b"x" * 100)
    assert parse(good).block == 1
    bad = bytearray(good)
    if pos < len(bad):
        bad[pos] = byte[0]
    with contextlib.suppress(PacketError):
        parse(bytes(bad))


def test_parser_refuses_inconsistent_fields() -> None:
    def dg(**kw: object) -> bytes:
        args = {"session": b"s" * 8, "msgno": 1, "transfer": TID, "length": 5000}
        args |= {"block_size": 4096, "block": 0, "symbol": 100, "round_": 0, "resend": False}
        args |= {"payload": b"\0\0\0\0" + b"x" * 100} | kw
        return data_datagram(**args)  # type: ignore[arg-type]

    parse(dg())
    for kw, why in [
        ({"block": 2}, "past the end"),
        ({"payload": b"\0\0\0\0" + b"x" * 99}, "symbol size"),
        ({"payload": b"\1\0\0\0" + b"x" * 100}, "source block"),
        ({"msgno": 0}, "never sent"),
        ({"length": 0}, "length"),
        ({"symbol": 0, "payload": b"\0\0\0\0x"}, "size"),
    ]:
        try:
            parse(dg(**kw))
        except PacketError as e:
            assert why in str(e), (kw, e)
        else:
            raise AssertionError(f"accepted {kw}")
    beat = heartbeat_datagram(b"s" * 8, 4, "import", "internet-gw", 9, 500, [(3, TID), (4, TID)])
    hb = parse(beat)
    assert isinstance(hb, HeartbeatPacket) and hb.recent == ((3, TID), (4, TID))
    for bad in (beat[:-1], beat + b"\0", beat.replace(b"import", b"imp\xffrt")):
        try:
            parse(bad)
        except PacketError:
            continue
        raise AssertionError("a damaged heartbeat was accepted")


def _datagrams(
    data: bytes,
    msgno: int,
    tid: str,
    redundancy: float,
    rounds: int = 1,
    session: bytes = b"S" * 8,
    block: int = 64 * 1024,
) -> list[bytes]:
    params = EncodeParams(symbol=512, redundancy=redundancy, rounds=rounds, block_size=block)
    return list(encode_message(io.BytesIO(data), len(data), tid, session, msgno, False, params))


def _run(dec: Decoder, datagrams: list[bytes], now: float = 0.0) -> tuple[dict, list]:
    files: dict[str, bytearray] = {}
    events = []
    for d in datagrams:
        for ev in dec.feed(d, now):
            events.append(ev)
            if type(ev).__name__ == "BlockDone":
                buf = files.setdefault(ev.transfer, bytearray(ev.length))
                buf[ev.offset : ev.offset + len(ev.data)] = ev.data
    return files, events


def _gilbert(n: int, rng: random.Random, p_bad: float, p_good: float) -> list[bool]:
    """Burst loss (Gilbert-Elliott): True = delivered."""
    bad, out = False, []
    for _ in range(n):
        bad = (rng.random() < p_bad) if not bad else (rng.random() >= p_good)
        out.append(not bad)
    return out


def test_five_percent_bursty_loss_with_25_percent_redundancy_completes() -> None:
    rng = random.Random(5)
    data = os.urandom(700_000)
    dgs = _datagrams(data, 1, TID, 0.25)
    keep = _gilbert(len(dgs), rng, 0.01, 0.2)  # about 5% lost, in bursts of about 5
    assert 0.03 < 1 - sum(keep) / len(keep) < 0.08
    beat = heartbeat_datagram(b"S" * 8, 1, "import", "gw", 1, 500, [(1, TID)])
    dec = Decoder("import", "gw", 1 << 30, 0.5)
    files, events = _run(dec, [d for d, k in zip(dgs, keep, strict=True) if k] + [beat])
    assert bytes(files[TID]) == data
    assert [type(e) for e in events if isinstance(e, Done | Lost)] == [Done]


def test_half_loss_reports_exactly_the_lost_messages_by_id() -> None:
    rng = random.Random(50)
    dec = Decoder("import", "gw", 1 << 30, 0.5)
    datas = {_tid(i): os.urandom(rng.choice([300, 5000, 80_000])) for i in range(1, 41)}
    stream: list[bytes] = []
    for i, (tid, data) in enumerate(datas.items(), start=1):
        stream += _datagrams(data, i, tid, 0.25)
        recent = [(j, _tid(j)) for j in range(max(1, i - 31), i + 1)]
        stream.append(heartbeat_datagram(b"S" * 8, i, "import", "gw", i, 500, recent))
    kept = [d for d in stream if rng.random() >= 0.5]
    final = [(j, _tid(j)) for j in range(9, 41)]
    kept += [heartbeat_datagram(b"S" * 8, 40, "import", "gw", 40, 500, final)]
    files, events = _run(dec, kept)
    done = {e.transfer for e in events if isinstance(e, Done)}
    lost = [e.transfer for e in events if isinstance(e, Lost)]
    assert lost and len(lost) == len(set(lost))
    assert set(lost) | done == set(datas) and not set(lost) & done, "unnamed or double verdicts"
    for tid in done:
        assert bytes(files[tid]) == datas[tid]


def test_repeats_complete_what_round_zero_lost_and_later_rounds_count_as_repeats() -> None:
    data = os.urandom(200_000)
    dgs = _datagrams(data, 1, TID, 0.1, rounds=3)
    per_round = len(dgs) // 3
    # Round 0 loses its second half, round 1 arrives whole, round 2 too.
    stream = dgs[: per_round // 2] + dgs[per_round:]
    files, events = _run(Decoder("import", "gw", 1 << 30, 0.5), stream)
    assert bytes(files[TID]) == data
    done = [e for e in events if isinstance(e, Done)]
    assert len(done) == 1 and done[0].resend, "completed by a repeat round: marked as a re-send"
    assert [e for e in events if isinstance(e, Repeat)] == [Repeat(TID)]


def test_sender_restart_aborts_the_open_message_and_a_silent_link_is_reported() -> None:
    data = os.urandom(100_000)
    dec = Decoder("import", "gw", 1 << 30, 0.5)
    first = _datagrams(data, 1, TID, 0.25)[:20]
    second = _datagrams(data, 1, TID, 0.25, session=b"N" * 8)
    files, events = _run(dec, first + second)
    assert any(isinstance(e, Aborted) and e.transfer == TID for e in events)
    assert bytes(files[TID]) == data
    assert _run(dec, first[:1])[1] == [Stray("datagram of an ended sender session")]
    assert dec.tick(0.9) == []
    assert isinstance(dec.tick(1.2)[0], Silent)
    assert dec.tick(3.0) == []  # once


def test_oversized_message_is_refused_before_decoding() -> None:
    dec = Decoder("import", "gw", 1000, 0.5)
    _files, events = _run(dec, _datagrams(os.urandom(5000), 1, TID, 0.25))
    assert isinstance(events[0], Stray) and "over the limit" in events[0].reason
    assert len(events) == 1


def test_token_bucket_holds_the_rate() -> None:
    bucket = TokenBucket(2_000_000, burst=20_000)
    stop = threading.Event()
    t0 = time.monotonic()
    for _ in range(1000):
        assert bucket.take(1000, stop)
    elapsed = time.monotonic() - t0
    assert 0.4 < elapsed < 0.8, elapsed  # 1 MB at 2 MB/s


def test_rcvbuf_errors_are_read_from_the_kernel_table(tmp_path) -> None:
    snmp = tmp_path / "snmp"
    snmp.write_text(
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "Udp: 10 0 3 5 7 0\n"
    )
    assert kernel_rcvbuf_errors(snmp) == 7
    assert kernel_rcvbuf_errors(tmp_path / "absent") == -1
    assert kernel_rcvbuf_errors() >= 0
