"""Link framing state machine: frames in, events out; nothing malformed ever raises."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zonegate.transfer.ids import new_message_id
from zonegate.transfer.linkframe import (
    MAX_PAYLOAD,
    Abort,
    Begin,
    Complete,
    Data,
    Heartbeat,
    Reassembler,
    Stray,
    Whole,
    begin_frame,
    data_frame,
    end_frame,
    heartbeat_frame,
    whole_frame,
)

FLOW = "import"
SENDER = "internet-gw"
EVENT_TYPES = (Begin, Data, Complete, Whole, Abort, Heartbeat, Stray)


def reasm(max_length: int = 10 * MAX_PAYLOAD) -> Reassembler:
    return Reassembler(FLOW, SENDER, max_length)


def frames_for(tid: str, body: bytes, chunk: int) -> list[list[bytes]]:
    out = [begin_frame(tid, FLOW, SENDER, len(body), False)]
    for off in range(0, len(body), chunk):
        out.append([bytes(p) for p in data_frame(tid, off, body[off : off + chunk])])
    out.append(end_frame(tid, hashlib.sha256(body).digest()))
    return out


def feed_all(r: Reassembler, frames: list[list[bytes]]) -> list[object]:
    events: list[object] = []
    for f in frames:
        events.extend(r.feed(f))
    return events


def open_transfer(r: Reassembler, length: int) -> str:
    tid = new_message_id()
    assert r.feed(begin_frame(tid, FLOW, SENDER, length, False)) == [
        Begin(tid, FLOW, SENDER, length, False, None)
    ]
    return tid


def only(events: list[object], kind: type) -> object:
    assert len(events) == 1, events
    assert isinstance(events[0], kind), events
    return events[0]


@pytest.mark.parametrize("chunk", [1, 7, 1000, MAX_PAYLOAD])
def test_normal_transfer_yields_begin_data_complete(chunk: int) -> None:
    body = bytes(range(256)) * 40 + b"tail"
    tid = new_message_id()
    r = reasm()
    events = feed_all(r, frames_for(tid, body, chunk))
    assert events[0] == Begin(tid, FLOW, SENDER, len(body), False, None)
    assert events[-1] == Complete(tid, len(body), hashlib.sha256(body).digest())
    middle = events[1:-1]
    assert all(isinstance(e, Data) and e.transfer == tid for e in middle)
    assert len(middle) == -(-len(body) // chunk)
    assert b"".join(e.payload for e in middle) == body
    offsets = [e.offset for e in middle]
    assert offsets == list(range(0, len(body), chunk))
    assert r.open_transfer is None


def test_resend_flag_is_carried_and_a_second_transfer_follows_the_first() -> None:
    r = reasm()
    first, second = new_message_id(), new_message_id()
    assert feed_all(r, frames_for(first, b"one", 2))[-1] == Complete(
        first, 3, hashlib.sha256(b"one").digest()
    )
    ev = r.feed(begin_frame(second, FLOW, SENDER, 5, True))
    assert ev == [Begin(second, FLOW, SENDER, 5, True, None)]
    assert r.open_transfer == second


def test_memoryview_payload_is_accepted_by_the_builder() -> None:
    tid = new_message_id()
    body = b"abcdef"
    r = reasm()
    r.feed(begin_frame(tid, FLOW, SENDER, len(body), False))
    frame = data_frame(tid, 0, memoryview(body))
    ev = r.feed([bytes(p) for p in frame])
    assert ev == [Data(tid, 0, body)]


def test_end_digest_mismatch_aborts() -> None:
    r = reasm()
    tid = open_transfer(r, 4)
    assert r.feed(data_frame(tid, 0, b"abcd")) == [Data(tid, 0, b"abcd")]
    ev = only(r.feed(end_frame(tid, hashlib.sha256(b"abce").digest())), Abort)
    assert ev.transfer == tid
    assert "digest" in ev.reason
    assert r.open_transfer is None
    # the transfer is gone: a correct END afterwards is a stray, not a completion
    only(r.feed(end_frame(tid, hashlib.sha256(b"abcd").digest())), Stray)


def test_data_at_wrong_offset_aborts() -> None:
    r = reasm()
    tid = open_transfer(r, 10)
    r.feed(data_frame(tid, 0, b"abc"))
    ev = only(r.feed(data_frame(tid, 4, b"efg")), Abort)
    assert ev.transfer == tid
    assert "offset 4" in ev.reason and "expected 3" in ev.reason
    assert r.open_transfer is None


def test_repeated_data_frame_aborts() -> None:
    r = reasm()
    tid = open_transfer(r, 10)
    r.feed(data_frame(tid, 0, b"abc"))
    only(r.feed(data_frame(tid, 0, b"abc")), Abort)


def test_data_beyond_announced_length_aborts() -> None:
    r = reasm()
    tid = open_transfer(r, 4)
    r.feed(data_frame(tid, 0, b"ab"))
    ev = only(r.feed(data_frame(tid, 2, b"cde")), Abort)
    assert ev.transfer == tid
    assert "beyond" in ev.reason
    assert r.open_transfer is None


def test_data_payload_over_max_payload_aborts() -> None:
    r = reasm(max_length=4 * MAX_PAYLOAD)
    tid = open_transfer(r, 2 * MAX_PAYLOAD)
    only(r.feed(data_frame(tid, 0, b"x" * (MAX_PAYLOAD + 1))), Abort)


def test_end_before_all_bytes_aborts() -> None:
    r = reasm()
    tid = open_transfer(r, 6)
    r.feed(data_frame(tid, 0, b"abc"))
    ev = only(r.feed(end_frame(tid, hashlib.sha256(b"abc").digest())), Abort)
    assert ev.transfer == tid
    assert "3 of 6" in ev.reason
    assert r.open_transfer is None


@pytest.mark.parametrize("open_first", [False, True])
def test_data_and_end_for_unknown_transfer_are_stray(open_first: bool) -> None:
    r = reasm()
    current = open_transfer(r, 3) if open_first else None
    other = new_message_id()
    only(r.feed(data_frame(other, 0, b"abc")), Stray)
    only(r.feed(end_frame(other, hashlib.sha256(b"abc").digest())), Stray)
    # a stray frame leaves the open transfer untouched
    assert r.open_transfer == current


def test_begin_while_open_aborts_old_and_marks_abandoned() -> None:
    r = reasm()
    old = open_transfer(r, 10)
    r.feed(data_frame(old, 0, b"abc"))
    new = new_message_id()
    ev = r.feed(begin_frame(new, FLOW, SENDER, 5, True))
    assert len(ev) == 2
    assert isinstance(ev[0], Abort) and ev[0].transfer == old
    assert ev[1] == Begin(new, FLOW, SENDER, 5, True, old)
    assert r.open_transfer == new
    # the new transfer starts from offset 0 with a fresh hash
    assert r.feed(data_frame(new, 0, b"hello")) == [Data(new, 0, b"hello")]
    assert r.feed(end_frame(new, hashlib.sha256(b"hello").digest())) == [
        Complete(new, 5, hashlib.sha256(b"hello").digest())
    ]
    # the old transfer's frames are now stray
    only(r.feed(data_frame(old, 3, b"def")), Stray)


def test_resend_of_the_same_id_while_open_restarts_it() -> None:
    r = reasm()
    tid = open_transfer(r, 4)
    r.feed(data_frame(tid, 0, b"ab"))
    ev = r.feed(begin_frame(tid, FLOW, SENDER, 4, True))
    assert isinstance(ev[0], Abort) and ev[0].transfer == tid
    assert ev[1] == Begin(tid, FLOW, SENDER, 4, True, tid)
    assert r.feed(data_frame(tid, 0, b"abcd")) == [Data(tid, 0, b"abcd")]
    assert r.feed(end_frame(tid, hashlib.sha256(b"abcd").digest())) == [
        Complete(tid, 4, hashlib.sha256(b"abcd").digest())
    ]


@pytest.mark.parametrize(("flow", "sender"), [("publish", SENDER), (FLOW, "intruder-gw")])
def test_begin_for_another_flow_or_sender_is_stray(flow: str, sender: str) -> None:
    r = reasm()
    current = open_transfer(r, 4)
    only(r.feed(begin_frame(new_message_id(), flow, sender, 4, False)), Stray)
    assert r.open_transfer == current


@pytest.mark.parametrize("length", [0, -1, 101])
def test_begin_with_length_out_of_range_is_stray(length: int) -> None:
    r = reasm(max_length=100)
    tid = new_message_id()
    only(r.feed(begin_frame(tid, FLOW, SENDER, length, False)), Stray)
    assert r.open_transfer is None
    only(r.feed(data_frame(tid, 0, b"a")), Stray)


def test_begin_with_max_length_is_accepted() -> None:
    r = reasm(max_length=100)
    tid = new_message_id()
    assert r.feed(begin_frame(tid, FLOW, SENDER, 100, False)) == [
        Begin(tid, FLOW, SENDER, 100, False, None)
    ]


def test_begin_out_of_range_while_open_aborts_old_then_stray() -> None:
    r = reasm(max_length=100)
    old = open_transfer(r, 4)
    ev = r.feed(begin_frame(new_message_id(), FLOW, SENDER, 1000, False))
    assert [type(e) for e in ev] == [Abort, Stray]
    assert ev[0].transfer == old
    assert r.open_transfer is None


def _begin_body(**changes: object) -> bytes:
    body: dict[str, object] = {
        "t": new_message_id(),
        "flow": FLOW,
        "sender": SENDER,
        "length": 3,
        "resend": False,
    }
    body.update(changes)
    return json.dumps(body).encode()


MALFORMED = [
    [],
    [b""],
    [b"ZGL1X", b"{}"],
    [b"zgl1b", _begin_body()],
    [b"ZGL1B"],
    [b"ZGL1B", b"not json"],
    [b"ZGL1B", b"\xff\xfe\x00garbage"],
    [b"ZGL1B", b"[1, 2, 3]"],
    [b"ZGL1B", b"null"],
    [b"ZGL1B", _begin_body(), b"extra"],
    [b"ZGL1B", _begin_body(t="../../etc")],
    [b"ZGL1B", _begin_body(t="A" * 32)],
    [b"ZGL1B", _begin_body(t=None)],
    [b"ZGL1B", _begin_body(length="3")],
    [b"ZGL1B", _begin_body(length=3.0)],
    [b"ZGL1B", _begin_body(length=True)],
    [b"ZGL1B", _begin_body(resend=1)],
    [b"ZGL1B", _begin_body(flow=[FLOW])],
    [b"ZGL1B", _begin_body(pad="x" * 5000)],
    [b"ZGL1B", b"[" * 4000],
    [b"ZGL1B", b'{"a":' * 800 + b"1" + b"}" * 800],
    [b"ZGL1H", b"[" * 4000],
    [b"ZGL1B", b'{"length": 1e999}'],
    [b"ZGL1D"],
    [b"ZGL1D", b"\x00" * 16, b"\x00" * 7, b"x"],
    [b"ZGL1D", b"\x00" * 15, b"\x00" * 8, b"x"],
    [b"ZGL1D", b"\x00" * 16, b"\x00" * 8],
    [b"ZGL1E", b"\x00" * 16, b"\x00" * 31],
    [b"ZGL1E", b"\x00" * 16],
    [b"ZGL1H", b"{}"],
    [b"ZGL1H", b"garbage"],
    [b"ZGL1W", _begin_body(), b"abc"],
    [b"ZGL1W", _begin_body(), b"abc", b"\x00" * 31],
    [b"ZGL1W", _begin_body(), b"abc", b"\x00" * 32, b"extra"],
    [b"ZGL1W", b"not json", b"abc", b"\x00" * 32],
    [b"ZGL1W", _begin_body(t="../../etc"), b"abc", b"\x00" * 32],
    [b"ZGL1W", _begin_body(length=True), b"abc", b"\x00" * 32],
    [b"ZGL1W", _begin_body(flow="other"), b"abc", b"\x00" * 32],
]


@pytest.mark.parametrize("frames", MALFORMED)
def test_malformed_frames_are_stray_and_never_raise(frames: list[bytes]) -> None:
    r = reasm()
    only(r.feed(frames), Stray)
    assert r.open_transfer is None


@pytest.mark.parametrize("frames", MALFORMED)
def test_malformed_frames_leave_an_open_transfer_intact(frames: list[bytes]) -> None:
    r = reasm()
    tid = open_transfer(r, 3)
    only(r.feed(frames), Stray)
    assert r.open_transfer == tid
    assert r.feed(data_frame(tid, 0, b"abc")) == [Data(tid, 0, b"abc")]
    assert r.feed(end_frame(tid, hashlib.sha256(b"abc").digest())) == [
        Complete(tid, 3, hashlib.sha256(b"abc").digest())
    ]


def test_heartbeat_round_trip() -> None:
    r = reasm()
    ev = r.feed(heartbeat_frame(FLOW, SENDER, 42, "2026-11-25T09:41:56.123Z"))
    assert ev == [Heartbeat(FLOW, SENDER, 42, "2026-11-25T09:41:56.123Z")]


def test_heartbeat_does_not_disturb_an_open_transfer() -> None:
    r = reasm()
    tid = open_transfer(r, 3)
    only(r.feed(heartbeat_frame(FLOW, SENDER, 1, "t")), Heartbeat)
    assert r.open_transfer == tid


def test_heartbeat_time_is_capped() -> None:
    r = reasm()
    hb = only(r.feed(heartbeat_frame(FLOW, SENDER, 1, "x" * 1000)), Heartbeat)
    assert hb.time == "x" * 64


@pytest.mark.parametrize(
    "frame",
    [
        heartbeat_frame("publish", SENDER, 1, "t"),
        heartbeat_frame(FLOW, "other-gw", 1, "t"),
        [b"ZGL1H", json.dumps({"flow": FLOW, "sender": SENDER, "last_seq": "1", "time": "t"})],
        [b"ZGL1H", json.dumps({"flow": FLOW, "sender": SENDER, "last_seq": True, "time": "t"})],
        [b"ZGL1H", json.dumps({"flow": FLOW, "sender": SENDER, "last_seq": 1, "time": 5})],
    ],
)
def test_bad_heartbeats_are_stray(frame: list) -> None:
    frame = [p.encode() if isinstance(p, str) else p for p in frame]
    only(reasm().feed(frame), Stray)


def test_receiver_api_only_returns_events() -> None:
    """Nothing on the receiving side can produce bytes to send back: feed yields only events."""
    r = reasm()
    public = {n for n in dir(r) if not n.startswith("_")}
    assert public == {
        "feed",
        "flow",
        "sender",
        "max_length",
        "open_transfer",
        "verified_end_to_end",  # returns nothing: the reader of the bytes checks them
    }
    tid = new_message_id()
    for frames in [*frames_for(tid, b"payload", 3), *MALFORMED]:
        for e in r.feed(frames):
            assert isinstance(e, EVENT_TYPES)


TAGS = st.sampled_from([b"ZGL1B", b"ZGL1D", b"ZGL1E", b"ZGL1H", b"ZGL1W", b"ZGL1X", b""])
PART = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\x00" * 8, b"\x00" * 16, b"\x00" * 32, b"{}", b"[" * 3000]),
    st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from(["t", "flow", "sender", "length", "resend", "last_seq", "time"]),
            st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40), st.just(FLOW)),
        ),
    ),
)
MESSAGE = st.one_of(
    st.lists(st.binary(max_size=40), max_size=5),
    st.builds(lambda t, rest: [t, *rest], TAGS, st.lists(PART, max_size=4)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGE, max_size=20))
def test_arbitrary_frames_never_raise(messages: list[list[bytes]]) -> None:
    r = reasm(max_length=1000)
    for frames in messages:
        events = r.feed(frames)
        assert isinstance(events, list)
        assert events, "every frame yields at least one event"
        for e in events:
            assert isinstance(e, EVENT_TYPES)
        assert r.open_transfer is None or len(r.open_transfer) == 32


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=500))
def test_any_body_and_chunking_reassembles(body: bytes, chunk: int) -> None:
    tid = new_message_id()
    r = reasm(max_length=10_000)
    if not body:
        only(r.feed(begin_frame(tid, FLOW, SENDER, 0, False)), Stray)
        return
    events = feed_all(r, frames_for(tid, body, chunk))
    assert events[-1] == Complete(tid, len(body), hashlib.sha256(body).digest())
    assert b"".join(e.payload for e in events if isinstance(e, Data)) == body


# -- WHOLE: a small envelope in one frame ------------------------------------------------------


def test_whole_frame_yields_the_envelope_at_once() -> None:
    tid = new_message_id()
    body = b"a small sealed envelope"
    digest = hashlib.sha256(body).digest()
    r = reasm()
    ev = only(r.feed(whole_frame(tid, FLOW, SENDER, True, body, digest)), Whole)
    assert ev == Whole(tid, FLOW, SENDER, True, body, digest, None)
    assert r.open_transfer is None
    # and a streamed transfer can follow it
    assert feed_all(r, frames_for(new_message_id(), b"next", 2))[-1].length == 4


def test_whole_frame_with_a_wrong_digest_or_length_aborts_without_opening() -> None:
    tid = new_message_id()
    body = b"payload"
    r = reasm()
    ev = only(r.feed(whole_frame(tid, FLOW, SENDER, False, body, b"\x00" * 32)), Abort)
    assert ev.transfer == tid and "digest" in ev.reason
    frame = whole_frame(tid, FLOW, SENDER, False, body, hashlib.sha256(body).digest())
    frame[1] = _begin_body(t=tid, length=len(body) + 1)
    ev = only(r.feed(frame), Abort)
    assert "announced" in ev.reason
    assert r.open_transfer is None


def test_whole_frame_over_max_payload_aborts() -> None:
    tid = new_message_id()
    body = b"x" * (MAX_PAYLOAD + 1)
    r = reasm(max_length=4 * MAX_PAYLOAD)
    only(r.feed(whole_frame(tid, FLOW, SENDER, False, body, hashlib.sha256(body).digest())), Abort)


def test_whole_frame_while_a_transfer_is_open_aborts_that_one() -> None:
    r = reasm()
    old = open_transfer(r, 10)
    tid = new_message_id()
    body = b"new one"
    events = r.feed(whole_frame(tid, FLOW, SENDER, False, body, hashlib.sha256(body).digest()))
    assert [type(e) for e in events] == [Abort, Whole]
    assert events[0].transfer == old
    assert events[1].abandoned == old
    assert r.open_transfer is None


def test_whole_frame_for_another_flow_is_stray_and_length_is_bounded() -> None:
    body = b"x" * 10
    digest = hashlib.sha256(body).digest()
    only(reasm().feed(whole_frame(new_message_id(), "other", SENDER, False, body, digest)), Stray)
    only(reasm(max_length=5).feed(whole_frame(new_message_id(), FLOW, SENDER, False, body, digest)),
         Stray)  # fmt: skip


def test_a_transfer_checked_end_to_end_keeps_the_claimed_digest() -> None:
    """Its reader verifies the envelope itself; the END digest is the sender's claim, kept."""
    tid = new_message_id()
    r = reasm()
    assert r.feed(begin_frame(tid, FLOW, SENDER, 6, False))[0].transfer == tid
    r.verified_end_to_end()
    assert r.feed(data_frame(tid, 0, b"abcdef")) == [Data(tid, 0, b"abcdef")]
    claimed = hashlib.sha256(b"something else").digest()
    assert r.feed(end_frame(tid, claimed)) == [Complete(tid, 6, claimed)]
    # the next transfer is checked again
    tid2 = open_transfer(r, 3)
    r.feed(data_frame(tid2, 0, b"abc"))
    only(r.feed(end_frame(tid2, claimed)), Abort)
