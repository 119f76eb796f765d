"""How every ``flowdec`` command reports a failure: one line naming the file and the problem, exit 1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

__all__ = ["Failure", "one_line_errors", "describe_os_error"]


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
