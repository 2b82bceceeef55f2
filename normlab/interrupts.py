"""Ctrl-C, SIGTERM and SIGHUP end normlab the same way, once.

A terminal sends SIGINT (or SIGHUP when it closes), `timeout`, systemd and batch schedulers send
SIGTERM; each becomes a KeyboardInterrupt, so a study stops its workers, keeps every finished
epoch and writes its summary, and a report stops between files. The first signal makes the next
ones ignored until normlab has finished that cleanup, so a second Ctrl-C never prints a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
_received = False
MAX_REDELIVERIES = 5


def received() -> bool:
    """Whether a signal arrived in the current block. A library can turn the KeyboardInterrupt into
    another exception (matplotlib's class set-up wraps it in a RuntimeError, mid-import), so the
    command line asks this rather than trusting the exception's type."""
    return _received


@contextlib.contextmanager
def interrupts_raise_keyboard_interrupt(restore_after_interrupt: bool = True) -> Iterator[None]:
    """Within the block, the signals above raise KeyboardInterrupt once, then are ignored; the
    previous handlers come back after it (after an interrupt only if `restore_after_interrupt`:
    a command line that is about to exit keeps ignoring them). Only the main thread can handle
    signals: elsewhere (a notebook's worker thread) this does nothing and the caller's own
    handling stands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _received
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    previous_hook = sys.unraisablehook
    _received = False
    interrupted = False
    redelivered = 0

    def interrupt(signum, frame):
        global _received
        nonlocal interrupted
        interrupted = _received = True
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    def swallowed(unraisable):
        """A KeyboardInterrupt raised inside a callback Python cannot raise from (a weakref's, a
        __del__) is dropped with a printed traceback, and the block would go on as if no signal had
        come. Deliver it again instead, to the code the block runs (a few times at most)."""
        nonlocal redelivered
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            return previous_hook(unraisable)
        if redelivered < MAX_REDELIVERIES:
            redelivered += 1
            for s in SIGNALS:
                signal.signal(s, interrupt)
            # from another thread, a moment later: a signal sent from here would be handled inside
            # this hook, where it would be dropped again
            timer = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()

    for s in SIGNALS:
        signal.signal(s, interrupt)
    sys.unraisablehook = swallowed
    try:
        yield
    except KeyboardInterrupt:  # raised here or by an inner handler: the same interrupt
        interrupted = True
        if not restore_after_interrupt:
            for s in SIGNALS:
                signal.signal(s, signal.SIG_IGN)
        raise
    finally:
        sys.unraisablehook = previous_hook
        if restore_after_interrupt or not interrupted:
            for s, handler in previous.items():
                signal.signal(s, handler)
