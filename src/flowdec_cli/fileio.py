"""Writing files so that a reader never sees half of one, and nothing is lost or left behind.

* Every output is written to a temporary sibling (same folder, so the final rename is atomic), fsynced,
  given the usual mode, then published by a rename.
* Without ``overwrite`` the publish is *no-clobber*: it refuses to replace a file that appeared while we
  were writing (``renameat2(RENAME_NOREPLACE)`` where the kernel and file system have it, else a hard link
  then an unlink, both atomic) and raises :class:`OutputExistsError`.
* ``overwrite`` keeps the replaced file's permission bits: ``-f`` changes what a file holds, not who may
  read it.
* Temporary names carry the host and the owner's pid: ``.NAME.flowdec-HOST-PID.RANDOM.part``. A SIGKILL
  cannot be caught, so the first temporary file a process makes in a folder removes that folder's
  leftovers whose owner (on this host) is gone; a live process's files are never touched. NAME is cut
  short where the whole would not fit the file system's name limit, so any name that fits can be written.
* An output that is a character device or a FIFO (``/dev/null``, ``/dev/stdout``, ``mkfifo``) is what the
  user wants written, not a file to replace: the finished result is copied into it (there is nothing to
  clobber, so no ``overwrite`` is needed). Sockets and block devices are refused.

docs/faults.md states what this promises.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import re
import select
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from .exceptions import CodecError, FlowdecError

__all__ = ["OutputExistsError", "atomic_write_bytes", "temporary_sibling", "temporary_folder", "publish",
           "publish_folder", "remove_path", "remove_stale_temporaries", "no_space_left", "owner_alive", "same_file",
           "output_is_sink", "would_replace", "open_sink", "write_all", "read_up_to", "copy_all", "why_absent",
           "special_kind", "descriptor_alias"]


class OutputExistsError(FlowdecError, FileExistsError):
    """An output that is already there, where nothing may be replaced: found ``before`` any work, or by a
    no-clobber publish (another process made it meanwhile)."""

    def __init__(self, path: str | os.PathLike, before: bool = False, reason: str = "exists",
                 argument: str = "overwrite=True") -> None:
        super().__init__(errno.EEXIST, reason, str(path))
        self.path = Path(path)
        self.before = before
        self.reason = reason  # what is there: "exists", or for a folder "is not empty"
        self.argument = argument  # what replaces it, in the raising function's terms (a command names its flag)

    def __str__(self) -> str:
        return self.describe(self.argument)

    def describe(self, replace_with: str) -> str:
        """The message, naming what replaces the file in the caller's terms (an argument, a flag)."""
        if self.before:
            return f"{self.path}: {self.reason}; use {replace_with} to overwrite"
        return f"{self.path}: appeared while this run was writing it; left as it is, our result discarded " \
               f"(use {replace_with} to overwrite)"


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with nesting too deep for Python's recursion (a 400 KB ``[[[[...`` file) refused as
    the ValueError other malformed JSON raises, so each reader's handler names the file."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def same_file(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Whether writing ``dst`` would replace ``src``: the same path once links and ``..`` are resolved. The
    one rule for the library and the command line, which both refuse such an output."""
    return Path(src).resolve() == Path(dst).resolve()


_SINKS = {stat.S_IFCHR: "a character device", stat.S_IFIFO: "a FIFO"}
_REFUSED = {stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def why_absent(path: str | os.PathLike, what: str = "file") -> str:
    """Why a path that does not exist cannot be read: a link whose target is missing says where it points
    (``no such file`` for a name that is there would send the user looking in the wrong place)."""
    path = Path(path)
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            return "a link to nothing"
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"a link that leads back to itself ({target})"
        return f"a link to nothing ({target})"
    return f"no such {what}"


def why_not_a_regular_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file of ours (weights, config, tables), or None: missing (a dangling
    link too), or there but not a regular file (a folder, FIFO or device such as a link to /dev/zero, which
    would be read forever)."""
    path = Path(path)
    if not path.exists():
        return why_absent(path)
    if not path.is_file():
        return "not a regular file"
    return None


def special_kind(path: str | os.PathLike) -> str | None:
    """What a path that is neither a regular file nor a folder is ("a FIFO", "a socket", ...), else None
    (also for nothing there, or a name the system cannot look up)."""
    try:
        kind = stat.S_IFMT(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None
    return {**_SINKS, **_REFUSED}.get(kind)


_DESCRIPTOR = re.compile(r"^/(?:proc/(?:self|thread-self|(?P<pid>\d+))|dev)/fd/(?P<fd>\d+)$")


def descriptor_alias(path: str | os.PathLike) -> int | None:
    """The descriptor of this process that ``path`` names (``/dev/stdout``, ``/dev/fd/1``,
    ``/proc/self/fd/1``, or a link to one), else None. Such a name is a stream, whatever it leads to: with
    standard output redirected to a file, ``/dev/stdout`` stats as that regular file, and renaming a finished
    output over the name would replace the link in /dev rather than write into the stream."""
    current = os.path.abspath(os.fspath(path))
    for _ in range(40):  # the kernel's own limit on links followed
        found = _DESCRIPTOR.match(current)
        if found and (found["pid"] is None or int(found["pid"]) == os.getpid()):
            return int(found["fd"])
        try:
            target = os.readlink(current)
        except OSError:
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
    return None


def output_is_sink(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a character device or a FIFO, written into in place: renaming a file over
    ``/dev/null`` or a FIFO would destroy what the user pointed at. A socket or a block device (a disk) is
    never an output, so it raises :class:`FlowdecError` rather than answer. A name for one of this process's
    descriptors (:func:`descriptor_alias`) is written into too, whatever it leads to."""
    if descriptor_alias(path) is not None:
        return True
    kind = special_kind(path)  # None: a file, a folder, or nothing there yet (writing it says why)
    if kind in _REFUSED.values():
        raise FlowdecError(f"{path}: is {kind}, not a file; choose another output path")
    return kind in _SINKS.values()


def would_replace(path: str | os.PathLike) -> bool:
    """Whether publishing ``path`` would replace something, which needs ``overwrite`` (``-f/--force``): a
    device or FIFO (``/dev/null``) is written into, not replaced; a socket or block device raises (never an
    output). A symbolic link counts even when what it points at does not exist: the rename would replace
    the link."""
    return os.path.lexists(path) and not output_is_sink(path)


def write_all(out: BinaryIO, data: bytes | memoryview) -> None:
    """Write every byte: an unbuffered stream (``python -u``, a pipe) may take only part of a write, and a
    reader that has gone away must surface as ``BrokenPipeError`` on the next write, not as success."""
    view = memoryview(data).cast("B")
    while view:
        n = out.write(view)
        if n is None:  # a non-blocking descriptor that is full: wait until it takes more
            select.select([], [out.fileno()], [])
            continue
        view = view[n:]


def read_up_to(src: Any, n: int, block: int = 1 << 20) -> bytes:
    """At most ``n`` bytes, fewer only at the end of the stream (a pipe returns what it has at hand), read in
    blocks, so that memory follows what arrives rather than what was declared."""
    parts, left = [], n
    while left > 0:
        chunk = src.read(min(left, block))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def copy_all(src: BinaryIO, out: BinaryIO, block: int = 1 << 20) -> None:
    """``src`` to its end into ``out`` in blocks (memory stays flat), every byte written, then flushed."""
    while chunk := src.read(block):
        write_all(out, chunk)
    out.flush()


def open_sink(path: str | os.PathLike) -> BinaryIO:
    """A device or FIFO opened for writing, without ``O_CREAT``: one removed meanwhile is an error, never a
    regular file made in its place."""
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))
    return open(fd, "wb", buffering=0)


def _copy_into_sink(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    with open_sink(path) as out, open(tmp, "rb") as src:
        copy_all(src, out)


def _default_mode(folder: bool = False) -> int:
    """The mode a plain ``open()`` (``mkdir``) would give: mkstemp's 0600 (mkdtemp's 0700) would hide outputs
    from other users."""
    return (0o777 if folder else 0o666) & ~_umask()


def _umask() -> int:
    """The process's umask, read where Linux shows it: setting it to read it (the only portable way) would
    change it for every thread for a moment, and two threads doing so at once could leave it changed."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- temporary names ---------------------------------------------------------------------------------

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_OWNED = re.compile(r"^\..*\.flowdec-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.[A-Za-z0-9_]+(\.part|\.tmp)?$")
_swept: set[str] = set()


def _tag() -> str:
    return f"flowdec-{_HOST}-{os.getpid()}."


#: what ``mkstemp``/``mkdtemp`` add between prefix and suffix
_RANDOM_CHARS = 8


def _name_max(folder: str | os.PathLike) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _owned_prefix(folder: str | os.PathLike, name: str, suffix: str) -> str:
    """``.NAME.flowdec-HOST-PID.``, with NAME cut short where the temporary name would pass the folder's
    name limit (an output name of 240 bytes is fine, its temporary name would not be). The owner tag stays
    whole: it is what :func:`remove_stale_temporaries` matches, and the random part keeps names unique."""
    room = _name_max(folder) - len(os.fsencode(f"..{_tag()}{suffix}")) - _RANDOM_CHARS
    while len(os.fsencode(name)) > max(room, 0):
        name = name[:-1]
    return f".{name}.{_tag()}"


def owner_alive(pid: int) -> bool:
    """Is process ``pid`` (on this host) still running? Unknown counts as alive: never remove a live run's file."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def remove_path(path: str | os.PathLike, ignore_errors: bool = False) -> None:
    """Remove what is at ``path``: a folder with all it holds, else the file or link itself (never what a
    link points to); nothing there is fine. ``ignore_errors``: remove what can be, say nothing."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError:
        if not ignore_errors:
            raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files and folders in ``folder`` left by flowdec processes of this host that are gone
    (a SIGKILL, a power cut); return what was removed. Never touches a running process's files."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _OWNED.match(name)
        if not m or m["host"] != _HOST or owner_alive(int(m["pid"])):
            continue
        p = Path(folder) / name
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _swept:
        _swept.add(key)
        remove_stale_temporaries(folder)


def temporary_sibling(path: str | os.PathLike, suffix: str = ".part") -> Path:
    """An empty temporary file in ``path``'s folder (same file system, so the final rename is atomic),
    named ``.NAME.flowdec-HOST-PID.RANDOM.part`` so that a later run can tell whether its owner lives."""
    path = Path(path)
    # a device's folder (/dev) is not ours to write in, nor on the same file system as anything we make
    folder = Path(tempfile.gettempdir()) if output_is_sink(path) else path.parent
    _sweep_once(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_owned_prefix(folder, path.name, suffix), suffix=suffix, dir=folder)
    except OSError as exc:  # a read-only or full folder: the user's output is what cannot be written
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    try:
        os.close(fd)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def temporary_folder(folder: str | os.PathLike, label: str) -> Path:
    """A temporary folder inside ``folder`` (created if needed), owner-tagged like :func:`temporary_sibling`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _sweep_once(folder)
    return Path(tempfile.mkdtemp(prefix=_owned_prefix(folder, label, ""), dir=folder))


# -- publishing --------------------------------------------------------------------------------------

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _libc_renameat2() -> Any:
    """The C library's renameat2, looked up once (None where it has none)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _renameat2(src: str, dst: str, flags: int) -> int:
    """Linux's renameat2: 0 when done, else the errno (ENOSYS where the C library lacks it)."""
    fn = _libc_renameat2()
    if fn is None:
        return errno.ENOSYS
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return 0
    return ctypes.get_errno()


# renameat2 not supported here (old kernel, some network or FUSE file systems): the caller falls back
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM)


def _renameat2_noreplace(src: str, dst: str) -> bool:
    """Rename without replacing; True if done, False if the system cannot (then the caller falls back).
    Raises :class:`OutputExistsError` when ``dst`` exists."""
    err = _renameat2(src, dst, _RENAME_NOREPLACE)
    if err == 0:
        return True
    if err == errno.EEXIST:
        raise OutputExistsError(dst)
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), dst)


def _link_noreplace(src: str, dst: str) -> None:
    """Hard link then unlink: the link fails atomically if ``dst`` exists. Without hard links (vfat and
    some network file systems) fall back to check-then-rename, which only narrows the race."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise OutputExistsError(dst) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise OutputExistsError(dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Give a finished temporary file the usual mode (or, replacing a file, that file's) and move it into
    place. With ``overwrite=False`` an existing ``path`` is left alone: the temporary file is removed and
    :class:`OutputExistsError` raised. A device or FIFO is written into instead (:func:`output_is_sink`)."""
    try:
        sink = output_is_sink(path)  # a socket that appeared while we wrote raises
        if sink:
            _copy_into_sink(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sink:
        Path(tmp).unlink(missing_ok=True)
        return
    mode = _default_mode()
    if overwrite:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode):
                mode = stat.S_IMODE(st.st_mode)
    src, dst = os.fspath(tmp), os.fspath(path)
    try:
        os.chmod(src, mode)
        if overwrite:
            os.replace(src, dst)
        elif not _renameat2_noreplace(src, dst):
            _link_noreplace(src, dst)
    except OutputExistsError:
        Path(src).unlink(missing_ok=True)
        raise
    except OSError as exc:  # named by the output, never by our temporary file (its folder may have gone)
        Path(src).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), dst) from None


def publish_folder(build: str | os.PathLike, final: str | os.PathLike, overwrite: bool = False) -> None:
    """Move a finished folder into place in one rename. An existing ``final`` is replaced only with
    ``overwrite`` (exchanged for the new one in one step where Linux can, so a reader never finds it gone;
    the old one is then removed); otherwise :class:`OutputExistsError`."""
    build, final = Path(build), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    mode = _default_mode(folder=True)  # a staging folder is mkdtemp's 0700; a replaced one keeps its mode
    with contextlib.suppress(OSError):
        if overwrite and final.is_dir() and not final.is_symlink():
            mode = stat.S_IMODE(final.stat().st_mode)
    if build.is_dir() and not build.is_symlink():
        os.chmod(build, mode)
    if overwrite and (final.exists() or final.is_symlink()):
        err = _renameat2(os.fspath(build), os.fspath(final), _RENAME_EXCHANGE)
        if err == 0:  # swapped in one step: never a moment without something at ``final``
            remove_path(build, ignore_errors=True)  # what was at ``final``
            return
        if err in _UNSUPPORTED:
            old = final.with_name(f"{_owned_prefix(final.parent, final.name, 'old')}old")
            os.replace(final, old)
            try:
                os.replace(build, final)
            except BaseException:
                os.replace(old, final)
                raise
            remove_path(old, ignore_errors=True)  # a file too, where a file was replaced
            return
        if err != errno.ENOENT:  # ENOENT: ``final`` went meanwhile; the plain move below puts ours there
            raise OSError(err, os.strerror(err), os.fspath(final))
    if _renameat2_noreplace(os.fspath(build), os.fspath(final)):
        return
    if final.exists() or final.is_symlink():
        raise OutputExistsError(final)
    try:
        os.rename(build, final)  # POSIX: fails for a non-empty folder that appeared meanwhile
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise OutputExistsError(final) from None
        raise


def no_space_left(folder: str | os.PathLike, wanted: int = 0, margin: int = 1 << 20) -> bool:
    """Does ``folder``'s file system have (about) no room left for ``wanted`` more bytes? ``margin``: the room
    also asked for (a MiB, when telling why a write failed; a file's header and last block, when its size
    is known before it is written)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < max(wanted, 0) + margin


def atomic_write_bytes(path: str | os.PathLike, data: bytes, make_parents: bool = True,
                       overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; no temporary file is left behind on failure. With
    ``make_parents=False`` a missing folder is an error (``FileNotFoundError``) rather than created; with
    ``overwrite=False`` an existing ``path`` raises :class:`OutputExistsError` and stays as it is.
    Write errors (a full disk) name ``path``."""
    path = Path(path)
    if make_parents:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file where a folder must be: name that file
            blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists()), path.parent)
            raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(blocker)) from None
    tmp = temporary_sibling(path)
    try:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        publish(tmp, path, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output(dst: Path, overwrite: bool, src: Path | None = None) -> None:
    """Before any work: the output is published by a rename once it is complete, which would replace the
    input it was made from; and without ``overwrite`` an output that is already there is refused now, not
    after the whole decode (the no-clobber rename still catches one that appears meanwhile). A device or
    FIFO is written into, never replaced."""
    if src is not None and same_file(src, dst):
        raise CodecError(f"{dst}: output is the input file; choose another output path")
    if dst.is_dir():  # a rename cannot replace a folder, even with overwrite: found now, not after the work
        raise CodecError(f"{dst}: is a folder; a file cannot replace it")
    if not output_is_sink(dst) and dst.parent.is_dir() and not os.access(dst.parent, os.W_OK | os.X_OK):
        raise CodecError(f"{dst}: cannot write (no permission to create files in {dst.parent})")
    if not overwrite and would_replace(dst):
        raise OutputExistsError(dst, before=True)
