"""Ctrl-C (and SIGTERM) held back until a training step is complete."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: The signals that interrupt a run: Ctrl-C, and the SIGTERM a batch scheduler or ``kill`` sends
#: before it kills a job (held back and handled alike where a Python handler is installed).
INTERRUPTS = (signal.SIGINT, signal.SIGTERM)

#: A second Ctrl-C stops a step at once only this many seconds or more after the first: one
#: that a launcher passes on (``torchrun``), when the terminal sent it to the whole process
#: group already, comes within milliseconds and is one Ctrl-C.  None: a second one never stops
#: a step (set in a process whose parent always passes its Ctrl-C on, as the benchmarks' pool
#: workers); read when a loop starts.
SECOND_AFTER_S: float | None = 1.0

_now = time.monotonic  # the clock of that gap (a test's to set)
_DEFAULT: Any = object()  # OneStepAtATime's second_after: SECOND_AFTER_S as it is then


def ignore_interrupts_in_worker() -> None:
    """In a DataLoader worker: ignore Ctrl-C and SIGTERM, which a terminal or a batch scheduler
    sends to the whole process group; the main process decides when the run stops (a step it
    holds an interrupt back for still needs its batches), and closes its workers then.  A
    worker left without its parent still exits (PyTorch's own check)."""
    for sig in INTERRUPTS:
        signal.signal(sig, signal.SIG_IGN)


class DeferInterrupt:
    """Hold Ctrl-C (SIGINT, and SIGTERM where the program handles it) back while a block runs,
    and deliver it to the handler it was held back from when the block is done.

    :meth:`RunSession.running <metasparsity.training.session.RunSession.running>` runs each
    training step inside one, with its validation and checkpoint, so that an interrupt never
    cuts a step, a validation or a save in half: the checkpoint saved after it describes exactly
    the last completed step (BatchNorm statistics included), validated if it was due.  Only a
    signal whose handler is a Python callable is held back: outside the main thread (where
    handlers cannot be set), a signal ignored on purpose (e.g. a background job's SIGINT) or
    left at its default action stays as it is.  Nested blocks defer to the outermost.  The
    handler decides what the signal does, as it would have without the block: Python's and the
    program's raise :class:`KeyboardInterrupt`; a handler of one's own that only logs lets the
    work go on.

    ``notice``: printed to stderr when the first signal is held back (the step may take a
    while to finish).  ``second_after``: a second Ctrl-C (SIGINT: a person's, not a
    scheduler's SIGTERM), that many seconds or more after the first signal and outside a
    :meth:`whole` part, delivers the first at once, where the block has got to (the block is
    cut short: :attr:`cut_short`); None (the default): later signals are dropped, as are those
    that come sooner.
    """

    def __init__(self, notice: str | None = None, second_after: float | None = None) -> None:
        self.notice = notice
        self.second_after = second_after
        self.cut_short = False
        self._old: dict[int, Any] = {}
        self._pending: int | None = None
        self._first_at = 0.0
        self._closing = False  # restore() has begun: what comes now is the same interrupt
        self._whole = 0  # inside whole(): no cut

    def _handler(self, signum, frame) -> None:
        if self._pending is None:
            self._pending = signum
            self._first_at = _now()
            if self.notice:
                print(self.notice, file=sys.stderr, flush=True)
            return
        if (self.second_after is None or self._closing or self._whole
                or signum != signal.SIGINT or _now() - self._first_at < self.second_after):
            return  # the same interrupt passed on again, or one that has to wait
        self._closing = True  # first: a signal while the handlers go back is not a third cut
        self.cut_short = True  # and one the program's handler gets from here on cuts the step
        held = self.restore()
        deliver(held)  # Python's and the program's handler raise KeyboardInterrupt
        self.cut_short = False  # a handler of one's own that did not stop: the step goes on

    @contextmanager
    def whole(self) -> Iterator[None]:
        """A part of the block that a second signal does not cut (a checkpoint save: its files
        and its ``last``/``best`` pointers together)."""
        self._whole += 1
        try:
            yield
        finally:
            self._whole -= 1

    def __enter__(self) -> DeferInterrupt:
        self._pending = None
        self._closing = False
        self.cut_short = False
        self._whole = 0
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in INTERRUPTS:
            old = signal.getsignal(sig)
            # None: a handler set outside Python (cannot be restored); SIG_IGN / SIG_DFL: left
            # alone (ignored on purpose, or the default action the program did not take over);
            # another DeferInterrupt's handler: the outer block holds it back already
            if callable(old) and not isinstance(getattr(old, "__self__", None), DeferInterrupt):
                self._old[sig] = old  # first: restore() puts back what was replaced
                signal.signal(sig, self._handler)
        return self

    def restore(self) -> tuple[int, Any] | None:
        """Put the handlers back; return ``(signal, its handler)`` of the signal held back, if
        any (not delivered).  A signal that reaches this block's handler meanwhile is held back
        if it is the first, else it is the same interrupt."""
        self._closing = True
        old, self._old = self._old, {}
        for sig, handler in old.items():
            signal.signal(sig, handler)
        pending, self._pending = self._pending, None
        return (pending, old.get(pending)) if pending is not None else None

    def __exit__(self, *exc) -> None:
        held = self.restore()
        if held is not None and exc[0] is None:
            deliver(held)


def deliver(held: tuple[int, Any]) -> None:
    """Call the handler a signal was held back from (:meth:`DeferInterrupt.restore`), as the
    signal would have; what it raises (Python's and the program's: KeyboardInterrupt)
    propagates."""
    signum, handler = held
    if callable(handler):
        handler(signum, None)


class OneStepAtATime(Generic[T]):
    """Iterate ``steps`` (e.g. a progress bar, whose other attributes, such as
    ``set_postfix``, it passes through), running each one's loop body inside a
    :class:`DeferInterrupt`: an interrupt during a step is delivered when the loop asks for the
    next step (or ends), once the step is complete; a second Ctrl-C during the step
    (``second_after`` seconds or more after the first, by default :data:`SECOND_AFTER_S`;
    None: never; not inside :meth:`whole`) delivers it at once
    (:attr:`cut_short`: the step was left half done).  :meth:`settle` after a loop
    left by ``break`` delivers what its last step held back.  :meth:`close` when the loop is
    left by an exception: the handlers are put back, and an interrupt held back gives way to
    that exception.

    ``agree(stop) -> stop``: under ``torchrun``, whether any rank stops after this step (a
    collective every rank calls at every step boundary): the ranks stop after the same step,
    not one in a collective of a step the others never start.
    """

    def __init__(self, steps: Iterable[T], notice: str | None = None,
                 agree: Callable[[bool], bool] | None = None,
                 second_after: float | None = _DEFAULT) -> None:
        self._steps = steps
        self._it = iter(steps)
        self.notice = notice
        self.agree = agree
        self.second_after = SECOND_AFTER_S if second_after is _DEFAULT else second_after
        self._guard: DeferInterrupt | None = None

    def __iter__(self) -> OneStepAtATime[T]:
        return self

    def __next__(self) -> T:
        self.settle()
        step = next(self._it)
        self._guard = DeferInterrupt(self.notice, self.second_after)
        self._guard.__enter__()
        return step

    @property
    def cut_short(self) -> bool:
        """Whether the step under way was left half done by a second interrupt (read it before
        :meth:`close`)."""
        return self._guard is not None and self._guard.cut_short

    def whole(self):
        """The step's part that a second interrupt does not cut (:meth:`DeferInterrupt.whole`)."""
        return self._guard.whole() if self._guard is not None else nullcontext()

    def settle(self) -> None:
        """The last step is done: deliver the interrupt it held back (as asking for the next
        step does; call it after a loop left by ``break``)."""
        guard, self._guard = self._guard, None
        if guard is None:
            return
        held = guard.restore()
        stop = False
        if held is not None:
            try:
                deliver(held)
            except KeyboardInterrupt:
                stop = True
        if self.agree is not None:
            stop = self.agree(stop)
        if stop:
            raise KeyboardInterrupt

    def close(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.restore()

    def __getattr__(self, name: str):
        return getattr(self._steps, name)
