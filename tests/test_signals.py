"""A second SIGTERM while the first is being handled must not hang an agent or the supervisor."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from zonegate.gateways.agent import stop_on_signals


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _call_inside_set(stop: threading.Event, handler) -> bool:  # type: ignore[no-untyped-def]
    """Run `handler` the way a nested signal runs it: while this thread holds the event's lock
    (as it does inside Event.set). True when it returned; False when it hung on the lock."""

    def nested() -> None:
        with stop._cond:  # the lock Event.set holds when a signal lands
            handler(signal.SIGTERM, None)

    t = threading.Thread(target=nested, daemon=True)
    t.start()
    t.join(2)
    return not t.is_alive()


def test_the_first_signal_sets_stop_and_a_second_one_inside_set_returns(restore_handlers) -> None:
    stop = threading.Event()
    stop_on_signals(stop)
    first = signal.getsignal(signal.SIGTERM)
    assert callable(first) and not stop.is_set()
    first(signal.SIGTERM, None)
    assert stop.is_set()
    # A second SIGTERM (or a Ctrl-C) landing while the main thread is inside Event.set:
    for sig in (signal.SIGTERM, signal.SIGINT):
        assert _call_inside_set(stop, signal.getsignal(sig)), f"{sig!r} hung on the event lock"


def test_a_plain_set_handler_would_hang_there() -> None:
    """The check above can fail: the handler we replaced deadlocks in exactly that spot."""
    stop = threading.Event()

    def old_handler(signum: int, frame: object) -> None:
        stop.set()

    assert not _call_inside_set(stop, old_handler)
