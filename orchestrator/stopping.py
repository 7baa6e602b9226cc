"""Stopping a sweep cleanly on SIGTERM (scancel, preemption, pod deletion, `timeout`) and SIGINT (Ctrl-C).

The first signal raises StopRequested (a KeyboardInterrupt, so every `except KeyboardInterrupt` path that
cancels running runs and marks them `cancelled` handles both) wherever the driver is: waiting in Ray,
writing the ledger, drawing the live table, refitting or logging to W&B. The launch then flushes and
closes what it holds and exits 128 + the signal number (143 for SIGTERM, 130 for SIGINT). A second
signal while stopping exits at once.

Ray's driver installs a C-level SIGTERM handler in `ray.init` that aborts with a stack dump, so the
handlers are installed again right after it (install() is idempotent). SIGINT inherited as ignored (a
background job of a non-interactive shell) stays ignored, as Unix programs and Python itself do.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived: cancel what runs, flush, exit with exit_code_of(it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_state: dict[str, Any] = {"stopping": None, "sigint_ignored": None}


def _handle(signum: int, frame: Any) -> None:
    if _state["stopping"] is not None:  # the second signal: no more cleanup, out now
        sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting at once\n")
        sys.stderr.flush()
        os._exit(128 + signum)
    _state["stopping"] = signum
    raise StopRequested(signum)


def install() -> None:
    """Install the stop handlers (main thread only; a no-op elsewhere). Call again after ray.init."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if _state["sigint_ignored"] is None:  # read once, before anything of ours replaced it
        _state["sigint_ignored"] = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signal.signal(signal.SIGTERM, _handle)
    if not _state["sigint_ignored"]:
        signal.signal(signal.SIGINT, _handle)


def _signum_of(error: KeyboardInterrupt) -> int:
    # Ray turns an exception raised by a signal handler during ray.wait/ray.get into a plain
    # KeyboardInterrupt, so the signal that started the stop is read from the handler's record.
    if isinstance(error, StopRequested):
        return error.signum
    return _state["stopping"] or signal.SIGINT


def exit_code_of(error: KeyboardInterrupt) -> int:
    """143 for SIGTERM, 130 for SIGINT (a KeyboardInterrupt with no signal recorded is a SIGINT)."""
    return 128 + _signum_of(error)


def stop_message(error: KeyboardInterrupt) -> str:
    name = signal.Signals(_signum_of(error)).name
    return (f"proxyscale: {name} received: running runs cancelled and marked 'cancelled', ledger saved; "
            "relaunch the same command to resume")
