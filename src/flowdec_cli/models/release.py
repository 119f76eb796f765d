"""The released FlowDec models: download the release's ``checkpoints.zip`` (resuming), check it, take
only its four weight files out and convert them into model folders in the cache.

Whatever the archive's size or hash, each converted postfilter must have the released architecture (the key
names, shapes and dtypes of :data:`RELEASED_POSTFILTER_KEYS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any

from .. import __version__
from ..fileio import temporary_folder
from .cards import model_card_markdown
from .catalogue import (
    OFFICIAL_BY_NAME,
    OFFICIAL_MEMBERS,
    OFFICIAL_MODELS,
    OFFICIAL_REPO,
    OFFICIAL_ZIP_SHA256,
    OFFICIAL_ZIP_SIZE,
    OFFICIAL_ZIP_URL,
    CacheDir,
    RegistryEntry,
    cache_root,
    models_dir,
)
from .folder import ModelError, ModelFolderBuilder, is_model_folder
from .loading import ndac_from_official

__all__ = ["download", "fetch_official", "check_released_architecture", "RELEASED_POSTFILTER_KEYS"]

# Key names, shapes and dtypes of the released postfilters' EMA weights (flowdec_75m and flowdec_25s list the
# same): a converted postfilter must match them exactly, whatever the archive's size or hash.
RELEASED_POSTFILTER_KEYS = Path(__file__).resolve().parent.parent / "released" / "flowdec_postfilter_keys.json"
OFFICIAL_CITATION = """@inproceedings{welker2025flowdec,
  title={{FlowDec}: A flow-based full-band general audio codec with high perceptual quality},
  author={Simon Welker and Matthew Le and Ricky T. Q. Chen and Wei-Ning Hsu and Timo Gerkmann and
          Alexander Richard and Yi-Chiao Wu},
  booktitle={The Thirteenth International Conference on Learning Representations},
  year={2025},
  url={https://openreview.net/forum?id=uxDFlPGRLX}
}"""
_MAX_MEMBER_BYTES = 4 << 30  # no released weight file comes near this; refuse anything bigger
_MAX_EXPANSION = 20  # float weights deflate by a few per cent; a member that expands more is no weight file


def _is_url(source: str) -> bool:
    return bool(re.match(r"^(https?|ftp)://", source, re.IGNORECASE))


def _file_url_path(source: str) -> Path | None:
    if source.lower().startswith("file://"):
        return Path(urllib.request.url2pathname(source[len("file://"):]))
    return None


def _bar(total: int | None, desc: str, progress: bool, initial: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=True if not progress else None, dynamic_ncols=True, leave=False)


def partial_download(dest: Path) -> Path:
    """Where :func:`download` keeps what it has of ``dest`` until it is whole."""
    return dest.with_name(dest.name + ".part")


def download(url: str, dest: Path, expected_size: int | None = None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous partial download (HTTP Range).

    One run at a time per destination (a lock file beside it: two runs appending to one partial file lost
    both). With ``expected_size`` no more than that is ever written; a body that ends before its
    Content-Length is an interrupted download (kept, to resume), and a web page sent in place of the file
    is refused before a byte of it is kept."""
    from filelock import FileLock, Timeout

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dest.with_name(dest.name + ".lock")))  # kept: removing a lock another run holds
    # would let a third take it too
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ModelError(f"{dest}: another flowdec is downloading it now; run again when it has finished") from None
    except OSError as exc:
        raise ModelError(f"{dest.parent}: cannot write the download there ({exc.strerror or exc})") from None
    part = partial_download(dest)
    try:
        return _download_locked(url, dest, part, expected_size, progress, timeout)
    except BaseException:  # an error, or Ctrl-C while connecting
        with contextlib.suppress(OSError):
            if part.stat().st_size == 0:  # made only to learn that the folder takes it: nothing to resume
                part.unlink()
        raise
    finally:
        lock.release()


def _download_locked(url: str, dest: Path, part: Path, expected_size: int | None, progress: bool,
                     timeout: float) -> Path:
    if dest.is_file() and (expected_size is None or dest.stat().st_size == expected_size):
        return dest
    have = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and have > expected_size:
        part.unlink()
        have = 0
    if expected_size is not None and have == expected_size:
        os.replace(part, dest)
        return dest
    try:  # before connecting: a folder we cannot write is named as such, not as an interrupted download
        open(part, "ab").close()
    except OSError as exc:
        raise ModelError(f"{part}: cannot write the download there ({exc.strerror or exc})") from None
    req = urllib.request.Request(url, headers={"User-Agent": f"flowdec-cli/{__version__}"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    hint = "check the network, or download it another way and pass the file with --from PATH"
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return _nothing_past(url, exc, part, dest, have, expected_size)
        raise ModelError(f"{url}: download failed (HTTP {exc.code} {exc.reason}); {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ModelError(f"{url}: cannot download ({getattr(exc, 'reason', None) or exc}); {hint}") from None
    except (http.client.HTTPException, ValueError) as exc:  # a malformed address or answer
        raise ModelError(f"{url}: cannot download ({type(exc).__name__}: {str(exc).strip()[:80]}); {hint}") from None
    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        if have and status != 206:
            have = 0  # the server ignored the range: start over
        elif have:
            m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise ModelError(f"{url}: the server answered a resume request with the wrong range; "
                                 f"delete {part} and run again")
        if "html" in resp.headers.get("Content-Type", "").lower():
            raise ModelError(f"{url}: the server sent a web page, not the archive (an error or sign-in page?); "
                             f"{hint}")
        length = resp.headers.get("Content-Length", "")
        body = int(length) if length.isdigit() else None
        if expected_size is not None and body is not None and have + body != expected_size:
            raise ModelError(f"{url}: the server offers {have + body} bytes, but the archive has {expected_size}; "
                             "check the address, or pass --no-size-check if it really has another size")
        total = have + body if body is not None else expected_size
        got = have
        try:
            with open(part, "r+b") as f, _bar(total, dest.name, progress, have) as bar:
                f.seek(have)
                f.truncate()
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    if expected_size is not None and got + len(chunk) > expected_size:
                        f.close()
                        part.unlink()
                        raise ModelError(f"{url}: the server sent more than the archive's {expected_size} bytes "
                                         "(removed); check the address, or pass --no-size-check if it really "
                                         "has another size")
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ModelError(f"{url}: download interrupted at {got} bytes ({reason}); run the same command "
                             "again to resume") from None
    if total is not None and got < total:
        raise ModelError(f"{url}: download interrupted at {got} of {total} bytes (the connection closed early); "
                         "run the same command again to resume")
    os.replace(part, dest)
    return dest


def _nothing_past(url: str, exc: urllib.error.HTTPError, part: Path, dest: Path, have: int,
                  expected_size: int | None) -> Path:
    """A server's 416 to a resume request: the partial file is whole only when the server's size (its
    Content-Range) or the expected one says so; a partial file that does not fit is removed."""
    m = re.match(r"bytes\s+\*/(\d+)", (exc.headers.get("Content-Range") if exc.headers else None) or "")
    size = int(m.group(1)) if m else expected_size
    if size is None:
        raise ModelError(f"{url}: the server will not resume the download at byte {have} and does not say its "
                         f"size; delete {part} to download it from the start")
    if size == have:
        os.replace(part, dest)
        return dest
    part.unlink()
    raise ModelError(f"{url}: the server's file has {size} bytes, not the {have} downloaded so far (removed); "
                     "run the same command again to start over")


def _need_space(folder: Path, needed: int, what: str) -> None:
    """Refuse early, with the numbers, rather than fail half-way through a large write."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < needed:
        raise ModelError(f"{folder}: {what} needs about {needed / 1e9:.1f} GB free there, but only "
                         f"{free / 1e9:.1f} GB is; free some space or choose another --cache-dir")


def _sha256_file(path: Path, progress: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, _bar(path.stat().st_size, f"sha256 {path.name}", progress) as bar:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> str:
    """Copy one archive member to a file whose name we chose; return its sha256."""
    if info.file_size > _MAX_MEMBER_BYTES:
        raise ModelError(f"{info.filename}: {info.file_size} bytes in the archive; too big to be a weight file")
    if info.file_size > _MAX_EXPANSION * info.compress_size + (1 << 20):  # 1 MB that would write 1 GiB
        raise ModelError(f"{info.filename}: expands {info.file_size / max(info.compress_size, 1):.0f}-fold; weight "
                         f"files compress little (at most {_MAX_EXPANSION}-fold taken): not a weight file")
    h = hashlib.sha256()
    written = 0
    try:
        with zf.open(info) as src, open(dest, "wb") as out:
            while True:
                chunk = src.read(1 << 22)
                if not chunk:
                    break
                written += len(chunk)
                if written > info.file_size:
                    raise ModelError(f"{info.filename}: expands beyond its declared size; corrupt archive")
                h.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise ModelError(f"{info.filename}: cannot extract it ({exc.strerror or exc})") from None
    return h.hexdigest()


def _card_for(entry: RegistryEntry, cfg: Any, hashes: dict[str, str], sources: dict[str, dict[str, str]],
              archive: str) -> dict[str, Any]:
    return {
        "name": entry.name,
        "description": entry.description,
        "licence": entry.licence,
        "licence_note": entry.licence_note,
        "source": f"{OFFICIAL_REPO} release 'checkpoints' (checkpoints.zip)",
        "archive": archive,
        "kind": "official",
        "sample_rate": int(cfg.sample_rate),
        "hop_length": int(cfg.hop_length),
        "frame_rate": cfg.sample_rate / cfg.hop_length,
        "n_codebooks": int(cfg.n_codebooks),
        "codebook_size": int(cfg.codebook_size),
        "bitrates_kbps": list(entry.bitrates_kbps),
        "trained_bitrates_kbps": None if entry.trained_bitrates_kbps is None else list(entry.trained_bitrates_kbps),
        "weights": hashes,
        "converted_from": sources,
        "converted_by": f"flowdec-cli {__version__}",
        "citation": OFFICIAL_CITATION,
    }


def _official_names_present(mdir: Path) -> list[str]:
    return [e.name for e in OFFICIAL_MODELS if is_model_folder(mdir / e.name)]


def fetch_official(source: str | os.PathLike[str] | None = None, expected_size: int | None = OFFICIAL_ZIP_SIZE,
                   progress: bool = True, cache_dir: CacheDir = None,
                   expected_sha256: str | None = OFFICIAL_ZIP_SHA256, keep_download: bool = False,
                   force: bool = False) -> dict[str, Path]:
    """Download (or take) the release's ``checkpoints.zip`` and convert its four weight files into the cache.

    ``source``: a URL (default: the release) or a local path. ``expected_size``: the archive's size in bytes,
    checked unless None; ``expected_sha256`` likewise (the recorded :data:`OFFICIAL_ZIP_SHA256` by default).
    Whatever these checks, each converted postfilter must have the released architecture (key names, shapes
    and dtypes of :data:`RELEASED_POSTFILTER_KEYS`), else :class:`ModelError`; models that appear in the
    cache meanwhile are never replaced without ``force`` (``OutputExistsError``). A downloaded archive is removed once
    converted unless ``keep_download``; a local one is read in place. With ``force=False`` nothing happens
    when all four models are in the cache already. Returns {model name: folder}.
    """
    root = cache_root(cache_dir)
    mdir = models_dir(root)
    present = set(_official_names_present(mdir))
    if not force and len(present) == len(OFFICIAL_MODELS):
        return {e.name: mdir / e.name for e in OFFICIAL_MODELS}

    src = str(source) if source is not None else OFFICIAL_ZIP_URL
    downloaded = False
    local = _file_url_path(src)
    if local is None and _is_url(src):
        try:
            name = Path(urllib.request.url2pathname(urllib.parse.urlsplit(src).path)).name
        except ValueError as exc:  # e.g. an unclosed [ of an IPv6 host
            raise ModelError(f"{src}: not a valid address ({exc})") from None
        if name in ("", ".", ".."):  # an address that ends in a folder names no file to save to
            name = "checkpoints.zip"
        dest = root / "downloads" / name
        if expected_size is not None and not dest.is_file():
            part = partial_download(dest)
            have = part.stat().st_size if part.is_file() else 0
            _need_space(dest.parent, max(expected_size - have, 0) + expected_size, "the download and conversion")
        zip_path = download(src, dest, expected_size, progress)
        downloaded = True
    else:
        zip_path = (local or Path(src)).expanduser()
        if zip_path.is_dir():
            raise ModelError(f"{zip_path}: is a folder; give the release archive (checkpoints.zip)")
        if not zip_path.is_file():
            raise ModelError(f"{zip_path}: no such file")
    size = zip_path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise ModelError(f"{zip_path}: {size} bytes, but the FlowDec release checkpoints.zip has {expected_size}; "
                         "the file is incomplete or another archive (--no-size-check skips this check)")
    if expected_sha256 is not None:
        digest = _sha256_file(zip_path, progress)
        if digest.lower() != expected_sha256.lower():
            if downloaded:  # do not reuse a bad download next time
                zip_path.unlink(missing_ok=True)
            raise ModelError(f"{zip_path}: sha256 {digest}, expected {expected_sha256}; corrupt or another "
                             "archive (--no-hash-check skips this check)")

    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        if downloaded:  # do not reuse a bad download next time
            zip_path.unlink(missing_ok=True)
        raise ModelError(f"{zip_path}: not a readable zip archive ({exc})") from None
    mdir.mkdir(parents=True, exist_ok=True)
    builders: dict[str, ModelFolderBuilder] = {}
    try:
        with zf:
            infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
            missing = [m for m in OFFICIAL_MEMBERS if m not in infos]
            if missing:
                raise ModelError(f"{zip_path}: not the FlowDec release archive; missing {', '.join(missing)}")
            _need_space(mdir, sum(infos[m].file_size for m in OFFICIAL_MEMBERS), "converting the models")
            builders = _convert_official(zf, infos, mdir, src if downloaded else str(zip_path), progress)
        result = {}
        for e in OFFICIAL_MODELS:  # without force, replace only what was there when we started
            result[e.name] = builders[e.name].publish(overwrite=force or e.name in present)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        if downloaded:
            zip_path.unlink(missing_ok=True)
        raise ModelError(f"{zip_path}: corrupt archive ({exc}); download it again") from None
    finally:
        for b in builders.values():
            b.discard()
    if downloaded and not keep_download:
        with contextlib.suppress(OSError):
            zip_path.unlink()
    return result


def _convert_official(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], mdir: Path, archive: str,
                      progress: bool) -> dict[str, ModelFolderBuilder]:
    """Each official model staged beside its place in ``mdir``, ready to publish."""
    from tqdm import tqdm

    from ..checkpoints import CheckpointError, weights_hash

    tmp = temporary_folder(mdir, "extract")
    codecs: dict[str, tuple[Any, str, str]] = {}  # member -> (config, hash, sha256)
    builders: dict[str, ModelFolderBuilder] = {}
    steps = [e for e in OFFICIAL_MODELS if not e.has_postfilter] + [e for e in OFFICIAL_MODELS if e.has_postfilter]
    try:
        with tqdm(total=len(steps), desc="convert", unit="model", disable=True if not progress else None,
                  leave=False) as bar:
            for e in steps:
                build = builders[e.name] = ModelFolderBuilder(mdir / e.name, "fetch")
                member = e.members["ndac"]
                sources = {}
                if member not in codecs:
                    raw = tmp / "ndac.pth"
                    sha = _extract_member(zf, infos[member], raw)
                    try:
                        ndac = ndac_from_official(raw)
                    except (CheckpointError, ModelError) as exc:
                        raise ModelError(f"{member} in the archive: {str(exc).replace(str(raw) + ': ', '')}") from None
                    finally:
                        raw.unlink(missing_ok=True)
                    cfg = ndac.config
                    if (cfg.hop_length, cfg.n_codebooks, cfg.sample_rate) != (e.hop_length, e.n_codebooks,
                                                                              e.sample_rate):
                        raise ModelError(f"{member} in the archive: hop {cfg.hop_length}, {cfg.n_codebooks} "
                                         f"codebooks, {cfg.sample_rate} Hz; {e.name} should have hop "
                                         f"{e.hop_length}, {e.n_codebooks} codebooks, {e.sample_rate} Hz")
                    build.add_ndac(ndac)
                    codecs[member] = (cfg, weights_hash(ndac.state_dict()), sha)
                    del ndac
                else:
                    first = next(b for n, b in builders.items()
                                 if n != e.name and OFFICIAL_BY_NAME[n].members["ndac"] == member)
                    build.link_component(first.path / "ndac", "ndac")
                cfg, ndac_hash, sha = codecs[member]
                hashes = {"ndac": ndac_hash}
                sources["ndac"] = {"member": member, "sha256": sha}
                if e.has_postfilter:
                    pmember = e.members["postfilter"]
                    raw = tmp / "postfilter.ckpt"
                    psha = _extract_member(zf, infos[pmember], raw)
                    try:
                        pf = _postfilter_from_ckpt(raw, pmember)
                    finally:
                        raw.unlink(missing_ok=True)
                    build.add_postfilter(pf)
                    hashes["postfilter"] = weights_hash(pf.state_dict())
                    sources["postfilter"] = {"member": pmember, "sha256": psha, "weights": "EMA"}
                    del pf
                card = _card_for(e, cfg, hashes, sources, archive)
                build.write_card(card, model_card_markdown(card))
                bar.update(1)
    except BaseException:
        for b in builders.values():
            b.discard()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return builders


def _released_postfilter_keys() -> dict[str, tuple[list[int], str]]:
    data = json.loads(RELEASED_POSTFILTER_KEYS.read_text())
    return {k: (list(v[0]), str(v[1])) for k, v in data["keys"].items()}


def check_released_architecture(state: dict[str, Any], what: str) -> None:
    """Refuse weights whose key names, shapes or dtypes differ from the released postfilter's."""
    want = _released_postfilter_keys()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    wrong = [k for k in want if k in state and (list(state[k].shape) != want[k][0]
                                                 or str(state[k].dtype).replace("torch.", "") != want[k][1])]
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            example = (f"e.g. {k} is {list(state[k].shape)} {str(state[k].dtype).replace('torch.', '')}, "
                       f"the release has {want[k][0]} {want[k][1]}")
        else:
            example = f"e.g. {'missing ' + missing[0] if missing else 'unexpected ' + extra[0]}"
        raise ModelError(f"{what}: not the released FlowDec postfilter architecture ({len(wrong)} of {len(want)} "
                         f"tensors have other shapes, {len(missing)} missing, {len(extra)} unexpected; {example}); "
                         "refusing to install it")


def _postfilter_from_ckpt(path: Path, member: str) -> Any:
    from ..checkpoints import CheckpointError, load_lightning_state_dict
    from ..postfilter import Postfilter

    try:
        check_released_architecture(load_lightning_state_dict(path, ema=True), f"{member} in the archive")
        return Postfilter.from_lightning_checkpoint(path, ema=True)
    except (CheckpointError, ValueError) as exc:
        raise ModelError(f"{member} in the archive: {str(exc).replace(str(path) + ': ', '')}") from None
