"""A SIGTERM must never hang an agent or the supervisor on the stop event's lock: neither a
second one while the first is being handled, nor a first one landing while the main thread is
inside the event's lock at the end of an `Event.wait` (the polling loops)."""

from __future__ import annotations

import signal
import subprocess
import sys
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
    assert stop.wait(2)
    # A second SIGTERM (or a Ctrl-C) landing while the main thread is inside Event.set:
    for sig in (signal.SIGTERM, signal.SIGINT):
        assert _call_inside_set(stop, signal.getsignal(sig)), f"{sig!r} hung on the event lock"


def test_a_plain_set_handler_would_hang_there() -> None:
    """The check above can fail: the handler we replaced deadlocks in exactly that spot."""
    stop = threading.Event()

    def old_handler(signum: int, frame: object) -> None:
        stop.set()

    assert not _call_inside_set(stop, old_handler)


_FIRST_INSIDE_WAIT = """
import os, signal, threading
from zonegate.gateways.agent import stop_on_signals
stop = threading.Event()
stop_on_signals(stop)
with stop._cond:  # where the main thread is at the end of every Event.wait
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10000):  # the handler runs here, between two bytecodes, lock held
        pass
print("stopped" if stop.wait(5) else "not stopped")
"""


def test_a_first_signal_landing_inside_the_events_lock_returns_and_still_stops() -> None:
    """The supervisor's loop is `while not stop.is_set(): ...; stop.wait(0.2)`: at the end of
    each wait the main thread holds the event's lock for a few bytecodes, and a SIGTERM landing
    there ran `stop.set()` inside it (CI: a gateway that never stopped its agents). A real
    signal to a real process, which hangs (and is killed by the timeout) if the handler takes
    the lock itself."""
    try:
        r = subprocess.run(
            [sys.executable, "-c", _FIRST_INSIDE_WAIT], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung: its SIGTERM handler waited for the lock it held")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "stopped"
