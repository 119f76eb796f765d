"""The model registry: fetch-official from a small archive of the release's layout, hub references offline,
listing, export. Nothing here touches the network (HF_HUB_OFFLINE=1; downloads go to a local server)."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import threading
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner

from flowdec_cli.models import ModelError, cards, catalogue, load_model, load_ndac, load_postfilter, release, resolve
from flowdec_cli.models.cli import models_group

from .conftest import REFERENCE

_RELEASED_KEYS = release._released_postfilter_keys

def _fixture_files(ref: Path) -> dict[str, Path]:
    ckpt = ref / "flowdec_small" / "step=800000.ckpt"
    return {
        catalogue.MEMBER_NDAC_75: ref / "ndac75_small" / "weights.pth",
        catalogue.MEMBER_NDAC_25: ref / "ndac25_small" / "weights.pth",
        catalogue.MEMBER_FLOWDEC_75M: ckpt,
        catalogue.MEMBER_FLOWDEC_25S: ckpt,
    }


def _make_zip(path: Path, ref: Path, skip: tuple[str, ...] = (), extra: dict[str, bytes] | None = None) -> Path:
    """An archive with the release's member paths (stored, so that it builds fast)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("checkpoints/", b"")
        zf.writestr("checkpoints/README.txt", b"not a weight file")
        for member, src in _fixture_files(ref).items():
            if member not in skip:
                zf.write(src, member)
        for name, data in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as given, "../" and all
    return path


def _fixture_keys(ref: Path) -> dict:
    """The small fixture's architecture (the release's keys at nf 8) stands in for the released one here."""
    from flowdec_cli.checkpoints import load_lightning_state_dict

    state = load_lightning_state_dict(ref / "flowdec_small" / "step=800000.ckpt")
    return {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}


@pytest.fixture(autouse=True)
def _fixture_architecture(monkeypatch):
    if REFERENCE is not None:
        monkeypatch.setattr(release, "_released_postfilter_keys", lambda: _fixture_keys(REFERENCE))


@pytest.fixture(scope="module")
def release_zip(reference_dir, tmp_path_factory) -> Path:
    return _make_zip(tmp_path_factory.mktemp("release") / "checkpoints.zip", reference_dir)


@pytest.fixture(scope="module")
def converted(release_zip, tmp_path_factory, reference_dir) -> Path:
    """A cache holding the four models, converted once through the CLI."""
    home = tmp_path_factory.mktemp("fetched")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWDEC_HOME", str(tmp_path_factory.getbasetemp() / "unused_home"))
        mp.setattr(release, "_released_postfilter_keys", lambda: _fixture_keys(reference_dir))
        res = CliRunner().invoke(models_group, ["fetch-official", "--from", str(release_zip), "--no-size-check",
                                                "--no-hash-check",
                                                "--cache-dir", str(home), "-q"])
    assert res.exit_code == 0, res.output
    return home


@pytest.fixture
def home(converted, monkeypatch) -> Path:
    monkeypatch.setenv("FLOWDEC_HOME", str(converted))
    return converted


def _audio(seconds: float = 0.4, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(1, 1, int(48000 * seconds), generator=g)


# --------------------------------------------------------------------------------------------------
# fetch-official


def test_fetch_official_converts_the_four_models(home, reference_dir):
    from flowdec_cli.models import ndac_state_hash

    files = _fixture_files(reference_dir)
    mdir = home / "models"
    assert sorted(p.name for p in mdir.iterdir() if not p.name.startswith(".")) == \
        ["flowdec-25s", "flowdec-75m", "ndac-25", "ndac-75"]
    assert not [p for p in mdir.iterdir() if p.name.startswith(".")], "temporary build folders left behind"
    x = _audio(0.1)
    for name, member in [("ndac-75", catalogue.MEMBER_NDAC_75), ("ndac-25", catalogue.MEMBER_NDAC_25)]:
        card = json.loads((mdir / name / "flowdec.json").read_text())
        assert card["name"] == name and card["licence"] == "CC-BY-NC-4.0" and "non-commercial" in card["licence_note"]
        assert card["converted_from"]["ndac"]["member"] == member
        assert not (mdir / name / "postfilter").exists()
        assert "license: cc-by-nc-4.0" in (mdir / name / "README.md").read_text()
        ours, orig = load_ndac(name), load_ndac(files[member])
        assert torch.equal(ours.encode(x), orig.encode(x))  # same codes as the released file
        assert card["weights"]["ndac"] == ndac_state_hash(ours) == ndac_state_hash(orig)
    released_pf = load_postfilter(files[catalogue.MEMBER_FLOWDEC_75M]).state_dict()  # both are the same fixture
    for name, member in [("flowdec-75m", catalogue.MEMBER_FLOWDEC_75M), ("flowdec-25s", catalogue.MEMBER_FLOWDEC_25S)]:
        card = json.loads((mdir / name / "flowdec.json").read_text())
        assert card["converted_from"]["postfilter"]["member"] == member
        assert card["converted_from"]["postfilter"]["weights"] == "EMA"
        model = load_model(name)
        assert model.name == name and model.licence == "CC-BY-NC-4.0" and model.postfilter is not None
        ours = model.postfilter.state_dict()
        assert ours.keys() == released_pf.keys() and all(torch.equal(ours[k], released_pf[k]) for k in ours)
        assert card["weights"]["ndac"] == model.ndac_hash
    # the codec pairs share their NDAC with the codec-only models
    a = (mdir / "flowdec-75m" / "ndac" / "model.safetensors").read_bytes()
    assert a == (mdir / "ndac-75" / "ndac" / "model.safetensors").read_bytes()
    assert json.loads((mdir / "flowdec-25s" / "flowdec.json").read_text())["trained_bitrates_kbps"] == [4.0]


def test_fetch_official_skips_when_present_unless_forced(home, release_zip):
    before = (home / "models" / "ndac-75" / "flowdec.json").stat().st_mtime_ns
    release.fetch_official(release_zip, expected_size=None, expected_sha256=None, progress=False)
    assert (home / "models" / "ndac-75" / "flowdec.json").stat().st_mtime_ns == before


def test_size_check_failure(release_zip, tmp_path):
    with pytest.raises(ModelError, match=r"bytes, but the FlowDec release checkpoints.zip has 1205002207"):
        release.fetch_official(release_zip, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "models").exists()
    res = CliRunner().invoke(models_group, ["fetch-official", "--from", str(release_zip), "--cache-dir",
                                            str(tmp_path), "-q"])
    assert res.exit_code == 1 and res.output.startswith("flowdec: error: ") and "Traceback" not in res.output
    assert "--no-size-check" in res.output


def test_missing_members_are_named(reference_dir, tmp_path):
    z = _make_zip(tmp_path / "partial.zip", reference_dir,
                  skip=(catalogue.MEMBER_NDAC_25, catalogue.MEMBER_FLOWDEC_25S))
    with pytest.raises(ModelError) as err:
        release.fetch_official(z, expected_size=None, expected_sha256=None, cache_dir=tmp_path / "c", progress=False)
    msg = str(err.value)
    assert catalogue.MEMBER_NDAC_25 in msg and catalogue.MEMBER_FLOWDEC_25S in msg
    assert catalogue.MEMBER_NDAC_75 not in msg
    assert not [p for p in (tmp_path / "c" / "models").iterdir()]  # nothing half-built left


def test_a_member_that_expands_like_a_zip_bomb_is_refused_before_it_is_written(tmp_path):
    """A 1 MB archive whose weights member inflated to 1 GiB was written out in full (only a 4 GiB cap)."""
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(catalogue.MEMBER_NDAC_75, bytes(64 << 20))  # 64 MiB of zeros: about 64 KB deflated
        for member in catalogue.OFFICIAL_MEMBERS[1:]:
            zf.writestr(member, b"x")
    with pytest.raises(ModelError, match=f"{re.escape(catalogue.MEMBER_NDAC_75)}: expands [0-9]+-fold"):
        release.fetch_official(z, expected_size=None, expected_sha256=None, cache_dir=tmp_path / "c", progress=False)
    assert not [p for p in (tmp_path / "c" / "models").rglob("*") if p.is_file()]


def test_not_a_zip(tmp_path):
    bad = tmp_path / "checkpoints.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ModelError, match="not a readable zip"):
        release.fetch_official(bad, expected_size=None, expected_sha256=None, cache_dir=tmp_path / "c", progress=False)


def test_corrupt_member_is_a_clear_error(release_zip, tmp_path):
    data = bytearray(release_zip.read_bytes())
    with zipfile.ZipFile(release_zip) as zf:
        info = zf.getinfo(catalogue.MEMBER_NDAC_75)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    bad = tmp_path / "checkpoints.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"corrupt archive .*download it again"):
        release.fetch_official(bad, expected_size=None, expected_sha256=None, cache_dir=tmp_path / "c", progress=False)
    assert not list((tmp_path / "c" / "models").iterdir())


def test_path_traversal_members_are_never_extracted(reference_dir, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    evil = {"../../evil.txt": b"x", "checkpoints/../../../evil2.txt": b"x", "/tmp/flowdec-evil-abs.txt": b"x",
            # a look-alike of a wanted member outside checkpoints/ must not stand in for it
            "../" + catalogue.MEMBER_NDAC_25: b"x"}
    z = _make_zip(tmp_path / "evil.zip", reference_dir, skip=(catalogue.MEMBER_NDAC_25,), extra=evil)
    with pytest.raises(ModelError, match="missing " + catalogue.MEMBER_NDAC_25):
        release.fetch_official(z, expected_size=None, expected_sha256=None, cache_dir=work / "cache", progress=False)
    z2 = _make_zip(tmp_path / "evil2.zip", reference_dir, extra=evil)
    cache = work / "cache2"
    done = release.fetch_official(z2, expected_size=None, expected_sha256=None, cache_dir=cache, progress=False)
    assert set(done) == {"flowdec-75m", "flowdec-25s", "ndac-75", "ndac-25"}
    written = {p.name for p in tmp_path.rglob("*")}
    assert not written & {"evil.txt", "evil2.txt", "flowdec-evil-abs.txt"}
    assert not Path("/tmp/flowdec-evil-abs.txt").exists()
    assert not (cache / "checkpoints").exists() and not (cache / "models" / "checkpoints").exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``data`` with HTTP ranges; ``mode`` makes it misbehave: "html" (an error page with 200),
    "short" (closes half-way through the body it announced), "416" (refuses every range, giving its size),
    "416-sizeless" (the same without the size)."""

    data = b""
    ranges: ClassVar[list[str]] = []
    mode = ""

    def do_GET(self) -> None:
        start = 0
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        if self.mode == "html":
            page = b"<html><body>rate limited</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if rng and self.mode.startswith("416"):
            self.send_response(416)
            if self.mode == "416":
                self.send_header("Content-Range", f"bytes */{len(self.data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        else:
            self.send_response(200)
        body = self.data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if self.mode == "short" else body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_download_resumes_a_partial_file(local_server, tmp_path):
    data = os.urandom(300_000)
    _serve(data)
    url = f"http://127.0.0.1:{local_server.server_port}/checkpoints.zip"
    dest = tmp_path / "checkpoints.zip"
    (tmp_path / "checkpoints.zip.part").write_bytes(data[:123_456])
    release.download(url, dest, expected_size=len(data), progress=False)
    assert dest.read_bytes() == data and not (tmp_path / "checkpoints.zip.part").exists()
    assert _RangeHandler.ranges == ["bytes=123456-"]
    # a finished download is not fetched again; a wrong size is an error
    release.download(url, dest, expected_size=len(data), progress=False)
    assert len(_RangeHandler.ranges) == 1
    with pytest.raises(ModelError, match="offers 300000 bytes, but the archive has 5"):
        release.download(url, tmp_path / "other.zip", expected_size=5, progress=False)


def _serve(data: bytes, mode: str = "") -> None:
    _RangeHandler.data, _RangeHandler.ranges, _RangeHandler.mode = data, [], mode


def test_download_writes_no_more_than_the_archive_holds(local_server, tmp_path):
    """A server sending 5x the file had it all written before the size was checked; a web page sent with
    200 became the first bytes of the archive, resumed into a file that failed its hash."""
    data = os.urandom(200_000)
    url = f"http://127.0.0.1:{local_server.server_port}/checkpoints.zip"
    dest, part = tmp_path / "checkpoints.zip", tmp_path / "checkpoints.zip.part"
    _serve(data * 5)
    with pytest.raises(ModelError, match=r"offers 1000000 bytes, but the archive has 200000; check the address"):
        release.download(url, dest, expected_size=len(data), progress=False)
    assert not part.exists() and not dest.exists()
    part.write_bytes(data[:1000])
    _serve(data, "html")
    with pytest.raises(ModelError, match=r"sent a web page, not the archive"):
        release.download(url, dest, expected_size=len(data), progress=False)
    assert part.read_bytes() == data[:1000]
    part.unlink()
    with pytest.raises(ModelError, match=r"sent a web page"):
        release.download(url, dest, expected_size=None, progress=False)
    assert not part.exists()


def test_download_cut_short_is_kept_to_resume_even_without_a_size(local_server, tmp_path):
    """Without an expected size (--no-size-check) a body that ended before its Content-Length was taken
    for the whole archive."""
    data = os.urandom(200_000)
    url = f"http://127.0.0.1:{local_server.server_port}/checkpoints.zip"
    dest, part = tmp_path / "checkpoints.zip", tmp_path / "checkpoints.zip.part"
    _serve(data, "short")
    with pytest.raises(ModelError, match=r"interrupted at 100000 of 200000 bytes .*run the same command again"):
        release.download(url, dest, expected_size=None, progress=False)
    assert part.read_bytes() == data[:100_000] and not dest.exists()
    _serve(data)
    release.download(url, dest, expected_size=None, progress=False)
    assert dest.read_bytes() == data and _RangeHandler.ranges == ["bytes=100000-"]


def test_a_refused_range_does_not_publish_a_partial_file(local_server, tmp_path):
    """A 416 answer to a resume request was taken for "nothing left": a 2 MB partial of a 6 MB file was
    renamed to the archive."""
    data = os.urandom(50_000)
    url = f"http://127.0.0.1:{local_server.server_port}/checkpoints.zip"
    dest, part = tmp_path / "checkpoints.zip", tmp_path / "checkpoints.zip.part"
    part.write_bytes(data[:20_000])
    _serve(data, "416")
    with pytest.raises(ModelError, match=r"server's file has 50000 bytes, not the 20000 downloaded so far"):
        release.download(url, dest, expected_size=None, progress=False)
    assert not part.exists() and not dest.exists()
    part.write_bytes(data)  # a partial file that is in fact whole
    assert release.download(url, dest, expected_size=None, progress=False).read_bytes() == data
    dest.unlink()
    part.write_bytes(data[:20_000])
    _RangeHandler.mode = "416-sizeless"  # a refusal that does not say the size: nothing is published
    with pytest.raises(ModelError, match=r"will not resume the download at byte 20000 and does not say its size"):
        release.download(url, dest, expected_size=None, progress=False)
    assert part.read_bytes() == data[:20_000] and not dest.exists()


def test_one_download_at_a_time_per_file(local_server, tmp_path):
    """Two runs appended to one partial file (10 MB for a 6 MB archive) and both lost everything."""
    from filelock import FileLock

    _serve(os.urandom(1000))
    url = f"http://127.0.0.1:{local_server.server_port}/checkpoints.zip"
    dest = tmp_path / "checkpoints.zip"
    with FileLock(str(tmp_path / "checkpoints.zip.lock")), \
            pytest.raises(ModelError, match=r"another flowdec is downloading it now"):
        release.download(url, dest, expected_size=1000, progress=False)
    assert not dest.exists() and _RangeHandler.ranges == []
    release.download(url, dest, expected_size=1000, progress=False)
    assert dest.stat().st_size == 1000


@pytest.mark.parametrize("address", ["http://127.0.0.1:abc/x.zip", "http://[::1/x.zip"])
def test_a_malformed_address_is_one_clear_error(tmp_path, address):
    with pytest.raises(ModelError, match=r"(cannot download|not a valid address)"):
        release.fetch_official(address, expected_size=None, expected_sha256=None, cache_dir=tmp_path,
                               progress=False)


@pytest.mark.parametrize("tail", ["checkpoints.zip", ".."])
def test_fetch_official_from_url(local_server, release_zip, tmp_path, tail):
    _serve(release_zip.read_bytes())
    url = f"http://127.0.0.1:{local_server.server_port}/dl/{tail}"
    part = tmp_path / "downloads" / "checkpoints.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(_RangeHandler.data[:1000])
    done = release.fetch_official(url, expected_size=len(_RangeHandler.data),
                                   expected_sha256=None, cache_dir=tmp_path, progress=False)
    assert _RangeHandler.ranges == ["bytes=1000-"]
    assert (done["ndac-75"] / "flowdec.json").is_file()
    assert json.loads((done["ndac-75"] / "flowdec.json").read_text())["archive"] == url
    assert not (tmp_path / "downloads" / "checkpoints.zip").exists()  # removed once converted


def test_unreachable_url_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"cannot download .*--from PATH"):
        release.fetch_official("http://127.0.0.1:9/checkpoints.zip", cache_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------------------------------
# names, listing, default


def test_unknown_and_unfetched_names(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWDEC_HOME", str(tmp_path))
    monkeypatch.setattr(catalogue, "embedded_root", lambda: tmp_path / "no-embedded-models")
    with pytest.raises(ModelError, match=r"unknown model 'nope'; known: flowdec-75m, flowdec-25s, ndac-75, "
                                         r"ndac-25; or give a path"):
        load_ndac("nope")
    with pytest.raises(ModelError, match="flowdec models fetch-official"):
        load_model("flowdec-75m")
    with pytest.raises(ModelError, match="no such file or folder"):
        load_ndac("./missing/weights.pth")


def test_release_spellings_resolve(home):
    assert resolve.resolve("flowdec_75m") == home / "models" / "flowdec-75m"
    assert resolve.resolve("NDAC-25") == home / "models" / "ndac-25"


def test_models_list(home):
    res = CliRunner().invoke(models_group, ["list"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NAME", "RATE", "KBIT/S", "TRAINED", "AT", "NFE", "SIZE", "LICENCE", "LOCAL"]
    row = next(line for line in lines if line.startswith("flowdec-75m"))
    assert "75 Hz" in row and "0.75-7.5" in row and "3, 4.5, 6, 7.5" in row and "CC-BY-NC-4.0" in row
    assert row.endswith("cached")
    assert "0.25-4" in next(line for line in lines if line.startswith("flowdec-25s"))
    bare = CliRunner().invoke(models_group, [])
    assert bare.exit_code == 0 and bare.stdout == res.stdout
    data = json.loads(CliRunner().invoke(models_group, ["list", "--json"]).stdout)
    by = {m["name"]: m for m in data}
    assert by["ndac-25"]["available"] == "cached" and by["ndac-25"]["size_bytes"] > 0
    assert by["ndac-25"]["n_codebooks"] == 16 and by["ndac-25"]["frame_rate"] == 25.0
    assert by["flowdec-75m"]["trained_bitrates_kbps"] == [3.0, 4.5, 6.0, 7.5]
    # postfilter passes used without --nfe: the paper's 6 (the built-in model's too), 0 for codecs alone
    assert by["flowdec-75m"]["default_nfe"] == 6 and by["ndac-25"]["default_nfe"] == 0
    assert by["flowdec-small"]["default_nfe"] == 6


def test_models_list_when_nothing_is_local(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWDEC_HOME", str(tmp_path))
    monkeypatch.setattr(catalogue, "embedded_root", lambda: tmp_path / "no-embedded-models")
    res = CliRunner().invoke(models_group, ["list"])
    assert res.exit_code == 0
    assert all(line.endswith("not local") for line in res.stdout.splitlines()[1:])
    assert "fetch-official" in res.stderr


def test_embedded_models_and_default(home, tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "embedded_root", lambda: tmp_path / "no-embedded-models")
    with pytest.raises(ModelError, match="no default model is bundled"):
        catalogue.default_model_name()
    assets = tmp_path / "assets" / "models"
    shutil.copytree(home / "models" / "ndac-75", assets / "ours-75")
    card = json.loads((assets / "ours-75" / "flowdec.json").read_text())
    (assets / "ours-75" / "flowdec.json").write_text(json.dumps({"name": "ours-75", "licence": "MIT",
                                                                 "description": "ours"}))
    monkeypatch.setattr(catalogue, "embedded_root", lambda: assets)
    (assets / "DEFAULT").write_text("missing\n")
    with pytest.raises(ModelError, match="'missing' is missing from the package"):
        catalogue.default_model_name()
    (assets / "DEFAULT").write_text("ours-75\n")
    assert catalogue.default_model_name() == "ours-75"
    assert resolve.resolve("ours-75") == assets / "ours-75"
    assert load_model("ours-75").ndac_hash == card["weights"]["ndac"]
    by = {m["name"]: m for m in catalogue.list_models()}
    assert by["ours-75"]["available"] == "embedded" and by["ours-75"]["default"]
    assert by["ours-75"]["frame_rate"] == 75.0 and by["ours-75"]["bitrates_kbps"][-1] == 7.5
    assert by["ours-75"]["licence"] == "MIT"


def test_a_codec_config_far_larger_than_its_weights_is_refused_before_building(tmp_path, tiny_codec_dir):
    """A 268-byte config (decoder_dim 6144) beside small weights built a 3 GB codec before the weights were
    checked against it; the config's size is now compared with the file's first."""
    folder = tmp_path / "forged"
    shutil.copytree(tiny_codec_dir, folder)
    cfg_path = next(folder.rglob("config.json"))
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(dict(cfg, decoder_dim=6144)))
    with pytest.raises(ModelError, match=r"its config describes about .* weights, but its weights file holds"):
        load_ndac(folder)


@pytest.mark.parametrize("value,why", [(float("nan"), "holds NaN or infinite values"),
                                       (float("inf"), "holds NaN or infinite values"),
                                       (None, "is int64, not floating point")])
def test_weights_that_are_not_finite_floats_are_refused_naming_the_tensor(tmp_path, tiny_codec_dir, value, why):
    """A codec with one NaN weight decoded every file into full-scale noise at NFE 0 (and at NFE 6 failed
    naming neither file nor cause); integer weights were cast to float without a word."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "forged"
    shutil.copytree(tiny_codec_dir, folder)
    weights = next(folder.rglob("model.safetensors"))
    state = load_file(str(weights))
    name = sorted(state)[0]
    if value is None:
        state[name] = state[name].round().long()
    else:
        state[name] = state[name].clone()
        state[name].view(-1)[0] = value
    save_file(state, str(weights))
    with pytest.raises(ModelError, match=f"{re.escape(str(weights))}: weight {re.escape(name)} {why}"):
        load_ndac(folder)


def test_a_broken_folder_in_the_cache_never_hides_the_other_models(tmp_path, monkeypatch):
    """A hand-placed model whose card does not parse is listed as broken, naming its card; the rest stay."""
    from click.testing import CliRunner

    from flowdec_cli.cli import main

    monkeypatch.setenv("FLOWDEC_HOME", str(tmp_path))
    bad = tmp_path / "models" / "mywrong"
    (bad / "ndac").mkdir(parents=True)
    (bad / "flowdec.json").write_text(json.dumps({"name": "mywrong", "n_codebooks": "ten\x1b]0;x\x07"}))
    by = {m["name"]: m for m in catalogue.list_models()}
    assert "flowdec.json" in by["mywrong"]["problem"] and "ten" in by["mywrong"]["problem"]
    assert by["flowdec-small"]["problem"] == "" and by["flowdec-small"]["available"] == "embedded"
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0 and "flowdec-small" in r.output
    assert "mywrong is broken:" in r.output and "\x1b" not in r.output
# --------------------------------------------------------------------------------------------------
# export and the hub


def _hub_snapshot(cache: Path, repo: str, folder: Path, commit: str = "a" * 40) -> Path:
    """Put ``folder`` into a Hugging Face hub cache as the snapshot of ``repo`` at ``main``."""
    store = cache / ("models--" + repo.replace("/", "--"))
    snap = store / "snapshots" / commit
    shutil.copytree(folder, snap)
    (store / "refs").mkdir(parents=True, exist_ok=True)
    (store / "refs" / "main").write_text(commit)
    return snap


def test_export_round_trip_and_hub_offline(home, tmp_path, monkeypatch):
    dest = tmp_path / "export"
    cards.export_for_hub("flowdec-75m", dest, repo_id="owner/flowdec-test")
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "flowdec.json", "ndac", "postfilter"]
    card = json.loads((dest / "flowdec.json").read_text())
    assert card["name"] == "hf://owner/flowdec-test" and card["exported_from"] == "flowdec-75m"
    assert card["licence"] == "CC-BY-NC-4.0"
    readme = (dest / "README.md").read_text()
    assert "flowdec roundtrip in.wav out.wav --model hf://owner/flowdec-test" in readme
    assert "license: cc-by-nc-4.0" in readme and "CC BY-NC 4.0" in readme
    original = load_model("flowdec-75m", with_postfilter=False)
    exported = load_model(dest, with_postfilter=False)
    assert exported.ndac_hash == original.ndac_hash == card["weights"]["ndac"]
    assert load_postfilter(dest) is not None

    # a non-empty folder is refused; --force replaces our files and keeps the rest (a git clone's .git)
    (dest / ".git").mkdir()
    res = CliRunner().invoke(models_group, ["export", "ndac-25", str(dest)])
    assert res.exit_code == 1 and "not empty" in res.output and "-f/--force" in res.output
    res = CliRunner().invoke(models_group, ["export", "ndac-25", str(dest), "-f"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in dest.iterdir()) == [".git", "README.md", "flowdec.json", "ndac"]
    assert load_model(dest, with_postfilter=False).ndac.n_codebooks == 16

    # the hub, offline: a cache populated here stands in for huggingface.co
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    cards.export_for_hub("flowdec-75m", tmp_path / "export75", repo_id="owner/flowdec-test")
    snap = _hub_snapshot(cache, "owner/flowdec-test", tmp_path / "export75")
    assert resolve.resolve("hf://owner/flowdec-test") == snap
    assert resolve.resolve("hf://owner/flowdec-test@" + "a" * 40) == snap
    model = load_model("hf://owner/flowdec-test")
    assert model.name == "hf://owner/flowdec-test" and model.postfilter is not None
    assert model.ndac_hash == original.ndac_hash
    x = _audio(0.1)
    assert torch.equal(model.ndac.encode(x), original.ndac.encode(x))


def test_hub_unknown_model_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as err:
        load_model("hf://owner/not-there")
    msg = str(err.value)
    assert msg.startswith("hf://owner/not-there: not in the local Hugging Face cache") and "HF_HUB_OFFLINE" in msg
    assert "\n" not in msg
    with pytest.raises(ModelError, match="not a hub reference"):
        resolve.resolve("hf://just-one-part")


def test_hub_repo_without_a_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "README.md").write_text("hello")
    _hub_snapshot(tmp_path / "hub", "owner/junk", junk)
    with pytest.raises(ModelError, match="holds no flowdec model"):
        resolve.resolve("hf://owner/junk")


# --------------------------------------------------------------------------------------------------
# Checks that hold whatever the size check says (issue 12)


def test_a_small_random_postfilter_is_not_installed_as_flowdec_75m(release_zip, tmp_path, monkeypatch):
    """--no-size-check let a 3 MB nf-8 checkpoint become flowdec-75m; the released key shapes refuse it."""
    monkeypatch.setattr(release, "_released_postfilter_keys", _RELEASED_KEYS)  # the real listing
    res = CliRunner().invoke(models_group, ["fetch-official", "--from", str(release_zip), "--no-size-check",
                                            "--no-hash-check", "--cache-dir", str(tmp_path), "-q"])
    assert res.exit_code == 1, res.output
    line = res.output.strip()
    assert "\n" not in line and line.startswith("flowdec: error: ") and "Traceback" not in line
    assert "not the released FlowDec postfilter architecture" in line and "backbone." in line
    assert not [p for p in (tmp_path / "models").iterdir() if "flowdec-" in p.name]


def test_released_key_listing_is_the_reference(reference_dir):
    listing = _RELEASED_KEYS()
    ref = json.loads((reference_dir / "keys" / "official_keys_flowdec_75m.json").read_text())
    assert {k: (v["shape"], v["dtype"]) for k, v in ref.items()} == {k: (s, d) for k, (s, d) in listing.items()}


def test_archive_sha256_is_checked_by_default(release_zip, tmp_path):
    with pytest.raises(ModelError, match=r"sha256 [0-9a-f]{64}, expected 4f8c72ae.*--no-hash-check"):
        release.fetch_official(release_zip, expected_size=None, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "models" / "flowdec-75m").exists()
    res = CliRunner().invoke(models_group, ["fetch-official", "--from", str(release_zip), "--no-size-check",
                                            "--cache-dir", str(tmp_path), "-q"])
    assert res.exit_code == 1 and "--no-hash-check" in res.output and len(res.output.strip().splitlines()) == 1


def test_install_never_replaces_a_model_that_appeared_meanwhile(release_zip, tmp_path, monkeypatch):
    """A model folder that appears while converting (another fetch) stays; the run says so on one line."""
    real = release._convert_official

    def convert_then_race(*args, **kwargs):
        folders = real(*args, **kwargs)
        other = tmp_path / "models" / "ndac-75"
        other.mkdir(parents=True)
        (other / "marker").write_text("theirs")
        return folders

    monkeypatch.setattr(release, "_convert_official", convert_then_race)
    res = CliRunner().invoke(models_group, ["fetch-official", "--from", str(release_zip), "--no-size-check",
                                            "--no-hash-check", "--cache-dir", str(tmp_path), "-q"])
    assert res.exit_code == 1 and "appeared while this run was writing it" in res.output, res.output
    assert (tmp_path / "models" / "ndac-75" / "marker").read_text() == "theirs"


@pytest.mark.parametrize("nfe", [1_000_000, -3, 5, "6", True])
def test_a_card_cannot_ask_for_an_impossible_default_nfe(tmp_path, nfe):
    from flowdec_cli.models.folder import read_model_card

    (tmp_path / "flowdec.json").write_text(json.dumps({"name": "x", "default_nfe": nfe}))
    with pytest.raises(ModelError, match=r"flowdec\.json: default_nfe .* is not an even number of passes"):
        read_model_card(tmp_path)
    (tmp_path / "flowdec.json").write_text(json.dumps({"name": "x", "default_nfe": 0}))
    assert read_model_card(tmp_path)["default_nfe"] == 0
    assert read_model_card(str(tmp_path))["default_nfe"] == 0  # a str folder failed as a TypeError


@pytest.mark.parametrize("name", ["../../etc/passwd", "/tmp/evil", "sub/model"])
def test_a_card_whose_name_is_a_path_is_refused_before_it_codes_anything(tiny_codec_dir, tmp_path, name):
    """Every .fdc a model codes carries its card's name, and a file may name a model, not a path: such a
    card would write files that nothing decodes by name."""
    from flowdec_cli.models import load_model

    folder = tmp_path / "m"
    shutil.copytree(tiny_codec_dir, folder)
    card = json.loads((folder / "flowdec.json").read_text())
    (folder / "flowdec.json").write_text(json.dumps({**card, "name": name}))
    with pytest.raises(ModelError, match=r"m/flowdec\.json: model name .* looks like a path"):
        load_model(folder, with_postfilter=False)
    (folder / "flowdec.json").write_text(json.dumps({**card, "name": "plain"}))
    assert load_model(folder, with_postfilter=False).name == "plain"


def test_export_errors_name_the_users_files_not_our_staging_folder(tmp_path, monkeypatch):
    """A broken source names the source's file; an unwritable destination names the destination."""
    from flowdec_cli.models import folder
    from flowdec_cli.models.cards import export_for_hub

    src = tmp_path / "trunc"
    shutil.copytree(catalogue.embedded_folders()["flowdec-small"], src)
    weights = src / "ndac" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError) as err:
        export_for_hub(src, tmp_path / "out")
    assert str(err.value).startswith(f"{weights}: ") and ".export." not in str(err.value)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    def read_only(parent, label):  # what a folder without write permission does (tests may run as root)
        raise PermissionError(13, "Permission denied", str(parent / f".{label}.x"))

    monkeypatch.setattr(folder, "temporary_folder", read_only)
    with pytest.raises(ModelError, match=f"{tmp_path / 'ro'}: cannot write a model folder there .Permission"):
        export_for_hub(src, tmp_path / "ro")


@pytest.mark.parametrize("damage, why", [
    (lambda src: (src / "flowdec.json").write_text("{bad"), "flowdec.json: unreadable"),
    (lambda src: (src / "flowdec.json").write_text("[]"), "flowdec.json: not a model card"),
    (lambda src: (src / "entropy.safetensors").write_bytes(b"\0" * 1000), "entropy.safetensors: unreadable"),
    (lambda src: (src / "ndac" / "config.json").write_text('{"x": 1}'), "ndac: config type is None"),
    # values that crashed the export ("unexpected ValueError") or were published and failed on use
    (lambda src: _edit_json(src / "flowdec.json", bitrates_kbps="abc"),
     r"flowdec\.json: bitrates_kbps 'abc' is not a list of positive bitrates"),
    (lambda src: _edit_json(src / "flowdec.json", trained_bitrates_kbps=["a"]), "trained_bitrates_kbps"),
    (lambda src: _edit_json(src / "ndac" / "config.json", encoder_rates="abc"),
     r"ndac/config\.json: encoder_rates must be a list of whole numbers"),
    (lambda src: _edit_json(src / "flowdec.json", envelope="nosuch"), "envelope layout 'nosuch' is not known"),
    (lambda src: _edit_json(src / "flowdec.json", rate_plan=[{"codebooks": 10**9}]), "its card's rate_plan"),
])
def test_export_publishes_only_a_model_that_loads(tmp_path, damage, why):
    """A broken card was rewritten from defaults (losing the rate plan), broken tables or configs copied:
    the export looked fine and the model failed, or behaved as another, when used."""
    from flowdec_cli.models.cards import export_for_hub

    src = tmp_path / "src"
    shutil.copytree(catalogue.embedded_folders()["flowdec-small"], src)
    damage(src)
    with pytest.raises(ModelError, match=why):
        export_for_hub(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _edit_json(path: Path, **values) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_export_never_creates_the_folders_above_its_destination(tmp_path):
    from flowdec_cli.models.cards import export_for_hub

    with pytest.raises(ModelError, match=r"folder .*nosuch/sub does not exist; create it first"):
        export_for_hub("flowdec-small", tmp_path / "nosuch" / "sub" / "out")
    assert not (tmp_path / "nosuch").exists()


@pytest.mark.parametrize("damage, why", [
    (lambda m: _edit_json(m / "flowdec.json", default_nfe=10**12), "default_nfe"),
    (lambda m: _edit_json(m / "flowdec.json", sample_rate="fast"), "sample_rate 'fast' is not a whole number"),
    (lambda m: _edit_json(m / "flowdec.json", bitrates_kbps=[1e300]), "bitrates_kbps"),
    (lambda m: (m / "flowdec.json").write_text("[1, 2]"), "not a model card"),
    (lambda m: (m / "ndac" / "config.json").unlink(), r"ndac.*config\.json"),
])
def test_a_cached_model_that_fails_on_use_is_listed_as_broken_and_never_made_the_default(tmp_path, monkeypatch,
                                                                                         damage, why):
    """`models list` called such folders cached and fine (reading their cards leniently), and `models
    default` saved them, after which every command without --model failed."""
    monkeypatch.setenv("FLOWDEC_HOME", str(tmp_path))
    monkeypatch.delenv(catalogue.DEFAULT_MODEL_ENV, raising=False)
    folder = tmp_path / "models" / "mine"
    shutil.copytree(catalogue.embedded_folders()["flowdec-small"], folder)
    damage(folder)
    by = {m["name"]: m for m in catalogue.list_models()}
    assert re.search(why, by["mine"]["problem"]), by["mine"]["problem"]
    with pytest.raises(ModelError, match=why):
        load_model(str(folder), "cpu", with_postfilter=False)  # the listing says what using it says
    for ref in ("mine", str(folder)):
        with pytest.raises(ModelError, match=why):
            catalogue.set_default_model(ref)
    assert not catalogue.settings_path().exists()


def test_a_broken_settings_file_is_a_warning_in_the_listing_and_an_error_on_use(tmp_path, monkeypatch):
    from flowdec_cli.cli import main

    monkeypatch.setenv("FLOWDEC_HOME", str(tmp_path))
    monkeypatch.delenv(catalogue.DEFAULT_MODEL_ENV, raising=False)
    settings = catalogue.settings_path()
    for text, why in (("{broken", "unreadable settings"), ('{"default_model": ["a"]}', "default_model is a JSON list")):
        settings.write_text(text)
        for args in (["models", "list"], ["models", "list", "--json"]):  # the table and the JSON alike
            r = CliRunner().invoke(main, args)
            assert r.exit_code == 0 and "flowdec-small" in r.stdout, r.output
            assert f"flowdec: warning: {settings}: {why}" in r.stderr, r.stderr
        with pytest.raises(ModelError, match=why):
            catalogue.default_model_name()
    settings.unlink()
    settings.mkdir()  # a folder where the settings file belongs: named as itself, not as our temporary file
    with pytest.raises(IsADirectoryError, match=re.escape(str(settings))) as err:
        catalogue.set_default_model("flowdec-small")
    assert ".part" not in str(err.value)
    home = tmp_path / "a.wav"
    home.write_bytes(b"RIFF")
    monkeypatch.setenv("FLOWDEC_HOME", str(home))  # a file where the settings' folder belongs
    with pytest.raises(NotADirectoryError, match=f"is a file, not a folder: .{re.escape(str(home))}"):
        catalogue.set_default_model("flowdec-small")


def test_a_local_card_is_never_read_from_a_path_a_file_names(tmp_path):
    from flowdec_cli.models.resolve import local_card

    folder = tmp_path / "m"
    shutil.copytree(catalogue.embedded_folders()["flowdec-small"], folder)
    assert local_card("flowdec-small")["name"] == "flowdec-small"
    for name in (str(folder), "../m", "hf://owner/repo", "", "nosuch"):
        assert local_card(name) is None, name


def test_names_the_user_gave_are_quoted_as_given(tmp_path):
    from flowdec_cli.models.cards import export_for_hub

    with pytest.raises(ModelError, match=r"^--repo 'bad': not a hub repository; expected OWNER/REPO$"):
        export_for_hub("flowdec-small", tmp_path / "out", repo_id="bad")
    with pytest.raises(ModelError, match="an empty name is no model"):
        catalogue.set_default_model("  ", tmp_path)


def test_the_default_model_setting_is_a_model_and_a_broken_one_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWDEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(catalogue.DEFAULT_MODEL_ENV, raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="empty: not a model"):
        catalogue.set_default_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="nowhere: no such file or folder"):
        catalogue.set_default_model(str(tmp_path / "nowhere"))
    settings = catalogue.settings_path()
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text("{broken")
    with pytest.raises(ModelError, match=r"settings\.json: unreadable settings .*--reset"):
        catalogue.default_model_name()  # not silently the built-in model instead of the user's choice
    catalogue.set_default_model(None)  # --reset repairs it
    assert catalogue.default_model_name() == catalogue.builtin_model_name()
    assert catalogue.missing_default_model(None) is None
    assert catalogue.missing_default_model(("flowdec-small", "x")) is None  # a name, not a path
    assert catalogue.missing_default_model((str(tmp_path), "x")) is None
    gone = catalogue.missing_default_model((str(tmp_path / "moved"), "settings.json"))
    assert gone is not None and "moved (from settings.json) no longer exists" in gone and "--reset" in gone


def test_models_default_and_fetch_official_refuse_what_is_no_value_as_usage_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWDEC_HOME", str(tmp_path))
    r = CliRunner().invoke(models_group, ["default", "nosuch"])
    assert r.exit_code == 2 and "unknown model 'nosuch'" in r.output, r.output  # as --model nosuch is
    r = CliRunner().invoke(models_group, ["fetch-official", "--from", ""])
    assert r.exit_code == 2 and "--from: an empty path or URL" in r.output and "fetching" not in r.output


def test_a_card_nested_too_deeply_is_named_not_a_recursion_error(tmp_path):
    """'[' * 200,000 in flowdec.json (or a config.json) failed as "unexpected RecursionError", naming no
    file; the settings file and a component's config are read the same way."""
    from flowdec_cli.fileio import parse_json
    from flowdec_cli.models.folder import read_model_card

    deep = "[" * 200_000 + "]" * 200_000
    (tmp_path / "flowdec.json").write_text(deep)
    with pytest.raises(ModelError, match=r"flowdec\.json: unreadable \(nested too deeply\)"):
        read_model_card(tmp_path)
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(deep)


def test_a_card_that_is_no_regular_file_is_refused_and_long_values_are_cut(tmp_path):
    """flowdec.json linked to /dev/zero was taken for no card (the model ran without its name, side channel
    and default NFE); default_nfe = 10**4000 made a 4,099-character error line."""
    from flowdec_cli.models.folder import read_model_card

    (tmp_path / "flowdec.json").symlink_to("/dev/zero")
    with pytest.raises(ModelError, match=r"flowdec\.json: not a regular file"):
        read_model_card(tmp_path)
    (tmp_path / "flowdec.json").unlink()
    assert read_model_card(tmp_path) == {}  # no card at all is still a folder without one
    (tmp_path / "flowdec.json").write_text('{"name": "x", "default_nfe": ' + "9" * 4000 + "}")
    with pytest.raises(ModelError, match=r"default_nfe 9{57}\.\.\. is not an even number") as info:
        read_model_card(tmp_path)
    assert len(str(info.value)) < 300


def test_an_interrupted_connection_leaves_no_empty_partial_file(tmp_path, monkeypatch):
    """Ctrl-C while connecting left a 0-byte `.part` (made to learn that the folder takes it)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(release.urllib.request, "urlopen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        release.download("http://127.0.0.1:9/checkpoints.zip", tmp_path / "checkpoints.zip", progress=False)
    assert not release.partial_download(tmp_path / "checkpoints.zip").exists()
    release.partial_download(tmp_path / "checkpoints.zip").write_bytes(b"12345")  # what a run had is kept
    with pytest.raises(KeyboardInterrupt):
        release.download("http://127.0.0.1:9/checkpoints.zip", tmp_path / "checkpoints.zip", progress=False)
    assert release.partial_download(tmp_path / "checkpoints.zip").read_bytes() == b"12345"
