"""Ctrl-C (and SIGTERM) held back until a training step is complete."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

#: The signals that interrupt a run: Ctrl-C, and the SIGTERM a batch scheduler or ``kill`` sends
#: before it kills a job (held back and handled alike where a Python handler is installed).
INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


class DeferInterrupt:
    """Hold Ctrl-C (SIGINT, and SIGTERM where the program handles it) back while a block runs,
    and raise :class:`KeyboardInterrupt` when the block is done.

    :meth:`RunSession.running <metasparsity.training.session.RunSession.running>` runs each
    training step inside one, with its validation and checkpoint, so that an interrupt never
    cuts a step, a validation or a save in half: the checkpoint saved after it describes exactly
    the last completed step (BatchNorm statistics included), validated if it was due.  Only a
    signal whose handler is a Python callable is held back: outside the main thread (where
    handlers cannot be set), a signal ignored on purpose (e.g. a background job's SIGINT) or
    left at its default action stays as it is.  Nested blocks defer to the outermost.

    ``notice``: printed to stderr when the first signal is held back (the step may take a
    while to finish).
    """

    def __init__(self, notice: str | None = None) -> None:
        self.notice = notice
        self._old: dict[int, object] = {}
        self._pending: int | None = None

    def _handler(self, signum, frame) -> None:
        if self._pending is None:
            self._pending = signum
            if self.notice:
                print(self.notice, file=sys.stderr, flush=True)

    def __enter__(self) -> DeferInterrupt:
        self._pending = None
        self._old = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in INTERRUPTS:
            old = signal.getsignal(sig)
            # None: a handler set outside Python (cannot be restored); SIG_IGN / SIG_DFL: left
            # alone (ignored on purpose, or the default action the program did not take over);
            # another DeferInterrupt's handler: the outer block holds it back already
            if callable(old) and not isinstance(getattr(old, "__self__", None), DeferInterrupt):
                self._old[sig] = old
                signal.signal(sig, self._handler)
        return self

    def restore(self) -> int | None:
        """Put the handlers back; return the signal held back, if any (not raised)."""
        old, self._old = self._old, {}
        for sig, handler in old.items():
            signal.signal(sig, handler)
        pending, self._pending = self._pending, None
        if pending is not None:
            # delivered through the handler it was held back from, so that handler's own
            # policy applies (the program's ignores every interrupt after the first, which
            # keeps a second one from cutting the checkpoint save short)
            handler = old.get(pending)
            if callable(handler):
                try:
                    handler(pending, None)
                except KeyboardInterrupt:  # Python's default_int_handler: raised by __exit__
                    pass
        return pending

    def __exit__(self, *exc) -> None:
        if self.restore() is not None and exc[0] is None:
            raise KeyboardInterrupt


class OneStepAtATime(Generic[T]):
    """Iterate ``steps`` (e.g. a progress bar, whose other attributes, such as
    ``set_postfix``, it passes through), running each one's loop body inside a
    :class:`DeferInterrupt`: an interrupt during a step is raised when the loop asks for the
    next step (or ends), once the step is complete.  :meth:`close` when the loop is left by an
    exception: the handlers are put back, and an interrupt held back gives way to that
    exception."""

    def __init__(self, steps: Iterable[T], notice: str | None = None) -> None:
        self._steps = steps
        self._it = iter(steps)
        self.notice = notice
        self._guard: DeferInterrupt | None = None

    def __iter__(self) -> OneStepAtATime[T]:
        return self

    def __next__(self) -> T:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.__exit__(None, None, None)  # the last step's interrupt, now that it is done
        step = next(self._it)
        self._guard = DeferInterrupt(self.notice).__enter__()
        return step

    def close(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.restore()

    def __getattr__(self, name: str):
        return getattr(self._steps, name)
