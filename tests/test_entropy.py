"""Entropy-coded .fdc payloads (coding range-ctx1): integer tables, exact coder, format 1.1, robustness."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import warnings
import zlib

import msgpack
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdec_cli import container, entropy
from flowdec_cli.container import FDC_MAGIC, FdcError, decode_fdc, encode_fdc, inspect_fdc, write_fdc
from flowdec_cli.entropy import (
    MAX_FREQ,
    TABLE_TOTAL,
    CodebookModel,
    EntropyError,
    EntropyTables,
    decode_codes,
    encode_codes,
    freqs_from_counts,
    load_tables,
    max_codes_for_payload,
    save_tables,
)
from flowdec_cli.training.entropy_tables import TableSettings, cross_entropy_bits, learn_tables

from .conftest import tone
from .test_container import make_header

S = 1024


def markov_codes(k: int, t: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Codes with the structure of real RVQ codes: skewed marginals, repeats, coarse-to-fine dependence."""
    rng = np.random.default_rng(seed)
    out = np.zeros((channels, k, t), np.int64)
    pop = (np.random.default_rng(1234).pareto(1.0, S) + 0.01)  # the same "codec" for every seed
    pop /= pop.sum()
    for c in range(channels):
        for j in range(k):
            x = rng.choice(S, size=t, p=pop)
            rep = rng.random(t) < 0.4
            for i in range(1, t):
                if rep[i]:
                    x[i] = x[i - 1]
            if j:
                follow = rng.random(t) < 0.3
                x[follow] = (out[c, j - 1, follow] * 7 + 3) % S
            out[c, j] = x
    return out


@pytest.fixture(scope="module")
def tables() -> EntropyTables:
    arrays = [a for seed in range(3) for a in markov_codes(10, 3000, seed)]
    return learn_tables(arrays, S, TableSettings(prev_classes=8, up_classes=8, smoothing=64, iterations=4))


# -- integer tables and the exact coder ------------------------------------------------------------

def test_freqs_from_counts_are_exact_integer_rows():
    rng = np.random.default_rng(0)
    counts = rng.pareto(1.2, (5, S))
    counts[1] = 0                 # an empty context: uniform
    counts[2] = 0
    counts[2, 7] = 1e12           # a near-certain code: capped
    f = freqs_from_counts(counts)
    assert f.dtype == np.int64 and (f.sum(axis=1) == TABLE_TOTAL).all()
    assert f.min() >= 1 and f.max() <= MAX_FREQ and f[2, 7] == MAX_FREQ
    assert len(set(f[1].tolist())) == 1
    np.testing.assert_array_equal(f, freqs_from_counts(counts.copy()))
    with pytest.raises(EntropyError):
        freqs_from_counts(-counts)


def test_the_coder_sees_exactly_our_integer_frequencies():
    """A code of frequency f costs exactly 16 - log2(f) bits: constriction uses the integers unchanged."""
    f = np.ones((1, S), np.int64)
    f[0, 1:6] = [2, 3, 5, 7, 11]
    f[0, 100] += TABLE_TOTAL - f.sum()
    t = EntropyTables(S, [CodebookModel(freq=f)])
    for code in range(1, 6):
        n = 20000
        payload = encode_codes(np.full((1, 1, n), code), t)
        bits = len(payload) * 8 / n
        assert abs(bits - (16 - np.log2(f[0, code]))) < 0.01, (code, bits)


def test_known_answer_stream_is_stable(tables):
    """Pins the bytes: a constriction release that quantised differently would fail here, not in the field."""
    codes = markov_codes(4, 200, seed=9)
    payload = encode_codes(codes, tables)
    np.testing.assert_array_equal(decode_codes(payload, codes.shape, tables), codes)
    f = np.arange(1, S + 1, dtype=np.int64) // 16 + 1
    f[-1] += TABLE_TOTAL - f.sum()
    fixed = EntropyTables(S, [CodebookModel(freq=f[None, :].copy())])
    data = encode_codes(np.arange(0, S, 7, dtype=np.int64).reshape(1, 1, -1), fixed)
    assert hashlib.sha256(data).hexdigest()[:16] == KNOWN_ANSWER, hashlib.sha256(data).hexdigest()[:16]


KNOWN_ANSWER = "6218eadca321a3d9"


def test_round_trip_all_shapes(tables):
    for shape in [(1, 1, 1), (2, 10, 500), (1, 4, 0), (3, 3, 17)]:
        codes = markov_codes(shape[1], shape[2], seed=sum(shape), channels=shape[0]) if shape[2] else \
            np.zeros(shape, np.int64)
        payload = encode_codes(codes, tables)
        assert len(payload) % 4 == 0
        np.testing.assert_array_equal(decode_codes(payload, shape, tables), codes)


def test_learned_tables_save_load_and_compress(tables, tmp_path):
    path = save_tables(tables, tmp_path)
    again = load_tables(path)
    assert again.id == tables.id and len(tables.id) == 16
    for a, b in zip(tables.codebooks, again.codebooks):
        np.testing.assert_array_equal(a.freq, b.freq)
    held_out = list(markov_codes(10, 2000, seed=7))
    bits, n = cross_entropy_bits(tables, held_out, 3)
    assert n == 2000 and bits / n < 9.0
    # a damaged file is refused with one clear message
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(EntropyError, match="entropy tables"):
        load_tables(path)


@pytest.mark.parametrize("values", ["fractions", "nan"])
def test_tables_of_float_frequencies_are_refused_by_their_type(tables, tmp_path, values):
    """A cast to integers first truncated 0.9 away (the tables loaded, under the original's identifier) and
    warned about NaN on stderr before blaming the values."""
    from safetensors.numpy import load_file, save_file

    path = save_tables(tables, tmp_path)
    arrays = load_file(str(path))
    freq = arrays["freq_0"].astype(np.float64) + 0.9
    if values == "nan":
        freq[0, 0] = np.nan
    arrays["freq_0"] = freq
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    save_file(arrays, str(path), metadata=meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(EntropyError, match=r"codebook 0: frequencies are float64 values, not integers"):
            load_tables(path)


# -- the container ----------------------------------------------------------------------------------

def test_entropy_coded_file_is_smaller_and_decodes_identically(tables, tmp_path):
    h = make_header(channels=2)
    codes = markov_codes(10, 750, seed=3, channels=2)
    plain = encode_fdc(h, codes)
    coded = encode_fdc(h, codes, tables=tables)
    assert (coded[4], coded[5]) == (1, 1) and (plain[4], plain[5]) == (1, 0)
    assert len(coded) < 0.9 * len(plain)
    h2, c2 = decode_fdc(coded, tables=tables)
    np.testing.assert_array_equal(c2, codes)
    assert h2.coding == "range-ctx1" and h2.entropy_tables == tables.id and h2.payload_bytes == len(coded) - \
        12 - (len(coded) - 12 - h2.payload_bytes)
    assert h2.bitpacked_payload_size == 2 * 10 * 750 * 10 // 8
    assert dataclass_equal_but_coding(h2, h)
    written = write_fdc(tmp_path / "a.fdc", h, codes, tables=tables)
    assert written.entropy_coded and (tmp_path / "a.fdc").read_bytes() == coded
    assert inspect_fdc(tmp_path / "a.fdc").payload_bytes == written.payload_bytes
    # a callable resolves the tables from the header, only for entropy-coded files
    seen = []
    decode_fdc(coded, tables=lambda hh: seen.append(hh.entropy_tables) or tables)
    decode_fdc(plain, tables=lambda hh: seen.append("called for a bit-packed file"))
    assert seen == [tables.id]


def dataclass_equal_but_coding(a, b) -> bool:
    import dataclasses

    strip = dict(coding="bitpack", entropy_tables="", payload_bytes=0)
    return dataclasses.replace(a, **strip) == dataclasses.replace(b, **strip)


def test_incompressible_codes_fall_back_to_a_bitpacked_1_0_file(tables):
    h = make_header()
    codes = np.random.default_rng(0).integers(0, S, h.codes_shape)
    data = encode_fdc(h, codes, tables=tables)
    assert data == encode_fdc(h, codes) and (data[4], data[5]) == (1, 0)


def test_a_tie_goes_to_bit_packing(tables, monkeypatch):
    """The spec: entropy coding only when the file comes out smaller; at the same size a 1.0 reader can
    still read the bit-packed file."""
    from flowdec_cli import container, entropy

    h = make_header()
    codes = markov_codes(10, 750)
    packed = len(encode_fdc(h, codes))
    sizes = {}
    for n in range(packed - 200, packed):
        monkeypatch.setattr(entropy, "encode_codes", lambda _arr, _t, n=n: bytes(n))
        written, data = container.encode_fdc_written(h, codes, tables=tables)
        sizes[n] = (written.coding, len(data))
    flips = [n for n in sizes if sizes[n][0] == "bitpack" and sizes.get(n - 1, ("",))[0] != "bitpack"]
    assert len(flips) == 1 and sizes[flips[0] - 1][1] == packed - 1, sizes  # one byte smaller: entropy


def test_missing_or_other_tables_are_refused_clearly(tables):
    h = make_header()
    coded = encode_fdc(h, markov_codes(10, 750), tables=tables)
    with pytest.raises(FdcError, match=r"entropy-coded .*needs the entropy tables"):
        decode_fdc(coded, source_name="x.fdc")
    other = learn_tables(list(markov_codes(10, 500, seed=42)), S, TableSettings(4, 4, 32, iterations=2))
    with pytest.raises(FdcError, match=f"x.fdc: coded with entropy tables {tables.id}, but .* {other.id}"):
        decode_fdc(coded, source_name="x.fdc", tables=other)


def test_reading_without_tables_says_how_to_pass_them(tables, tmp_path):
    written = write_fdc(tmp_path / "x.fdc", make_header(), markov_codes(10, 750), tables=tables)
    assert written.entropy_coded
    with pytest.raises(FdcError, match=r"needs the entropy tables .*\(tables=Codec\.entropy_tables\)"):
        container.read_fdc(tmp_path / "x.fdc")
    assert container.read_fdc(tmp_path / "x.fdc", tables=tables)[0] == written


def _forged_coded(tables, payload: bytes, num_frames: int = 750, coding: str = "range-ctx1", **extra) -> bytes:
    m = container._header_map(make_header(num_frames=num_frames))
    m.update({17: coding, 18: tables.id, 19: len(payload)})
    m.update(extra)
    head = msgpack.packb(m, use_bin_type=True)
    body = FDC_MAGIC + bytes([1, 1]) + struct.pack("<H", len(head)) + head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def test_unknown_coding_is_refused_with_its_name(tables):
    with pytest.raises(FdcError, match=r"x.fdc: payload coding 'range-ctx9' is not supported .*upgrade flowdec"):
        decode_fdc(_forged_coded(tables, b"\0" * 64, coding="range-ctx9"), source_name="x.fdc")


def test_a_header_cannot_claim_more_codes_than_the_payload_can_hold(tables):
    with pytest.raises(FdcError, match="cannot be coded in 8 payload bytes"):
        decode_fdc(_forged_coded(tables, b"\0" * 8, num_frames=10**9), tables=tables)


def test_corrupted_payload_is_caught_by_the_crc_before_decoding(tables):
    calls = []
    coded = bytearray(encode_fdc(make_header(), markov_codes(10, 750), tables=tables))
    coded[len(coded) // 2] ^= 0x10
    with pytest.raises(FdcError, match="CRC mismatch"):
        decode_fdc(bytes(coded), tables=lambda h: calls.append(h) or tables)
    assert calls == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=0, max_size=600).map(lambda b: b[: len(b) // 4 * 4]),
       frames=st.integers(0, 300))
def test_any_payload_bytes_decode_or_fail_cleanly(tables, payload, frames):
    """Fuzz over the entropy-coded payload with a valid CRC: codes of the declared shape or an FdcError."""
    data = _forged_coded(tables, payload, num_frames=frames)
    try:
        _h, codes = decode_fdc(data, tables=tables)
    except FdcError as e:
        assert str(e).startswith("<bytes>: ") and "\n" not in str(e)
    else:
        assert codes.shape == (1, 10, frames) and (codes >= 0).all() and (codes < S).all()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), flips=st.integers(1, 4))
def test_mutated_valid_payloads_never_escape_as_other_errors(tables, seed, flips):
    rng = np.random.default_rng(seed)
    payload = bytearray(encode_codes(markov_codes(10, 120, seed=seed % 50), tables))
    for _ in range(flips):
        payload[rng.integers(len(payload))] ^= 1 << int(rng.integers(8))
    try:
        decode_fdc(_forged_coded(tables, bytes(payload), num_frames=120), tables=tables)
    except FdcError:
        pass


def test_a_payload_that_ends_before_its_codes_is_refused(tables, monkeypatch):
    """The range decoder reads zeros past its data without noticing, so zero bytes decoded into as many
    codes as a header declared (262 KB into 33 million codes: 25 s and 1.4 GB before the refusal), and so
    did a valid stream under a header claiming more codes. The decode now stops once what it decoded
    carries more information than the payload's bits can."""
    checks: list[float] = []
    decoded = entropy._GuardedDecoder.decoded

    def spy(self, bits):
        checks.append(bits)
        return decoded(self, bits)

    monkeypatch.setattr(entropy._GuardedDecoder, "decoded", spy)
    declared = max_codes_for_payload(4096) // 4 * 4
    with pytest.raises(EntropyError, match=r"payload of 4096 bytes ends before the symbols its header declares"):
        decode_codes(bytes(4096), (1, 4, declared // 4), tables)
    assert len(checks) * entropy._CHECK_EVERY < declared // 20
    short = encode_codes(markov_codes(1, 237, seed=1), tables)  # valid, under a header that claims more
    checks.clear()
    with pytest.raises(EntropyError, match=r"ends before the symbols its header declares"):
        decode_codes(short, (1, 1, max_codes_for_payload(len(short))), tables)
    assert len(checks) == 1
    whole = encode_codes(markov_codes(10, 120), tables)
    for cut in (4, 8):  # the stream's last words missing, as a truncating forger would leave it
        with pytest.raises(FdcError, match="invalid payload"):
            decode_fdc(_forged_coded(tables, whole[:-cut], num_frames=120), tables=tables)
    assert (decode_codes(whole, (1, 10, 120), tables) == markov_codes(10, 120)).all()


@pytest.mark.parametrize("with_prev", [False, True])
def test_valid_streams_decode_whole_under_the_information_stop(tables, with_prev, monkeypatch):
    """A valid stream's symbols never carry more information than its bits: checked after every symbol,
    the cheapest stream there can be (every symbol at MAX_FREQ) and learned tables' streams decode whole."""
    monkeypatch.setattr(entropy, "_CHECK_EVERY", 1)
    row = np.full(S, (TABLE_TOTAL - MAX_FREQ) // (S - 1), np.int64)
    row[0] = MAX_FREQ
    row[1] += TABLE_TOTAL - row.sum()
    prev_map = np.zeros(S, np.int64) if with_prev else None
    freq = np.stack([row, row]) if with_prev else row[None]
    cheap = EntropyTables(S, [CodebookModel(freq=freq, prev_map=prev_map)])
    cheap.validate()
    rng = np.random.default_rng(0)
    for frames in (1, 10, 700, 5000, 20000):
        for rare in (0.0, 0.01):
            codes = np.where(rng.random((1, 1, frames)) < rare, rng.integers(1, S, (1, 1, frames)), 0)
            assert (decode_codes(encode_codes(codes, cheap), codes.shape, cheap) == codes).all()
    for seed in range(20):
        codes = markov_codes(int(rng.integers(1, 11)), int(rng.integers(1, 400)), seed=seed)
        assert (decode_codes(encode_codes(codes, tables), codes.shape, tables) == codes).all()


def test_odd_payload_size_is_refused(tables):
    with pytest.raises(FdcError, match="whole number of 32-bit words"):
        decode_fdc(_forged_coded(tables, b"\0" * 9, num_frames=1), tables=tables)


# -- model, pipeline and command line ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_with_tables(tmp_path_factory, tiny_codec_dir):
    """A copy of the tiny codec folder with tables learned by `flowdec train entropy-tables`."""
    folder = tmp_path_factory.mktemp("entropy") / "tiny-75"
    shutil.copytree(tiny_codec_dir, folder)
    audio = tmp_path_factory.mktemp("train-audio")
    for i in range(3):
        sf.write(audio / f"t{i}.wav", tone(2.0, 48000, 1, seed=i), 48000)
    (audio / "list.txt").write_text("t0.wav\nt1.wav\nt2.wav\n")
    from flowdec_cli.cli import main

    r = CliRunner().invoke(main, ["train", "entropy-tables", str(folder), str(audio / "list.txt"),
                                  "--prev-classes", "4", "--up-classes", "4"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "entropy tables" in r.output and (folder / "entropy.safetensors").is_file()
    r = CliRunner().invoke(main, ["train", "entropy-tables", str(folder), str(audio)], catch_exceptions=False)
    assert r.exit_code == 1 and "exists; use -f/--force" in r.output
    return folder


def test_compress_entropy_codes_by_default_and_no_entropy_bitpacks(tiny_with_tables, tmp_path):
    from flowdec_cli.cli import main

    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a], catch_exceptions=False)
    wav = tmp_path / "in.wav"
    sf.write(wav, tone(3.0, 48000, 1, seed=5), 48000)
    r = run("compress", wav, tmp_path / "e.fdc", "-b", "6", "--model", tiny_with_tables, "--device", "cpu")
    assert r.exit_code == 0, r.output
    r2 = run("compress", wav, tmp_path / "p.fdc", "-b", "6", "--model", tiny_with_tables, "--no-entropy", "-q")
    assert r2.exit_code == 0, r2.output
    e, p = tmp_path / "e.fdc", tmp_path / "p.fdc"
    info_e = json.loads(run("info", e, "--json").output)
    info_p = json.loads(run("info", p, "--json").output)
    assert info_p["coding"] == "bitpack" and info_p["entropy_saving_percent"] == 0.0
    if info_e["coding"] == "range-ctx1":  # the tiny random codec's codes may be incompressible
        assert "entropy coding saved" in r.output
        assert e.stat().st_size < p.stat().st_size == info_e["bitpacked_bytes"]
        assert info_e["entropy_saving_percent"] > 0
        assert info_e["actual_bitrate_kbps"] < info_e["nominal_bitrate_kbps"]
    outs = []
    for f in (e, p):
        out = tmp_path / (f.stem + ".wav")
        r = run("decompress", f, out, "--nfe", "0", "-q", "--model", tiny_with_tables)
        assert r.exit_code == 0, r.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]  # bit-identical audio


def test_decoding_an_entropy_coded_file_with_a_model_without_its_tables(tiny_with_tables, tiny_codec_dir,
                                                                       tmp_path):
    from flowdec_cli.cli import main
    from flowdec_cli.entropy import load_tables
    from flowdec_cli.pipeline import Codec

    codec = Codec.load(tiny_with_tables, "cpu", with_postfilter=False)
    h, codes = codec.compress_array(tone(1.0, 48000), 48000, n_codebooks=8)
    tables = load_tables(tiny_with_tables / "entropy.safetensors")
    codes[:] = codes[..., :1]  # steady codes: always compressible with any tables
    write_fdc(tmp_path / "a.fdc", h, codes, tables=tables)
    assert inspect_fdc(tmp_path / "a.fdc").entropy_coded
    r = CliRunner().invoke(main, ["decompress", str(tmp_path / "a.fdc"), str(tmp_path / "a.wav"), "--nfe", "0",
                                  "-q", "--model", str(tiny_codec_dir)], catch_exceptions=False)
    assert r.exit_code == 1
    line = r.output.strip()
    assert "\n" not in line and "has no entropy tables" in line and tables.id in line


def test_builtin_model_ships_tables_for_its_weights():
    from flowdec_cli.models.catalogue import default_model_name
    from flowdec_cli.pipeline import Codec

    codec = Codec.load(default_model_name(), "cpu", with_postfilter=False)
    tables = codec.entropy_tables
    assert tables is not None, "the built-in model's entropy.safetensors is missing or stale"
    assert tables.n_codebooks == codec.ndac.n_codebooks and tables.codebook_size == codec.ndac.codebook_size
    assert tables.ndac_hash == codec.model.ndac_hash
    assert "valid" not in tables.info.get("trained_on", "")
