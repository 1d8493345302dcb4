"""Ctrl-C held back while a training step updates parameters in place."""

from __future__ import annotations

import signal
import threading


class DeferInterrupt:
    """Hold Ctrl-C (SIGINT) back while a block runs, and raise it when the block is done.

    Used around the in-place update of a training step (optimizer, scheduler, prox, masks and
    the step counter), so that an interrupt never leaves the parameters half-updated: the
    checkpoint saved after it describes exactly the last completed step.  Outside the main
    thread (where signal handlers cannot be set), or where SIGINT is ignored, it does nothing.
    """

    def __init__(self) -> None:
        self._old = None
        self._pending = False

    def _handler(self, signum, frame) -> None:
        self._pending = True

    def __enter__(self) -> DeferInterrupt:
        self._pending = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            # None: a handler set outside Python (cannot be restored); SIG_IGN: Ctrl-C is
            # ignored on purpose (e.g. a background job), and must stay so.
            if old is not None and old is not signal.SIG_IGN:
                self._old = old
                signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        old, self._old = self._old, None
        if old is not None:
            signal.signal(signal.SIGINT, old)
        if self._pending and exc[0] is None:
            # delivered through the handler it was held back from, so that handler's own
            # policy applies (the program's ignores every Ctrl-C after the first, which keeps a
            # second one from cutting the checkpoint save short)
            if callable(old):
                old(signal.SIGINT, None)
            raise KeyboardInterrupt
