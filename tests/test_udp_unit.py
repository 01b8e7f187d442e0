"""The UDP link's sans-I/O parts: the datagram parser refuses and never crashes, and the decoder
completes, loses and reports messages under loss patterns, without sockets."""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import math
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import raptorq
from hypothesis import given, settings
from hypothesis import strategies as st

from zonegate.gateways.demo_configs import free_port
from zonegate.transfer import udp_decode, udp_store
from zonegate.transfer.link import Arrival
from zonegate.transfer.udp_decode import (
    Aborted,
    BlockDone,
    Decoder,
    Done,
    Lost,
    Repeat,
    Silent,
    Stray,
)
from zonegate.transfer.udp_encode import (
    EncodeParams,
    EncoderPool,
    encode_blocks,
    encode_message,
    repair_count,
    symbol_size,
)
from zonegate.transfer.udp_pace import TokenBucket
from zonegate.transfer.udp_packet import (
    DATA_HEADER,
    DataPacket,
    HeartbeatPacket,
    PacketError,
    data_datagram,
    heartbeat_datagram,
    parse,
)
from zonegate.transfer.udp_recv import UdpDrain, gro_segments, kernel_rcvbuf_errors
from zonegate.transfer.udp_send import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_SEGMENT,
    UdpLinkSender,
    gso_bursts,
)
from zonegate.zones.config import Flow, Policy, Transport

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
    good = data_datagram(b"s" * 8, 3, TID, 5000, 4096, 1, 104, 0, False, b"\0\0\0\1" + b"x" * 104)
    assert parse(good).block == 1
    bad = bytearray(good)
    if pos < len(bad):
        bad[pos] = byte[0]
    with contextlib.suppress(PacketError):
        parse(bytes(bad))


def test_parser_refuses_inconsistent_fields() -> None:
    def dg(**kw: object) -> bytes:
        args = {"session": b"s" * 8, "msgno": 1, "transfer": TID, "length": 5000}
        args |= {"block_size": 4096, "block": 0, "symbol": 104, "round_": 0, "resend": False}
        args |= {"payload": b"\0\0\0\0" + b"x" * 104} | kw
        return data_datagram(**args)  # type: ignore[arg-type]

    parse(dg())
    for kw, why in [
        ({"block": 2}, "past the end"),
        ({"payload": b"\0\0\0\0" + b"x" * 103}, "symbol size"),
        ({"payload": b"\1\0\0\0" + b"x" * 104}, "source block"),
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


def test_small_messages_survive_five_percent_loss_at_25_percent_redundancy() -> None:
    """25% of one symbol rounds up to one repair: a 1 KiB message in two datagrams, lost when
    both are (1 in 400 at 5%), so a few of 1,500 small messages would be lost. Small blocks
    get the repairs that make them as safe as large ones."""
    rng = random.Random(7)
    dec = Decoder("import", "gw", 1 << 30, 0.5)
    datas = {_tid(i): rng.randbytes(rng.choice([200, 1000, 3000])) for i in range(1, 1501)}
    stream: list[bytes] = []
    for i, (tid, data) in enumerate(datas.items(), start=1):
        stream += [d for d in _datagrams(data, i, tid, 0.25) if rng.random() >= 0.05]
    recent = [(j, _tid(j)) for j in range(1500 - 31, 1501)]
    stream.append(heartbeat_datagram(b"S" * 8, 1500, "import", "gw", 1500, 500, recent))
    files, events = _run(dec, stream)
    assert not [e for e in events if isinstance(e, Lost)]
    assert {e.transfer for e in events if isinstance(e, Done)} == set(datas)
    assert all(bytes(files[t]) == d for t, d in datas.items())


def test_repairs_keep_every_block_size_safe_and_large_blocks_at_their_share() -> None:
    from zonegate.transfer.udp_encode import BLOCK_FAILURE_TARGET, _binomial_tail

    for redundancy in (0.05, 0.25, 0.5):
        design = redundancy / (1 + redundancy) / 2
        for k in (*range(1, 70), 100, 333, 800, 1024):
            r = repair_count(k, redundancy)
            assert r >= math.ceil(k * redundancy)
            assert _binomial_tail(k + r, design, r) <= BLOCK_FAILURE_TARGET, (k, r)
            if r > math.ceil(k * redundancy):  # more than the share only where it is needed
                assert _binomial_tail(k + r - 1, design, r - 1) > BLOCK_FAILURE_TARGET
    assert repair_count(800, 0.25) == 200  # a full 1 MiB block: exactly the configured share
    assert repair_count(1, 0.25) >= 5
    assert repair_count(10, 0) == 0


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


# -- the fast paths: systematic code, GSO bursts, GRO runs, header-matched datagrams ---------


def test_raptorq_keeps_every_allowed_block_systematic_and_single() -> None:
    """The receiver copies source symbol i to bytes i*T..(i+1)*T: true only while the codec
    keeps a block as one source block of one sub-block. Checked at the format's limits."""
    from zonegate.transfer.udp_packet import MAX_BLOCK, MAX_SYMBOLS, SYMBOL_ALIGN

    for length, symbol in [
        (MAX_BLOCK, MAX_BLOCK // MAX_SYMBOLS),  # most symbols
        (MAX_BLOCK - 5, 1400),
        (MAX_BLOCK, 64992),  # biggest symbol in a datagram
        (1, 256),
        (1024 * 1024, 1400),
        (700_001, 1408),
    ]:
        assert symbol % SYMBOL_ALIGN == 0 and -(-length // symbol) <= MAX_SYMBOLS
        data = os.urandom(length)
        k = -(-length // symbol)
        packets = raptorq.Encoder.with_defaults(data, symbol).get_encoded_packets(1)
        assert len(packets) == k + 1, (length, symbol)
        for i in sorted({0, 1, k // 2, k - 1} & set(range(k))):
            assert packets[i][:4] == i.to_bytes(4, "big"), (length, symbol, i)
            assert packets[i][4:] == data[i * symbol : (i + 1) * symbol].ljust(symbol, b"\0")


def test_parser_refuses_sizes_the_codec_would_split() -> None:
    def dg(block_size: int, symbol: int) -> bytes:
        return data_datagram(
            b"s" * 8, 1, TID, 1 << 30, block_size, 0, symbol, 0, False, bytes(4 + symbol)
        )

    parse(dg(8 * 1024 * 1024, 256))
    for block_size, symbol, why in [
        (8 * 1024 * 1024 + 8, 1400, "out of range"),
        (1024 * 1024, 1401, "multiple of 8"),
        (8 * 1024 * 1024, 248, "too many symbols"),
    ]:
        try:
            parse(dg(block_size, symbol))
        except PacketError as e:
            assert why in str(e), (block_size, symbol, e)
        else:
            raise AssertionError(f"accepted block {block_size} symbol {symbol}")


def test_a_packet_size_that_is_not_a_multiple_of_8_still_gives_parseable_datagrams() -> None:
    """RaptorQ rounds the symbol down to a multiple of 8; the header must say the same."""
    assert symbol_size(1401) == 1400 and symbol_size(1400) == 1400 and symbol_size(263) == 256
    params = EncodeParams(symbol=symbol_size(1407), redundancy=0.25, rounds=1)
    data = os.urandom(50_000)
    grams = list(encode_message(io.BytesIO(data), len(data), TID, b"S" * 8, 1, False, params))
    assert all(parse(g).symbol == 1400 for g in grams)
    files, _events = _run(Decoder("import", "gw", 1 << 30, 0.5), grams)
    assert bytes(files[TID]) == data


def test_gso_bursts_cover_every_datagram_within_the_kernel_limits() -> None:
    for size, count in [(1461, 937), (1461, 44), (1461, 45), (1461, 1), (300, 1000), (65061, 3)]:
        bursts = list(gso_bursts(size, count))
        assert [i for b in bursts for i in b] == list(range(count)), (size, count)
        for b in bursts:
            assert 1 <= len(b) <= GSO_MAX_SEGMENTS
            assert len(b) == 1 or len(b) * size <= GSO_MAX_BYTES, (size, len(b))
        assert all(len(b) == len(bursts[0]) for b in bursts[:-1])
    assert [len(b) for b in gso_bursts(1461, 90)] == [44, 44, 2]
    assert [len(b) for b in gso_bursts(100, 130)] == [64, 64, 2]  # the segment count limit


def test_gro_segments_cut_a_coalesced_run_back_into_its_datagrams() -> None:
    assert gro_segments(0, 4383, 1461) == [1461, 2922, 4383]
    assert gro_segments(100, 3000, 1461) == [1561, 3022, 3100]  # the last one shorter
    assert gro_segments(7, 1461, 1461) == [1468]  # a run of one
    assert gro_segments(7, 900, 1461) == [907]  # shorter than the segment size: one datagram
    assert gro_segments(0, 900, 0) == [900]  # no GRO control message


def _drained(gro: bool, datagrams: list[bytes], gso: bool) -> tuple[list[bytes], int]:
    """Send `datagrams` over loopback (one GSO send, or one send each) into a UdpDrain."""
    drain = UdpDrain("127.0.0.1", 0, gro=gro)
    try:
        port = drain.sock.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.connect(("127.0.0.1", port))
            if gso:
                size = len(datagrams[0])
                tx.sendmsg(datagrams, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))])
            else:
                for d in datagrams:
                    tx.send(d)
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < len(datagrams) and time.monotonic() < deadline:
            batch = drain.get(0.2)
            if batch is None:
                continue
            buf, ends = batch
            start = 0
            for end in ends:
                got.append(bytes(buf[start:end]))
                start = end
            drain.release(batch)
        return got, drain.receives
    finally:
        drain.close()


def test_a_gso_send_arrives_as_the_same_datagrams_with_and_without_gro() -> None:
    """Real sockets: one GSO send of 40 datagrams (the last shorter). A GRO socket gets the run
    whole and cuts it; a plain socket gets the kernel's segments. Both: the same 40 datagrams."""
    datagrams = [bytes([i]) * 1461 for i in range(39)] + [b"\xee" * 700]
    with_gro, receives = _drained(True, datagrams, gso=True)
    assert with_gro == datagrams
    assert receives < len(datagrams), "the kernel did not coalesce: GRO was not exercised"
    without, receives = _drained(False, datagrams, gso=True)
    assert without == datagrams and receives == len(datagrams)
    one_by_one, _ = _drained(True, datagrams[:5], gso=False)
    assert one_by_one == datagrams[:5]


def test_sources_alone_complete_blocks_without_the_codec_and_repairs_fill_losses() -> None:
    data = os.urandom(300_000)
    dgs = _datagrams(data, 1, TID, 0.25)  # 64 KiB blocks: 5 blocks
    dec = Decoder("import", "gw", 1 << 30, 0.5)
    files, events = _run(dec, dgs)
    assert bytes(files[TID]) == data
    assert (dec.blocks_direct, dec.blocks_repaired) == (5, 0)
    # Lose three source symbols of every block: each needs the codec, fed what arrived.
    k = -(-65536 // 512)
    per_block = k + math.ceil(k * 0.25)
    lossy = [d for i, d in enumerate(dgs) if i % per_block not in (3, 50, 100)]
    dec = Decoder("import", "gw", 1 << 30, 0.5)
    files, events = _run(dec, lossy)
    assert bytes(files[TID]) == data
    assert (dec.blocks_direct, dec.blocks_repaired) == (0, 5)  # the short last block too
    assert [type(e) for e in events if isinstance(e, Done | Lost)] == [Done]


def test_duplicates_reordering_and_batches_give_what_single_datagrams_give() -> None:
    rng = random.Random(11)
    datas = {_tid(i): os.urandom(rng.choice([700, 90_000, 200_000])) for i in range(1, 7)}
    stream: list[bytes] = []
    for i, (tid, data) in enumerate(datas.items(), start=1):
        grams = _datagrams(data, i, tid, 0.25)
        grams = [g for g in grams if rng.random() > 0.08]  # 8% lost
        grams += rng.sample(grams, len(grams) // 10)  # 10% duplicated
        rng.shuffle(grams)  # and out of order within the message
        stream += grams
    stream.append(
        heartbeat_datagram(b"S" * 8, 6, "import", "gw", 6, 500, list(enumerate(datas, 1)))
    )
    single = Decoder("import", "gw", 1 << 30, 0.5)
    files_a, events_a = _run(single, stream)
    batched = Decoder("import", "gw", 1 << 30, 0.5)
    files_b: dict[str, bytearray] = {}
    events_b = []
    for at in range(0, len(stream), 97):
        chunk = stream[at : at + 97]
        buf = bytearray(b"".join(chunk))
        ends = list(itertools.accumulate(len(g) for g in chunk))
        for ev in batched.feed_batch(buf, ends, 0.0):
            if isinstance(ev, BlockDone):
                f = files_b.setdefault(ev.transfer, bytearray(ev.length))
                f[ev.offset : ev.offset + len(ev.data)] = ev.data
                ev = BlockDone(ev.key, ev.transfer, ev.length, ev.offset, bytes(ev.data))
            events_b.append(ev)
        buf[:] = bytes(len(buf))  # the drain reuses its buffer: nothing may point into it
    assert {t: bytes(f) for t, f in files_a.items()} == {t: bytes(f) for t, f in files_b.items()}
    done = {e.transfer for e in events_a if isinstance(e, Done)}
    assert done == set(datas), "8% loss with 25% redundancy: everything completes"
    for tid in done:
        assert bytes(files_b[tid]) == datas[tid]
    norm = [
        BlockDone(e.key, e.transfer, e.length, e.offset, bytes(e.data))
        if isinstance(e, BlockDone)
        else e
        for e in events_a
    ]
    assert norm == events_b


def test_a_datagram_that_only_looks_like_the_block_being_filled_is_parsed_and_refused() -> None:
    data = os.urandom(100_000)
    dgs = _datagrams(data, 1, TID, 0.25)
    dec = Decoder("import", "gw", 1 << 30, 0.5)
    _run(dec, dgs[:3])
    # Same header bytes, one byte short: not the block's datagram size, so the full parse.
    assert dec.feed(dgs[3][:-1], 0.0) == [Stray("payload length differs from the symbol size")]
    # Same header, a payload id of another source block: refused by the fast path itself.
    other = dgs[3][:DATA_HEADER] + b"\x01" + dgs[3][DATA_HEADER + 1 :]
    assert dec.feed(other, 0.0) == [Stray("a block is always one RaptorQ source block")]
    files, _events = _run(dec, dgs[3:])
    assert bytes(files[TID]) == data


def test_open_blocks_are_bounded_the_oldest_message_is_given_up(monkeypatch) -> None:
    """A sender (or an attacker) opening block after block cannot make the receiver hold more
    than MAX_HELD bytes of incomplete blocks: the oldest open message is lost, with a reason."""
    monkeypatch.setattr(udp_decode, "MAX_HELD", 3 * 65536)
    dec = Decoder("import", "gw", 1 << 30, 0.5)
    first = _datagrams(os.urandom(200_000), 1, _tid(1), 0.25)
    second = _datagrams(os.urandom(200_000), 2, _tid(2), 0.25)
    k = 128 + 32
    # One datagram of each of message 1's blocks, then message 2's first blocks, out of order
    # as after a reordering switch: message 1 is still open when message 2 needs room.
    events = []
    for d in [first[0], first[k], second[0], second[k]]:
        events += dec.feed(d, 0.0)
    lost = [e for e in events if isinstance(e, Lost)]
    assert lost and lost[0].transfer == _tid(1), events
    assert dec.held <= 3 * 65536


def test_the_sender_falls_back_to_one_datagram_a_send_when_gso_is_refused() -> None:
    """A route whose device cannot take GSO answers EIO; the sender sends the same datagrams
    one by one, for good, and a receiver gets the message whole."""
    port = free_port(socket.SOCK_DGRAM)
    t = Transport("udp", f"udp://127.0.0.1:{port}", redundancy=0.25, heartbeat=0.2)
    flow = Flow("import", "internet", "internal", "gw", "rcv", t, Policy(), 0)
    rx = udp_store.UdpEnvelopeReceiver(flow, Path(tempfile.mkdtemp()), 1 << 30)
    tx = UdpLinkSender(flow)
    real, refused = tx.sock, []

    class NoGso:
        def sendmsg(self, buffers, cmsg=()):
            if cmsg:
                refused.append(len(buffers))
                raise OSError(errno.EIO, "GSO refused")
            return real.sendmsg(buffers)

        def __getattr__(self, name):
            return getattr(real, name)

    tx.sock = NoGso()  # type: ignore[assignment]
    try:
        src = Path(tempfile.mkdtemp()) / "env"
        src.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
        assert tx.send_envelope(src, TID, "import", "gw", False, threading.Event())
        assert len(refused) == 1 and not tx.gso
        arrived = []
        deadline = time.monotonic() + 20
        while not arrived and time.monotonic() < deadline:
            arrived = [a for a in rx.poll(200) if isinstance(a, Arrival)]
        assert arrived and (arrived[0].directory / "envelope").read_bytes() == src.read_bytes()
    finally:
        tx.close()
        rx.close()


def test_a_receiver_that_binds_after_the_sender_started_still_gets_the_message() -> None:
    """A heartbeat to a port nobody holds yet comes back as ICMP "port unreachable", which the
    kernel reports on the sender's next send (and drops that send). The sender sends it again
    instead of failing the message (found by the demo: the message went to corrupt/)."""
    port = free_port(socket.SOCK_DGRAM)
    t = Transport("udp", f"udp://127.0.0.1:{port}", redundancy=0.25, heartbeat=60)
    flow = Flow("import", "internet", "internal", "gw", "rcv", t, Policy(), 0)
    tx = UdpLinkSender(flow)
    rx = None
    try:
        assert tx.send_heartbeat("import", "gw", 0, "now", threading.Event())
        time.sleep(0.2)  # the ICMP error is now pending on the sender's socket
        rx = udp_store.UdpEnvelopeReceiver(flow, Path(tempfile.mkdtemp()), 1 << 30)
        src = Path(tempfile.mkdtemp()) / "env"
        src.write_bytes(os.urandom(100_000))
        assert tx.send_envelope(src, TID, "import", "gw", False, threading.Event())
        assert tx.icmp_errors == 1
        arrived = []
        deadline = time.monotonic() + 20
        while not arrived and time.monotonic() < deadline:
            arrived = [a for a in rx.poll(200) if isinstance(a, Arrival)]
        assert arrived and (arrived[0].directory / "envelope").read_bytes() == src.read_bytes()
    finally:
        tx.close()
        if rx is not None:
            rx.close()


def _blocks(pool: EncoderPool | None, data: bytes, params: EncodeParams) -> list[tuple]:
    src = io.BytesIO(data)
    out = []
    for b in encode_blocks(src, len(data), TID, b"S" * 8, 7, False, params, pool):
        out.append([bytes(b.datagram(i)) for i in range(b.count)])  # views: copy them now
    return out


def test_the_encoder_pool_gives_the_datagrams_the_sender_would_encode_itself() -> None:
    """Worker processes, shared memory: byte for byte what encoding in-thread gives, for every
    round, a short last block included; and a pool whose worker dies mid-message finishes the
    message itself, still byte for byte."""
    data = os.urandom(5 * 65536 + 777)
    params = EncodeParams(symbol=512, redundancy=0.25, rounds=2, block_size=65536)
    expected = _blocks(None, data, params)
    assert len(expected) == 12
    pool = EncoderPool(params, workers=2)
    try:
        assert _blocks(pool, data, params) == expected
        assert _blocks(pool, data, params) == expected  # the slots are reused cleanly
        got = []
        blocks = encode_blocks(io.BytesIO(data), len(data), TID, b"S" * 8, 7, False, params, pool)
        for i, b in enumerate(blocks):
            got.append([bytes(b.datagram(i)) for i in range(b.count)])
            if i == 1:
                for w in pool.workers:
                    w.kill()
        assert got == expected
        assert pool.broken
    finally:
        pool.close()
    assert all(w.poll() is not None for w in pool.workers)


def test_encoder_workers_end_when_their_sender_dies(tmp_path: Path) -> None:
    """kill -9 of the sender: its workers see their pipe close and exit; nothing is left."""
    code = (
        "import sys, time\n"
        "from zonegate.transfer.udp_encode import EncodeParams, EncoderPool\n"
        "pool = EncoderPool(EncodeParams(1400, 0.25, 1), 2)\n"
        "print(' '.join(str(w.pid) for w in pool.workers), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        for p in pids:  # reap them if they are ours (they are the dead sender's children)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(p, os.WNOHANG)
        time.sleep(0.1)
    alive = [p for p in pids if _running(p)]
    assert not alive, f"encoder workers outlived their sender: {alive}"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _decode_lossy_block_forever(stop: threading.Event) -> None:
    """What a receiver does at 5% loss: RaptorQ decodes, each holding the GIL for milliseconds."""
    data = os.urandom(1024 * 1024)
    packets = raptorq.Encoder.with_defaults(data, 1400).get_encoded_packets(188)
    kept = [p for i, p in enumerate(packets) if i % 20]  # 5% of the symbols lost
    while not stop.is_set():
        dec = raptorq.Decoder.with_defaults(len(data), 1400)
        for p in kept:
            if dec.decode(p) is not None:
                break


def test_a_busy_decoder_does_not_starve_the_drain_into_kernel_drops() -> None:
    """While the decoder thread decodes (pure CPU, GIL held), 80,000 datagrams arrive at about
    150 MB/s, more than the 64 MiB socket buffer holds (about 29,000): the drain must keep taking
    them. A drain that gave the GIL up at every receive fell behind and the kernel dropped
    tens of thousands (measured: 110,000 RcvbufErrors in a 1 GiB transfer at 5% loss)."""
    count = 80_000
    drain = UdpDrain("127.0.0.1", 0)
    port = drain.sock.getsockname()[1]
    code = (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.connect(('127.0.0.1', {port}))\n"
        "d = b'x' * 1461\n"
        f"for i in range({count}):\n"
        "    s.send(d)\n"
        "    if i % 100 == 99:\n"
        "        time.sleep(0.001)\n"  # at most 100,000 a second: about 150 MB/s
    )
    stop = threading.Event()
    busy = threading.Thread(target=_decode_lossy_block_forever, args=(stop,))
    busy.start()
    try:
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    finally:
        stop.set()
        busy.join()
    got = 0
    deadline = time.monotonic() + 10
    while got < count and time.monotonic() < deadline:
        batch = drain.get(0.2)
        if batch is not None:
            got += len(batch[1])
            drain.release(batch)
    drain.close()
    assert drain.dropped == 0
    assert got == count, f"the kernel dropped {count - got} of {count} datagrams"


def test_datagrams_dropped_for_a_decoder_far_behind_are_counted_and_exported(
    monkeypatch,
) -> None:
    """The drain empties the socket in time but the decoder is not taking batches: past the
    queue's bound datagrams are dropped (so memory stays bounded), and the receiver agent's
    counter says how many, on its real metrics endpoint."""
    import urllib.request

    from harness import metric_value

    from zonegate.gateways.metrics import AgentMetrics
    from zonegate.gateways.receiver import export_queue_drops
    from zonegate.transfer import udp_recv
    from zonegate.zones.config import Address

    monkeypatch.setattr(udp_recv, "MAX_QUEUED_BYTES", 16 * 1024)
    port = free_port(socket.SOCK_DGRAM)
    t = Transport("udp", f"udp://127.0.0.1:{port}", redundancy=0.25, heartbeat=60)
    flow = Flow("import", "internet", "internal", "gw", "rcv", t, Policy(), 0)
    rx = udp_store.UdpEnvelopeReceiver(flow, Path(tempfile.mkdtemp()), 1 << 30)
    metrics = AgentMetrics("receiver", "gw", None)
    http_port = metrics.serve(Address("127.0.0.1", 0))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.connect(("127.0.0.1", port))
            for i in range(200):
                tx.send(bytes([i]) * 1400)
                if i % 2 == 1:
                    time.sleep(0.005)  # the drain hands over small batches, not one big one
        deadline = time.monotonic() + 10
        while rx.drain.datagrams < 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rx.drain.datagrams == 200
        queued = 0
        while (batch := rx.drain.get(0)) is not None:
            queued += len(batch[1])
        assert 0 < queued <= 16 * 1024 // 1400 + 1
        assert rx.queue_drops == 200 - queued
        total = export_queue_drops(metrics, "import", rx, 0)
        assert export_queue_drops(metrics, "import", rx, total) == total  # not counted twice
        url = f"http://127.0.0.1:{http_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        name = "zonegate_udp_queue_dropped_datagrams_total"
        assert metric_value(text, name, flow="import") == 200 - queued
    finally:
        rx.close()
