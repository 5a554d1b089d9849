"""Signal handling for long-running commands (quix-streams / faststream style).

SIGTERM and the first SIGINT only call `on_stop` (which sets a flag; the loop finishes its batch,
commits and returns). The first SIGINT also restores Python's default SIGINT handling, so a second
Ctrl-C raises `KeyboardInterrupt` and really stops a process that hangs.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


def install_signal_handlers(on_stop: Callable[[], None]) -> Callable[[], None]:
    """Route SIGTERM/SIGINT to `on_stop`; returns a function that restores the previous handlers.

    Must be called from the main thread (Python delivers signals only there); raises `RuntimeError`
    otherwise.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("signal handlers can only be installed from the main thread")

    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        log.info("SIGTERM received: finishing the current batch, then stopping")
        on_stop()

    def on_sigint(signum: int, _frame: FrameType | None) -> None:
        # the next Ctrl-C raises KeyboardInterrupt instead of waiting for a clean stop
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log.info("SIGINT received: finishing the current batch, then stopping (Ctrl-C again to kill)")
        on_stop()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigint)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore
