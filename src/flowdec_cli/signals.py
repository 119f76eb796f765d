"""How a run meets the signals that end it (Ctrl-C, SIGTERM, SIGHUP): raised as exceptions inside a command
so that every cleanup runs, ignored while a checkpoint or a worker must not be cut, and handed back after.

Apart from the CLI's error reporting (:mod:`flowdec_cli.errors`, which opens :func:`termination_signals`
around every command) so that library code (training, data workers) can use it without importing click.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["STOP_SIGNALS", "Terminated", "ignore_stop_signals", "own_the_process", "restore_signals",
           "signals_deferred", "signals_ignored", "termination_signals"]


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, systemd, batch schedulers, a closed terminal), raised like Ctrl-C so
    every ``finally``/``except BaseException`` that removes temporary files runs; exit 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.name = signal.Signals(self.signum).name


#: the signals that end a run (Ctrl-C, `timeout`, a batch scheduler, a closed terminal), where this system has them
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

_owns_the_process = False


def own_the_process() -> None:
    """Say that the command is the whole process (the ``flowdec`` console script): once a stop signal has
    arrived, the others then stay ignored until the process exits, instead of being handed back to a
    caller (a library user's handlers are restored)."""
    global _owns_the_process
    _owns_the_process = True


def ignore_stop_signals() -> dict[int, Any]:
    """Ignore the stop signals from here on (main thread only); the handlers they had, for
    :func:`restore_signals`."""
    previous = {}
    for s in STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            previous[s] = signal.signal(s, signal.SIG_IGN)
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    """Hand signals back to the handlers they had, with them blocked meanwhile: one that arrives between
    two of the restores waits for its own handler instead of meeting one of ours."""
    blocked = None
    if hasattr(signal, "pthread_sigmask"):
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, list(previous))
    try:
        for s, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(s, handler)
    finally:
        if blocked is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _stop(owner: int, stopping: list[int], signum: int, frame: Any) -> None:
    # A forked child (a DataLoader worker before its init has run) inherits this handler; the signal that
    # `timeout` or Ctrl-C sends to the whole process group is the parent's to handle, not the child's
    # (Ctrl-C stays a KeyboardInterrupt there, as Python's own handler makes it).
    if os.getpid() != owner:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        return
    # From the first signal on, the run is ending: a second Ctrl-C a few milliseconds later landed in the
    # cleanup or in Python's exit handlers and printed their traceback.
    stopping.append(signum)
    ignore_stop_signals()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


_handling = False  # a termination_signals block is active (the nested command groups each open one)


@contextlib.contextmanager
def termination_signals() -> Iterator[None]:
    """While inside, Ctrl-C raises KeyboardInterrupt and SIGTERM and SIGHUP raise :class:`Terminated` (in the
    main thread; elsewhere, and inside another such block, a no-op); once one has arrived, the three are
    ignored while the block unwinds (its cleanup), then handed back as they were, or, where the command
    owns the process (:func:`own_the_process`), left ignored until it exits."""
    global _handling
    if threading.current_thread() is not threading.main_thread() or _handling:
        yield
        return
    stopping: list[int] = []
    handler = functools.partial(_stop, os.getpid(), stopping)
    previous = {}
    for s in STOP_SIGNALS:
        try:
            previous[s] = signal.signal(s, handler)
        except (ValueError, OSError):
            pass
    _handling = True
    try:
        yield
    finally:
        _handling = False
        if not (stopping and _owns_the_process):
            restore_signals(previous)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP are ignored while the block runs (an emergency save), then handled as
    before: the run ends as it was ending anyway. Main thread only; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = ignore_stop_signals()
    try:
        yield
    finally:
        restore_signals(held)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A stop signal that arrives inside the block is delivered when it ends, to the handler it would have
    met (a training step is taken whole: an interrupt between the optimiser's update and the step count
    saved weights one step ahead of their record). A block that fails passes its own error on, the signal
    dropped (reported as an interruption, a step that failed part-way would be saved). Main thread only;
    elsewhere nothing changes. Blocking
    the signal instead would not do: another thread (a data loader's, a progress bar's) would take it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous: dict[int, Any] = {}
    for s in STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            previous[s] = signal.signal(s, lambda signum, frame: arrived.append(signum))
    try:
        yield
    except BaseException:
        restore_signals(previous)  # the block's own error stands; the run is ending with it anyway
        raise
    restore_signals(previous)
    if arrived:
        signal.raise_signal(arrived[0])
