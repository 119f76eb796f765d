"""``-`` as standard input or output, as Unix tools have it, in bounded memory.

Audio readers need to seek (the compressor reads its input twice: the peak first, for the input gain) and
most audio writers seek back to finish their header, so a pipe is spooled through a temporary file on disk,
copied in blocks: memory stays flat however long the stream is. A named input that is a FIFO (``<(cmd)``,
``mkfifo``) can be read only once too, so it is spooled the same way. A ``.fdc`` is small and
is read or written whole.

A terminal is refused on either side, before any work: binary data typed in never ends, and written out
garbles the screen. A closed standard stream (``<&-``, ``>&-``) is refused by name.

A closed pipe (``flowdec models | head -1``) ends the program quietly, as :func:`exit_on_broken_pipe` does.
Standard error carries only diagnostics: when it cannot be written (``2>/dev/full``, a closed pipe) they are
dropped and the run goes on (:func:`tolerant_stderr`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from .exceptions import FlowdecError
from .fileio import copy_all, no_space_left, open_sink, read_up_to, temporary_folder, write_all

__all__ = ["STDIO", "is_stdio", "read_once", "spooled_input", "stdout_file", "stdin_stream", "StreamError",
           "exit_on_broken_pipe", "check_stdin", "check_stdout", "require_stdout", "strict_json", "tolerant_stderr"]

STDIO = "-"
COPY_BLOCK = 1 << 20
PROBE_BYTES = 1 << 20  # what a copied stream shows of itself before it must look like audio
#: Exit status of a program ended by SIGPIPE in a shell (128 + 13), what ``yes | head -1`` reports for ``yes``.
BROKEN_PIPE_EXIT = 141


class StreamError(FlowdecError):
    """Standard input or output cannot be used as asked; the message says why."""


def is_stdio(path: str | os.PathLike | None) -> bool:
    return path is not None and os.fspath(path) == STDIO


def _stdin() -> BinaryIO:
    if sys.stdin is None:  # Python's stand-in for a descriptor 0 that was closed (`<&-`)
        raise StreamError("standard input is closed; give an input file, or redirect it (< FILE or ... |)")
    return sys.stdin.buffer


def _stdout() -> BinaryIO:
    if sys.stdout is None:
        raise StreamError("standard output is closed; give an output file, or redirect it (> FILE or | ...)")
    return sys.stdout.buffer


def _is_terminal(stream: BinaryIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def check_stdin(what: str) -> None:
    """Refuse a closed standard input, or a terminal: binary data typed in never ends, so the command would
    wait silently; and one known to be empty (``< /dev/null``, an empty file), before a model is loaded."""
    stream = _stdin()
    if _is_terminal(stream):
        raise StreamError(f"refusing to read {what} from a terminal; redirect standard input (< FILE or ... |)")
    if _known_empty(stream):
        raise StreamError("standard input is empty")


def _known_empty(stream: BinaryIO) -> bool:
    """Whether a stream is, without reading it, an empty regular file (from where it stands) or /dev/null;
    a pipe or anything else may still bring data."""
    try:
        fd = stream.fileno()
        here = os.fstat(fd)
        if stat.S_ISREG(here.st_mode):
            return here.st_size <= os.lseek(fd, 0, os.SEEK_CUR)
        return stat.S_ISCHR(here.st_mode) and here.st_rdev == os.stat(os.devnull).st_rdev
    except (OSError, ValueError, AttributeError):  # no descriptor (an in-memory stream), or no /dev/null
        return False


def check_stdout(what: str) -> None:
    """Refuse a closed standard output, or a terminal for binary data (as zstd and gzip do)."""
    if _is_terminal(_stdout()):
        raise StreamError(f"refusing to write {what} to a terminal; redirect standard output (> FILE or | ...)")


def check_device_output(path: str | os.PathLike, what: str) -> None:
    """Refuse an output device that is a terminal (``/dev/tty``; ``/dev/stderr`` on one), as ``-`` on one is.
    Only a character device is opened to ask: opening and closing a FIFO would end its reader's input."""
    try:
        if not stat.S_ISCHR(os.stat(path).st_mode):
            return
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # writing it will say why
        return
    try:
        terminal = os.isatty(fd)
    finally:
        os.close(fd)
    if terminal:
        raise StreamError(f"{path}: is a terminal; refusing to write {what} to it (give a file, or a pipe)")


def require_stdout() -> None:
    """Refuse a closed standard output for what a command prints there (``flowdec info x.fdc >&-``): click
    drops what it echoes to a closed one, and the command would end as if it had said it."""
    _stdout()


def read_once(path: str | os.PathLike) -> bool:
    """Whether an input can be read only once (``-``, a FIFO, ``<(cmd)``), so that readers which seek or read
    twice must get a spooled copy. Devices are not spooled: ``/dev/zero`` would fill the disk, and no device
    holds an audio file."""
    if is_stdio(path):
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # missing or unreadable: the reader says why
    return stat.S_ISFIFO(mode)


def _owned_temporary_folder(label: str) -> Path:
    """A folder in the system's temporary directory tagged with this process (:func:`fileio.temporary_folder`),
    so that what a killed run leaves there is swept by the next one."""
    return temporary_folder(tempfile.gettempdir(), label)


def _out_of_room(stream: str, folder: Path) -> StreamError:
    """The temporary folder (``TMPDIR``) filled up while a copy of ``stream`` was kept there: said so, since
    the output's own disk, or ``-``, is not what ran out."""
    return StreamError(f"{stream}: the temporary folder {folder.parent} has no room left for the copy of it "
                       "that flowdec keeps there; set TMPDIR to a folder with room")


def _spool(src: BinaryIO, out: BinaryIO, name: str, fdc: bool = False) -> None:
    """Copy a stream: audio to its end, a .fdc only as far as its header declares (one byte more), so that
    ``(cat a.fdc; cat /dev/zero) | flowdec decompress - x.wav`` is refused at once instead of filling
    the disk first; a stream whose first ``PROBE_BYTES`` begin no audio format is refused there too, and
    one that was to be a .fdc file (``fdc``) is not copied past first bytes that are not its magic."""
    from .audio import unrecognised_start
    from .container import FDC_MAGIC, read_fdc_rest

    head = src.read(len(FDC_MAGIC))
    write_all(out, head)
    if head == FDC_MAGIC:
        write_all(out, read_fdc_rest(src, head, name))
        out.flush()
        return
    if fdc:  # what was to be a .fdc file is not one: its first bytes are enough for the reader to say so
        return
    start = head + read_up_to(src, PROBE_BYTES - len(head))
    write_all(out, start[len(head):])
    if len(start) == PROBE_BYTES and unrecognised_start(start):  # a shorter stream is judged whole, as is
        raise StreamError(f"{'standard input' if name == '-' else name}: not a readable audio file (its first "
                          f"{PROBE_BYTES >> 20} MiB begin no format libsndfile knows)")
    copy_all(src, out, COPY_BLOCK)


def _redirected_file() -> Path | None:
    """Standard input as a path to reopen, where it is a regular file at its start that Linux's
    ``/proc/self/fd`` can name and this process may open again (the shell opened it, perhaps with rights
    this process lacks: the reopening is checked anew); else None, and it is copied: a pipe, a terminal, a
    file read partway, another system, or a WAV whose sizes were left 0 (only a copy may be mended)."""
    from .audio import unsized_wav

    if sys.stdin is None:
        return None
    try:
        fd = sys.stdin.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.lseek(fd, 0, os.SEEK_CUR) != 0:
            return None
        path = Path(f"/proc/self/fd/{fd}")
        os.close(os.open(path, os.O_RDONLY))
        if not os.path.samestat(os.stat(path), os.fstat(fd)) or unsized_wav(path):
            return None
        return path
    except (OSError, ValueError, AttributeError):  # no descriptor (an in-memory stdin), no /proc, no rights
        return None


@contextlib.contextmanager
def spooled_input(source: str | os.PathLike = STDIO, suffix: str = "", fdc: bool = False) -> Iterator[Path]:
    """Standard input (``-``) or a FIFO, copied to a temporary file (deleted afterwards, and by the next run
    if this one is killed) block by block. Standard input that is a regular file read from its start
    (``flowdec compress - x.fdc < big.wav``) is not copied: the path is that file, reopened through
    ``/proc/self/fd``, which readers may seek in and read twice like any other."""
    name = "standard input" if is_stdio(source) else f"{source}:"
    redirected = _redirected_file() if is_stdio(source) else None
    if redirected is not None:
        if redirected.stat().st_size == 0:
            raise StreamError(f"{name} is empty")
        yield redirected
        return
    folder = _owned_temporary_folder("stdin")
    path = folder / f"in{suffix}"
    try:
        with open(path, "xb") as f, (contextlib.nullcontext(_stdin()) if is_stdio(source)
                                        else open(source, "rb")) as src:
            if _is_terminal(src):  # /dev/tty, or /dev/stdin at a terminal
                raise StreamError(f"{source}: is a terminal; refusing to read audio or .fdc data from it")
            try:
                _spool(src, f, "-" if is_stdio(source) else os.fspath(source), fdc)
                f.flush()
            except OSError:
                if no_space_left(folder):
                    raise _out_of_room(name.rstrip(":"), folder) from None
                raise
        if path.stat().st_size == 0:
            raise StreamError(f"{name} is empty")
        from .audio import repair_streamed_wav

        repair_streamed_wav(path)  # a WAV piped in with its sizes left 0; the copy is ours to mend
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def stdout_file(suffix: str, sink: str | os.PathLike = STDIO) -> Iterator[Path]:
    """A temporary path to write a file into; once the block ends without error, the file is copied to
    standard output (or into ``sink``, a device or FIFO: ``/dev/null`` has no extension to pick the format
    from, so it is written as ``-`` is) block by block and deleted (on error it is only deleted)."""
    folder = _owned_temporary_folder("stdout")
    path = folder / f"out{suffix}"
    try:
        try:
            yield path
        except (OSError, FlowdecError):  # the encoder or decoder writing into ``path``
            if no_space_left(folder):
                raise _out_of_room("standard output" if is_stdio(sink) else os.fspath(sink), folder) from None
            raise
        try:
            with open(path, "rb") as f, (contextlib.nullcontext(_stdout()) if is_stdio(sink)
                                         else open_sink(sink)) as out:
                copy_all(f, out, COPY_BLOCK)
        except OSError as exc:
            if not is_stdio(sink) and exc.filename is None:  # a write to a device names no file: say which
                exc.filename = os.fspath(sink)
            raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stdin_stream(what: str) -> BinaryIO:
    """Standard input as a binary stream, for a reader that stops where its data says (``flowdec info -``);
    refused when closed or a terminal (:func:`check_stdin`)."""
    check_stdin(what)
    return _stdin()


class _TolerantStream:
    """A stream whose write and flush errors (a full disk, a closed pipe, an I/O error) are dropped;
    everything else is the wrapped stream's (its encoding, isatty, fileno: tqdm and click ask for them).
    Its ``buffer`` is tolerant too: click writes to the binary stream beneath an ASCII-encoded one."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def buffer(self) -> Any:
        return _TolerantStream(self._stream.buffer)

    def write(self, data: Any) -> int:
        try:
            return self._stream.write(data)
        except OSError:
            return len(data)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def tolerant_stderr() -> None:
    """Make ``sys.stderr`` drop what it cannot write instead of raising: messages, progress bars and
    warnings are not the result, and a run whose standard error is full (``2>/dev/full``) or a closed pipe
    failed with exit 1, its output unwritten, where it had nothing to say at all. Once per process."""
    if sys.stderr is not None and not isinstance(sys.stderr, _TolerantStream):
        sys.stderr = _TolerantStream(sys.stderr)


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

    A file name that is not valid UTF-8 reaches Python with its odd bytes as lone surrogates, which JSON
    can only write as escapes that UTF-8 parsers reject: such a text is written with U+FFFD in their place,
    and, as a member of an object, with its exact bytes beside it in base64 (``"input"`` and
    ``"input_base64"``), so a script can still find the file. Bytes (a forged header's extra field) are
    written the same way: as text, and as a member of an object with their exact value in base64 beside.
    """
    def text(v: str) -> tuple[str, str | None]:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(v)
            return raw.decode("utf-8", "replace"), base64.b64encode(raw).decode("ascii")
        return v, None

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            out: dict[str, Any] = {}
            for k, x in v.items():
                key = text(str(k))[0]
                if isinstance(x, PurePath):
                    x = str(x)
                if isinstance(x, bytes | bytearray):
                    out[key] = bytes(x).decode("utf-8", "replace")
                    out[f"{key}_base64"] = base64.b64encode(x).decode("ascii")
                elif isinstance(x, str):
                    out[key], exact = text(x)
                    if exact is not None:
                        out[f"{key}_base64"] = exact
                else:
                    out[key] = clean(x)
            return out
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if v is None or isinstance(v, bool | int | float):
            return v
        if isinstance(v, bytes | bytearray):
            return bytes(v).decode("utf-8", "replace")
        return text(str(v))[0]

    return json.dumps(clean(value), indent=indent, allow_nan=False)
