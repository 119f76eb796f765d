"""``-`` as standard input or output, as Unix tools have it, in bounded memory.

Audio readers need to seek (the compressor reads its input twice: the peak first, for the input gain) and
most audio writers seek back to finish their header, so a pipe is spooled through a temporary file on disk,
copied in blocks: memory stays flat however long the stream is. A ``.fdc`` is small and is read or written
whole.

A closed pipe (``flowdec models | head -1``) ends the program quietly, as :func:`exit_on_broken_pipe` does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .exceptions import FlowdecError

__all__ = ["STDIO", "is_stdio", "spooled_stdin", "stdout_file", "read_stdin_bytes", "write_stdout_bytes",
           "StreamError", "exit_on_broken_pipe", "check_stdout_not_terminal", "strict_json"]

STDIO = "-"
COPY_BLOCK = 1 << 20
#: Exit status of a program ended by SIGPIPE in a shell (128 + 13), what ``yes | head -1`` reports for ``yes``.
BROKEN_PIPE_EXIT = 141


class StreamError(FlowdecError):
    """Standard input or output cannot be used as asked; the message says why."""


def is_stdio(path: str | os.PathLike | None) -> bool:
    return path is not None and os.fspath(path) == STDIO


def _stdin() -> BinaryIO:
    return sys.stdin.buffer


def _stdout() -> BinaryIO:
    return sys.stdout.buffer


def check_stdout_not_terminal(what: str) -> None:
    """Refuse to write binary data to a terminal (as zstd and gzip do)."""
    stream = sys.stdout
    if stream is not None and hasattr(stream, "isatty") and stream.isatty():
        raise StreamError(f"refusing to write {what} to a terminal; redirect standard output (> FILE or | ...)")


@contextlib.contextmanager
def spooled_stdin(suffix: str = "") -> Iterator[Path]:
    """Standard input copied to a temporary file (deleted afterwards), block by block."""
    fd, name = tempfile.mkstemp(prefix="flowdec-stdin-", suffix=suffix)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(_stdin(), f, COPY_BLOCK)
        if path.stat().st_size == 0:
            raise StreamError("standard input is empty")
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def stdout_file(suffix: str) -> Iterator[Path]:
    """A temporary path to write a file into; once the block ends without error, the file is copied to
    standard output block by block and deleted (on error it is only deleted)."""
    folder = Path(tempfile.mkdtemp(prefix="flowdec-stdout-"))
    path = folder / f"out{suffix}"
    try:
        yield path
        with open(path, "rb") as f:
            out = _stdout()
            shutil.copyfileobj(f, out, COPY_BLOCK)
            out.flush()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_stdin_bytes(limit: int = 1 << 31) -> bytes:
    data = _stdin().read(limit + 1)
    if not data:
        raise StreamError("standard input is empty")
    if len(data) > limit:
        raise StreamError(f"standard input is larger than {limit} bytes; not a .fdc file")
    return data


def write_stdout_bytes(data: bytes) -> None:
    out = _stdout()
    out.write(data)
    out.flush()


def exit_on_broken_pipe() -> None:
    """End the program quietly after the reader of standard output went away: further writes (and the final
    flush at exit) go to ``/dev/null``, and the exit status is the shell's for SIGPIPE."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(BROKEN_PIPE_EXIT)


def strict_json(value: Any, indent: int | None = None) -> str:
    """``value`` as standard JSON, for ``--json`` outputs that other programs parse.

    Python's ``json`` writes NaN and Infinity, which JSON does not have and strict parsers reject (a
    metric that could not be computed, a forged file's header): they become ``null``. Anything else that
    JSON cannot hold (a path, a tuple's odd member) is written as its ``str``.
    """
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if v is None or isinstance(v, bool | int | float | str):
            return v
        return str(v)

    return json.dumps(clean(value), indent=indent, allow_nan=False)
