"""How every ``flowdec`` command reports a failure: one line naming the file and the problem, exit 1."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import click

__all__ = ["Failure", "Terminated", "one_line_errors", "describe_os_error", "termination_signals"]


class Failure(click.ClickException):
    """A one-line failure (exit 1); usage errors stay click's (exit 2)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"flowdec: error: {self.format_message()}", err=True)


def describe_os_error(exc: OSError) -> str:
    """Disk full, permissions, missing folders: the file and the reason, without the traceback."""
    return f"{str(exc.filename) + ': ' if exc.filename else ''}{exc.strerror or exc}"


def one_line_errors(errors: Callable[[], tuple[type[BaseException], ...]],
                    clean: Callable[[str], str] = str) -> Callable[[Callable], Callable]:
    """Decorate a command so the package's own errors (``errors()``, imported lazily so ``--help`` stays
    fast) and OS errors become a :class:`Failure`; ``clean`` shortens a message first."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except errors() as exc:
                raise Failure(clean(str(exc))) from None
            except BrokenPipeError:
                raise  # a closed pipe is no error: the main command ends quietly
            except OSError as exc:
                raise Failure(describe_os_error(exc)) from None

        return wrapper

    return decorate


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, systemd, batch schedulers, a closed terminal), raised like Ctrl-C so
    every ``finally``/``except BaseException`` that removes temporary files runs; exit 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.name = signal.Signals(self.signum).name


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def termination_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Terminated` (in the main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {}
    for s in wanted:
        try:
            previous[s] = signal.signal(s, _raise_terminated)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for s, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(s, handler)
