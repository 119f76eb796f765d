"""The .fdc container (docs/fdc-format.md): round trips, size budget, corrupt input, atomic writes."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
import time
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flowdec_cli import container
from flowdec_cli.container import (
    FDC_MAGIC,
    FORMAT_VERSION,
    FdcError,
    FdcHeader,
    actual_bitrate,
    bits_for_codebook_size,
    decode_fdc,
    encode_fdc,
    frames_for_samples,
    header_size,
    inspect_fdc,
    max_file_size,
    nominal_bitrate,
    pack_codes,
    read_fdc,
    unpack_codes,
    write_fdc,
)

SPEC = Path(__file__).resolve().parents[1] / "docs" / "fdc-format.md"


def make_header(**overrides) -> FdcHeader:
    """A realistic NDAC-75 header: 10 s mono at 48 kHz, 10 codebooks of 1024."""
    fields = dict(
        model_name="flowdec-75m", model_hash="0123456789abcdef", package_version="0.1.0",
        created_by="flowdec", sample_rate=48000, channels=1, num_samples=480_000,
        model_sample_rate=48000, hop_length=640, codebook_size=1024, n_codebooks=10,
        model_codebooks=10, num_frames=750, chunk_frames=750, context_frames=16,
    )
    fields.update(overrides)
    # keep the length fields consistent (the codec's length rule) unless a test sets both
    if "num_frames" in overrides and "num_samples" not in overrides:
        fields["num_samples"] = fields["num_frames"] * fields["hop_length"] * fields["sample_rate"] \
            // fields["model_sample_rate"]
    elif "num_frames" not in overrides:
        fields["num_frames"] = frames_for_samples(fields["num_samples"], fields["sample_rate"],
                                                  fields["model_sample_rate"], fields["hop_length"])[0]
    return FdcHeader(**fields)


def random_codes(header: FdcHeader, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, header.codebook_size, header.codes_shape, dtype=np.int64)


def small_file() -> bytes:
    h = make_header(channels=2, num_samples=1900, n_codebooks=3, num_frames=3, chunk_frames=0,
                    context_frames=0)
    return encode_fdc(h, random_codes(h, 1))


def forge(header_obj, payload: bytes = b"", major: int = 1, minor: int = 0, raw_header: bytes | None = None,
          crc: bool = True) -> bytes:
    """A file with any header object (packed as given) and, by default, a correct CRC."""
    head = raw_header if raw_header is not None else msgpack.packb(header_obj, use_bin_type=True)
    body = FDC_MAGIC + bytes([major, minor]) + struct.pack("<H", len(head)) + head + payload
    return body + struct.pack("<I", zlib.crc32(body) if crc else 0)


def header_map(h: FdcHeader) -> dict:
    return container._header_map(h)


def expect_error(data: bytes, *fragments: str, name: str = "<bytes>") -> FdcError:
    with pytest.raises(FdcError) as info:
        decode_fdc(data, source_name=name)
    msg = str(info.value)
    assert msg.startswith(f"{name}: "), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return info.value


# -- layout -------------------------------------------------------------------------------------------

def test_fixed_layout_matches_spec():
    h = make_header()
    data = encode_fdc(h, random_codes(h))
    assert data[:4] == b"\x89FDC"
    assert (data[4], data[5]) == (1, 0)  # a bit-packed file stays a 1.0 file
    assert FORMAT_VERSION == (1, 3)
    hlen = struct.unpack_from("<H", data, 6)[0]
    assert hlen == header_size(h)
    assert len(data) == 12 + hlen + h.payload_size
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    head = msgpack.unpackb(data[8:8 + hlen], strict_map_key=False)
    assert head[0] == "flowdec-75m" and head[12] == 750 and head[15] == 7500
    assert all(isinstance(k, int) for k in head)


def test_spec_table_matches_implementation():
    if not SPEC.exists():
        pytest.skip("docs not available")
    rows = re.findall(r"^\| (\d+)\s+\| `(\w+)`", SPEC.read_text(), flags=re.M)
    documented = {int(k): name for k, name in rows}
    assert documented == container._KNOWN_KEYS


def test_bit_order_example_from_spec():
    codes = np.array([0x3FF, 0x001, 0x155]).reshape(1, 1, 3)
    assert pack_codes(codes, 10) == bytes.fromhex("ffc01554")


def test_code_order_is_channel_frame_codebook():
    c, k, t = 2, 3, 5
    codes = np.arange(c * k * t).reshape(c, k, t)
    packed = pack_codes(codes, 8)
    expected = [int(codes[ci, ki, ti]) for ci in range(c) for ti in range(t) for ki in range(k)]
    assert list(packed) == expected


# -- round trips ----------------------------------------------------------------------------------------

def test_every_header_field_round_trips(tmp_path):
    h = make_header(
        model_name="flowdec-25s", model_hash="fedcba9876543210" * 4, package_version="1.2.3rc1",
        created_by="flowdec-cli test", sample_rate=44_100, channels=3, num_samples=123_457,
        model_sample_rate=48_000, hop_length=1920, codebook_size=1000, n_codebooks=7, model_codebooks=16,
        num_frames=70, chunk_frames=123, context_frames=45, gain=0.8125,
        extra={"note": "hello", "tags": [1, 2.5, None, True, b"\x00\xff"], "nested": {"a": {"b": [1]}},
               999: "future field"},
    )
    codes = random_codes(h, 3)
    for h2, c2 in (decode_fdc(encode_fdc(h, codes)),
                   (write_fdc(tmp_path / "x.fdc", h, codes), read_fdc(tmp_path / "x.fdc"))[1]):
        for f in dataclasses.fields(FdcHeader):
            assert getattr(h2, f.name) == getattr(h, f.name), f.name
        assert h2.format_version == (1, 0)
        assert h2 == h
        np.testing.assert_array_equal(c2, codes)
        assert c2.dtype == np.int64 and c2.shape == (3, 7, 70)
    assert h2.nominal_bitrate == 48000 / 1920 * 7 * 10
    d = h2.to_dict()
    for f in dataclasses.fields(FdcHeader):
        assert f.name in d
    assert d["duration"] == 123_457 / 44_100 and d["bits_per_code"] == 10


@pytest.mark.parametrize("name,value", [
    ("model_name", "other-model"), ("model_hash", ""), ("package_version", "9.9.9"), ("created_by", "x"),
    ("sample_rate", 96_000), ("num_samples", 479_999), ("model_sample_rate", 44_100),
    ("hop_length", 512), ("model_codebooks", 12), ("chunk_frames", 0), ("context_frames", 0),
    ("gain", 2.0), ("gain", 3), ("codebook_size", 4096),
])
def test_single_field_changes_survive(name, value):
    h = make_header(**{name: value})
    h2, _ = decode_fdc(encode_fdc(h, random_codes(h)))
    assert getattr(h2, name) == value
    assert h2 == h


def test_gain_is_optional_on_disk():
    h = make_header()
    assert 16 not in header_map(h)
    assert header_map(dataclasses.replace(h, gain=0.5))[16] == 0.5


@pytest.mark.parametrize("bits", range(1, 17))
def test_codes_round_trip_all_widths(bits):
    rng = np.random.default_rng(bits)
    sizes = {2 ** bits, max(2, 2 ** bits - 1), 2 ** (bits - 1) + 1} if bits > 1 else {2}
    for cs in sorted(sizes):
        assert bits_for_codebook_size(cs) == bits
        for shape in [(1, 1, 1), (1, 3, 7), (2, 4, 13), (3, 2, 0), (1, 1, 0), (2, 5, 101)]:
            h = make_header(codebook_size=cs, channels=shape[0], n_codebooks=shape[1], model_codebooks=8,
                            num_frames=shape[2])
            codes = rng.integers(0, cs, shape)
            if codes.size:
                codes.flat[0] = cs - 1  # the largest code and zero are both present
                codes.flat[-1] = 0
            data = encode_fdc(h, codes)
            assert len(data) == 12 + header_size(h) + math.ceil(codes.size * bits / 8)
            h2, c2 = decode_fdc(data)
            assert h2 == h
            np.testing.assert_array_equal(c2, codes)
            np.testing.assert_array_equal(unpack_codes(pack_codes(codes, bits), bits, shape), codes)


@pytest.mark.parametrize("bits", [17, 20, 24, 25, 26, 31, 32])
def test_pack_round_trip_wide_codes(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2 ** bits, (2, 3, 257), dtype=np.int64)
    codes[0, 0, 0] = 2 ** bits - 1
    np.testing.assert_array_equal(unpack_codes(pack_codes(codes, bits), bits, codes.shape), codes)


def test_codebook_size_bits():
    assert [bits_for_codebook_size(n) for n in (2, 3, 4, 5, 1000, 1023, 1024, 1025, 2 ** 32)] == \
        [1, 2, 2, 3, 10, 10, 10, 11, 32]
    with pytest.raises(ValueError):
        bits_for_codebook_size(1)


def test_dtypes_accepted_for_codes():
    h = make_header(num_frames=4)
    ref = random_codes(h)
    for dtype in (np.int16, np.int32, np.uint16, np.int64, np.uint64):
        _, c2 = decode_fdc(encode_fdc(h, ref.astype(dtype)))
        np.testing.assert_array_equal(c2, ref)


def test_long_file_packs_fast():
    """60 min stereo at 75 Hz x 10 codebooks = 5.4 M codes."""
    h = make_header(channels=2, num_samples=48000 * 3600, num_frames=75 * 3600)
    codes = random_codes(h, 7)
    t0 = time.perf_counter()
    data = encode_fdc(h, codes)
    t1 = time.perf_counter()
    _h2, c2 = decode_fdc(data)
    t2 = time.perf_counter()
    np.testing.assert_array_equal(c2, codes)
    assert len(data) == 12 + header_size(h) + 5_400_000 * 10 // 8
    # Typically ~0.1 s each; the bound leaves room for a loaded machine.
    assert t1 - t0 < 3.0 and t2 - t1 < 3.0, (t1 - t0, t2 - t1)


# -- size budget ----------------------------------------------------------------------------------------

def test_nominal_and_actual_bitrate():
    assert nominal_bitrate(48000, 640, 10, 1024) == 7500
    assert nominal_bitrate(48000, 640, 4, 1024) == 3000
    assert nominal_bitrate(48000, 1920, 16, 1024) == 4000
    assert nominal_bitrate(44100, 512, 9, 1024) == 7751.953125
    assert actual_bitrate(9375, 10.0, 1) == 7500
    assert actual_bitrate(18750, 10.0, 2) == 7500
    assert actual_bitrate(100, 0.0, 1) == 0.0
    assert max_file_size(7500, 10.0) == pytest.approx(9549.875)


@pytest.mark.parametrize("hop,k,name,rate", [(640, 10, "flowdec-75m", 7500), (640, 4, "flowdec-75m", 3000),
                                             (1920, 16, "flowdec-25s", 4000)])
def test_ten_seconds_fit_the_budget(hop, k, name, rate):
    h = make_header(model_name=name, hop_length=hop, n_codebooks=k, model_codebooks=max(k, 10),
                    num_frames=480_000 // hop)
    assert h.nominal_bitrate == rate
    data = encode_fdc(h, random_codes(h))
    budget = rate * 10 / 8 * 1.005 + 128
    assert len(data) <= budget, (len(data), budget)
    assert len(data) - rate * 10 / 8 <= 128  # the overhead alone is under 128 bytes
    if rate == 7500:
        assert len(data) <= 9551
        assert len(data) == 9479  # the figure docs/fdc-format.md quotes


def test_realistic_header_overhead():
    assert header_size(make_header()) == 92
    assert len(encode_fdc(make_header(num_samples=0, num_frames=0), np.zeros((1, 10, 0), int))) <= 128


@pytest.mark.parametrize("hop,k,channels", [(640, 10, 1), (1920, 16, 1), (640, 4, 1), (640, 10, 2), (640, 4, 2)])
@pytest.mark.parametrize("sr", [48_000, 44_100, 16_000, 96_000])
def test_budget_holds_at_every_duration(hop, k, channels, sr):
    """Sample counts from 0 to 3 s and one hour; frames = ceil(resampled length / hop)."""
    for n in [*range(0, 4000, 13), *range(4000, 3 * sr, 1009), 3600 * sr]:
        frames = math.ceil(math.ceil(n * 48000 / sr) / hop)
        h = make_header(sample_rate=sr, channels=channels, num_samples=n, hop_length=hop, n_codebooks=k,
                        model_codebooks=max(k, 10), num_frames=frames)
        size = 12 + header_size(h) + h.payload_size
        assert size <= max_file_size(h.nominal_bitrate, h.duration, channels), (n, size)
    # and the real encoder output agrees with the formula
    h = make_header(sample_rate=sr, channels=channels, num_samples=12_345, hop_length=hop, n_codebooks=k,
                    model_codebooks=max(k, 10), num_frames=math.ceil(math.ceil(12_345 * 48000 / sr) / hop))
    assert len(encode_fdc(h, random_codes(h))) == 12 + header_size(h) + h.payload_size


# -- bad files --------------------------------------------------------------------------------------------

def test_empty_file():
    expect_error(b"", "empty file")


@pytest.mark.parametrize("data", [b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC\x00\x00\x00\x22", b"FDC1" + b"\0" * 40,
                                  b"\x00", b"\x89FDX\x01\x00\x00\x00"])
def test_wrong_magic(data):
    expect_error(data, "bad magic", "not a .fdc file")


def test_future_major_version_refused():
    data = bytearray(small_file())
    data[4] = 7
    expect_error(bytes(data), "format version 7.x is newer than this flowdec supports (1.x)", "upgrade flowdec")
    data[4] = 0
    expect_error(bytes(data), "format version 0.x", "(1.x)")
    # refused before anything else is looked at, even with a correct CRC
    h = make_header(num_frames=2)
    expect_error(forge(header_map(h), pack_codes(random_codes(h), 10), major=2), "2.x is newer")


def test_newer_minor_version_is_read_and_unknown_keys_ignored():
    h = make_header(num_frames=3)
    codes = random_codes(h)
    m = header_map(h)
    m[99] = {"some": "future field"}
    m["app.note"] = "kept"
    h2, c2 = decode_fdc(forge(m, pack_codes(codes, 10), minor=9))
    assert h2.format_version == (1, 9)
    assert h2.extra == {99: {"some": "future field"}, "app.note": "kept"}
    assert dataclasses.replace(h2, extra={}) == h
    np.testing.assert_array_equal(c2, codes)


def test_truncated_files():
    h = make_header()
    data = encode_fdc(h, random_codes(h))
    hlen = header_size(h)
    for n in range(len(data)):
        with pytest.raises(FdcError):
            decode_fdc(data[:n])
    expect_error(data[:12 + hlen + 4000],
                 "truncated file (expected 9375 payload bytes + a 4-byte checksum after the header, got 4004 bytes)")
    expect_error(data[:3], "truncated file")
    expect_error(data[:20], "truncated file")


def _through_fifo(tmp_path: Path, data: bytes, then: bytes = b"") -> tuple[str, list]:
    """A named pipe that serves ``data`` and then ``then`` (or, if ``then`` is None, endless zeros)."""
    import threading

    fifo = tmp_path / "pipe.fdc"
    os.mkfifo(fifo)
    done: list = []

    def writer() -> None:
        try:
            with open(fifo, "wb") as f:
                f.write(data + then)
                done.append(True)
        except BrokenPipeError:  # the reader stopped reading: what a bounded read must do
            done.append(False)

    threading.Thread(target=writer, daemon=True).start()
    return str(fifo), done


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_reading_stops_at_what_the_file_can_be(tmp_path):
    """A wrong magic costs 4 bytes however long the input; a pipe is read as far as its header declares."""
    big = tmp_path / "big.fdc"
    with open(big, "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MB of zeros on disk in no time
    with pytest.raises(FdcError, match="bad magic"):
        container.inspect_fdc(big)
    data = small_file()
    name, _ = _through_fifo(tmp_path, data)
    assert container.inspect_fdc(name) == decode_fdc(data)[0]
    os.unlink(name)
    name, _ = _through_fifo(tmp_path, data, b"x" * (1 << 20))
    with pytest.raises(FdcError, match="unexpected data after the end of the file"):
        container.inspect_fdc(name)
    if os.path.exists("/dev/zero"):
        with pytest.raises(FdcError, match="bad magic"):
            container.inspect_fdc("/dev/zero")


class _CountingReader:
    """A stream without a descriptor that records the largest single read asked of it."""

    def __init__(self, data: bytes) -> None:
        import io

        self.inner, self.largest, self.total = io.BytesIO(data), 0, 0

    def read(self, n: int = -1) -> bytes:
        self.largest = max(self.largest, n if n >= 0 else 1 << 62)
        out = self.inner.read(n)
        self.total += len(out)
        return out


def test_memory_follows_the_bytes_there_not_the_bytes_declared(tmp_path):
    """A header declaring 100 GB of payload on a stream, or a regular file with gigabytes behind a small
    valid one, cost what is there (read in blocks) and one byte past the declared end, not the declared
    size or the whole file."""
    data = small_file()
    h = decode_fdc(data)[0]
    hmap = header_map(h)
    hmap[19] = 10 ** 11  # payload_bytes
    forged = forge(hmap, data[-8:-4])
    reader = _CountingReader(forged)
    with pytest.raises(FdcError, match="payload"):
        container.inspect_fdc_stream(reader, "<stdin>")  # type: ignore[arg-type]
    assert reader.largest <= container._READ_BLOCK and reader.total == len(forged)

    big = tmp_path / "big.fdc"
    with open(big, "wb") as f:
        f.write(data)
        f.truncate(len(data) + (64 << 20))  # sparse: 64 MB of zeros behind the file
    with pytest.raises(FdcError, match="unexpected data after the end of the file"):
        container.inspect_fdc(big)
    reader = _CountingReader(data + bytes(64 << 20))
    with pytest.raises(FdcError, match="unexpected data after the end of the file"):
        container.inspect_fdc_stream(reader, "<stdin>")  # type: ignore[arg-type]
    assert reader.total == len(data) + 1


@pytest.mark.parametrize("intact", [True, False])
def test_a_long_file_whose_header_does_not_parse_is_checked_in_blocks(tmp_path, intact):
    """The checksum over the whole file tells a forged header (its own error) from a corrupt file (CRC
    mismatch); on a regular file it is computed block by block, not over the file read whole."""
    import tracemalloc

    data = forge(None, payload=bytes(24 << 20), raw_header=b"\xc1", crc=intact)
    path = tmp_path / "long.fdc"
    path.write_bytes(data)
    in_memory = expect_error(data, "CRC mismatch" if not intact else "invalid header", name=str(path))
    del data
    tracemalloc.start()
    try:
        with pytest.raises(FdcError) as info:
            container.inspect_fdc(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == str(in_memory)
    assert peak < 3 * container._READ_BLOCK, peak


def test_a_file_whose_header_does_not_parse_reads_alike_from_disk_and_memory(tmp_path):
    """Cut anywhere, with its checksum right or wrong: a regular file (checked block by block) is reported
    as the same bytes decoded in memory are."""
    for data in (forge(None, payload=bytes(range(10)), raw_header=b"\xc1"),
                 forge(None, payload=bytes(range(10)), raw_header=b"\xc1", crc=False),
                 forge(None, payload=bytes(range(10)), raw_header=b"\xc1", major=2)):
        for cut in range(len(data) + 1):
            path = tmp_path / "f.fdc"
            path.write_bytes(data[:cut])
            with pytest.raises(FdcError) as on_disk:
                container.inspect_fdc(path)
            assert str(on_disk.value) == str(expect_error(data[:cut], name=str(path))), cut


def test_every_single_bit_flip_is_detected():
    data = small_file()
    assert len(data) < 200
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(FdcError):
                decode_fdc(bytes(bad))


def test_bit_flip_in_payload_reports_crc():
    data = bytearray(small_file())
    data[-6] ^= 0x10
    expect_error(bytes(data), "CRC mismatch: file is corrupt")
    data = bytearray(small_file())
    data[10] ^= 0x01  # inside the header
    expect_error(bytes(data))


def test_trailing_bytes():
    expect_error(small_file() + b"\x00", "unexpected data after the end of the file")


def test_crc_field_itself_corrupt():
    data = bytearray(small_file())
    data[-1] ^= 0xFF
    expect_error(bytes(data), "CRC mismatch")


def test_random_files():
    rng = np.random.default_rng(5)
    for n in [1, 3, 4, 8, 16, 100, 1000, 10_000]:
        for _ in range(20):
            expect_error(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            # random bytes behind a valid magic and version get past the first checks
            expect_error(FDC_MAGIC + b"\x01\x00" + rng.integers(0, 256, n, dtype=np.uint8).tobytes())


# -- forged files with a correct CRC (only a deliberate or buggy writer makes these) ---------------------

def test_header_not_a_map():
    for obj in ([1, 2, 3], 5, "x", None, b"bytes", 1.5):
        expect_error(forge(obj), "invalid header", "expected a MessagePack map")
    expect_error(forge(None, raw_header=b""), "invalid header")
    expect_error(forge(None, raw_header=b"\xc1"), "invalid header")  # never-used msgpack byte
    expect_error(forge(None, raw_header=b"\x81\x00"), "invalid header")  # incomplete map
    expect_error(forge(None, raw_header=msgpack.packb({}) + b"\x00"), "invalid header")  # extra data


@pytest.mark.parametrize("key", range(16))
def test_missing_required_field(key):
    m = header_map(make_header(num_frames=0))
    del m[key]
    expect_error(forge(m), "invalid header", "missing", f"(key {key})")


@pytest.mark.parametrize("key", range(17))
@pytest.mark.parametrize("value", ["str", b"bin", 1.5, -1, True, None, [1], {"a": 1}, 2 ** 64 - 1, -(2 ** 63),
                                   float("nan"), float("inf"), 0, ""])
def test_wrong_types_and_absurd_values(key, value):
    h = make_header(num_frames=2, n_codebooks=2)
    m = header_map(h)
    if m.get(key) == value and type(m.get(key)) is type(value):
        return
    m[key] = value
    data = forge(m, pack_codes(random_codes(h), 10))
    try:
        h2, _ = decode_fdc(data)
    except FdcError as e:
        assert str(e).startswith("<bytes>: "), e
    else:  # only values that are valid for that field may pass
        valid = (key in (0, 1, 2, 3) and isinstance(value, str) and (key or value)) or \
            (key in (6, 13, 14) and value == 0 and type(value) is int) or (key == 16 and value == 1.5)
        assert valid, (key, value, h2)


def test_inconsistent_fields():
    h = make_header(num_frames=2, n_codebooks=2)
    payload = pack_codes(random_codes(h), 10)
    m = header_map(h)
    expect_error(forge({**m, 10: 11, 11: 10}), "n_codebooks = 11 is out of range [1, 10]")
    expect_error(forge({**m, 15: 7500}, payload), "nominal_bitrate 7500 does not match", "1500")
    expect_error(forge({**m, 9: 1}, payload), "codebook_size = 1 is out of range")
    expect_error(forge({**m, 0: ""}, payload), "model_name must be 1 to 256 characters")
    expect_error(forge({**m, 0: "x" * 300}, payload), "model_name")


def test_forged_huge_lengths_do_not_allocate():
    h = make_header(num_frames=2)
    for samples, channels in [(2 ** 55, 1), (10 ** 10, 65_535), (2 ** 34, 7)]:  # at 1 Hz: 75 frames a sample
        m = {**header_map(h), 4: 1, 6: samples, 12: 75 * samples, 5: channels}
        t0 = time.perf_counter()
        expect_error(forge(m, b"\x00" * 100), "payload bytes but the file holds 100")  # CRC fits: bad writer
        expect_error(forge(m, b"\x00" * 100, crc=False), "truncated file (expected",
                     "payload bytes + a 4-byte checksum after the header, got 104 bytes)")
        assert time.perf_counter() - t0 < 0.5
    m = {**header_map(h), 12: 2 ** 63}
    expect_error(forge(m), "num_frames", "out of range")


def test_header_length_beyond_file():
    data = bytearray(small_file())
    data[6:8] = struct.pack("<H", 0xFFFF)
    expect_error(bytes(data), "truncated file")


def test_extension_types_refused():
    h = make_header(num_frames=0)
    n = len(header_map(h))
    raw = msgpack.packb(header_map(h), use_bin_type=True)
    negative_ext = b"\xde" + struct.pack(">H", n + 1) + raw[3:] + b"\xa1x" + b"\xd4\xfe\x00"  # fixext1, type -2
    expect_error(forge(None, raw_header=negative_ext), "invalid header", "xtension")
    for ext in (msgpack.ExtType(5, b"abc"), msgpack.ExtType(0, b""), msgpack.Timestamp(1, 2)):
        m = header_map(h)
        m["x"] = ext
        expect_error(forge(m), "invalid header", "xtension")
        m = header_map(h)
        m["x"] = [1, {"deep": [ext]}]
        expect_error(forge(m), "invalid header", "xtension")
        m = header_map(h)
        m[0] = ext
        expect_error(forge(m), "invalid header")


def test_bad_keys_refused():
    h = make_header(num_frames=0)
    good = msgpack.packb(header_map(h), use_bin_type=True)
    # a duplicate key: re-declare key 0 (fixint) at the end of the map
    n = len(header_map(h))
    assert good[0] == 0xDE  # map16
    dup = b"\xde" + struct.pack(">H", n + 1) + good[3:] + b"\x00\xa1y"
    expect_error(forge(None, raw_header=dup), "duplicate map key")
    for key in (b"bin", 1.5, None, True):
        bad = b"\xde" + struct.pack(">H", n + 1) + good[3:] + msgpack.packb(key, use_bin_type=True) + b"\x01"
        expect_error(forge(None, raw_header=bad), "neither an integer nor a string")
    nested = msgpack.packb({**header_map(h), "x": {b"k": 1}}, use_bin_type=True)
    expect_error(forge(None, raw_header=nested), "invalid header")
    # an array as a map key is unhashable in Python
    arr_key = b"\xde" + struct.pack(">H", n + 1) + good[3:] + b"\x91\x01\x01"
    expect_error(forge(None, raw_header=arr_key), "invalid header")


def test_invalid_utf8_and_deep_nesting():
    h = make_header(num_frames=0)
    good = msgpack.packb(header_map(h), use_bin_type=True)
    bad = good.replace(b"\xabflowdec-75m", b"\xab\xff\xfeowdec-75m")
    assert bad != good
    expect_error(forge(None, raw_header=bad), "invalid header")
    n = len(header_map(h))
    deep = b"\xde" + struct.pack(">H", n + 1) + good[3:] + b"\xa1x" + b"\x91" * 5000 + b"\x01"
    expect_error(forge(None, raw_header=deep))


def test_nonzero_padding_and_out_of_range_codes():
    h = make_header(num_frames=1, n_codebooks=3)  # 30 bits: 2 padding bits
    payload = bytearray(pack_codes(np.zeros((1, 3, 1), int), 10))
    payload[-1] |= 0x01
    expect_error(forge(header_map(h), bytes(payload)), "invalid payload", "padding")
    h = make_header(num_frames=1, n_codebooks=3, codebook_size=1000)
    payload = pack_codes(np.array([[[5], [1023], [0]]]), 10)
    expect_error(forge(header_map(h), payload), "invalid payload", "code 1023 is outside the codebook")


# -- property-based ---------------------------------------------------------------------------------------

# FDC_FUZZ_EXAMPLES=5000 for a longer fuzzing run
SETTINGS = settings(max_examples=int(os.environ.get("FDC_FUZZ_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
VALID = small_file()


def _decode_only_fdc_error(data: bytes):
    try:
        return decode_fdc(data)
    except FdcError as e:
        assert str(e).startswith("<bytes>: ")
        return None


@SETTINGS
@given(st.binary(max_size=400))
def test_any_bytes_give_fdc_error(data):
    assume(data != VALID)
    assert _decode_only_fdc_error(data) is None


@SETTINGS
@given(st.binary(max_size=300), st.integers(0, 255), st.integers(0, 255))
def test_any_bytes_after_magic_give_fdc_error(rest, major, minor):
    data = FDC_MAGIC + bytes([major, minor]) + rest
    assert _decode_only_fdc_error(data) is None


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 20)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
)


@SETTINGS
@given(st.lists(_mutation, min_size=1, max_size=6))
def test_mutations_of_a_valid_file(mutations):
    data = bytearray(VALID)
    for op, pos, arg in mutations:
        pos %= len(data) + 1
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << arg
        elif op == "set" and pos < len(data):
            data[pos] = arg
        elif op == "insert":
            data[pos:pos] = bytes([arg])
        elif op == "delete":
            del data[pos:pos + arg]
        elif op == "truncate":
            del data[pos:]
    result = _decode_only_fdc_error(bytes(data))
    if result is not None:  # only an unchanged file is still valid
        assert bytes(data) == VALID


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.integers(-5, 40) | st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(st.dictionaries(st.integers(0, 20), _msgpack_values, max_size=8), st.binary(max_size=64),
       st.booleans())
def test_forged_headers_with_valid_crc(changes, payload, keep_payload):
    h = make_header(num_frames=3, n_codebooks=2)
    m = header_map(h)
    m.update(changes)
    if keep_payload:
        payload = pack_codes(random_codes(h), 10)
    result = _decode_only_fdc_error(forge(m, payload))
    if result is not None:
        h2, codes = result
        assert codes.shape == h2.codes_shape
        assert codes.size == 0 or int(codes.max()) < h2.codebook_size


# -- writing ----------------------------------------------------------------------------------------------

def test_write_rejects_bad_codes_and_headers(tmp_path):
    h = make_header(num_frames=4)
    good = random_codes(h)
    path = tmp_path / "out.fdc"
    cases = [
        (h, np.full(h.codes_shape, 1024), "outside the codebook"),
        (h, np.full(h.codes_shape, -1), "outside the codebook"),
        (h, good[:, :5], "shape"),
        (h, good.astype(float), "integers"),
        (dataclasses.replace(h, model_name=""), good, "model_name"),
        (dataclasses.replace(h, model_codebooks=8), good, "n_codebooks"),
        (dataclasses.replace(h, sample_rate=0), good, "sample_rate"),
        (dataclasses.replace(h, channels=True), good, "channels"),
        (dataclasses.replace(h, gain=float("nan")), good, "gain"),
        (dataclasses.replace(h, gain=0), good, "gain"),
        (dataclasses.replace(h, extra={0: "x"}), good, "reserved"),
        (dataclasses.replace(h, extra={"x": msgpack.ExtType(1, b"")}), good, "xtension"),
        (dataclasses.replace(h, extra={"x": {b"k": 1}}), good, "invalid header"),
        (dataclasses.replace(h, extra={"x": object()}), good, "cannot store header"),
        (dataclasses.replace(h, extra={"x": "y" * 70_000}), good, "header is"),
    ]
    for header, codes, fragment in cases:
        with pytest.raises(FdcError, match=re.escape(fragment)) as info:
            write_fdc(path, header, codes)
        assert str(info.value).startswith(str(path)), info.value
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FdcError, match="does not fit in 10 bits"):
        pack_codes(np.full((1, 1, 1), 1024), 10)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    h = make_header(num_frames=5)
    path = tmp_path / "song.fdc"
    write_fdc(path, h, random_codes(h, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.fdc"]
    before = path.read_bytes()
    mode = path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask

    # invalid data: the existing file is untouched
    with pytest.raises(FdcError):
        write_fdc(path, h, np.full(h.codes_shape, 5000))
    assert path.read_bytes() == before

    # the rename fails: the old file stays, the temporary file is removed
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(container.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_fdc(path, h, random_codes(h, 2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.fdc"]

    # writing fails half-way: same
    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(container.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_fdc(path, h, random_codes(h, 3))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.fdc"]

    # a successful overwrite replaces the content
    write_fdc(str(path), h, random_codes(h, 4))
    np.testing.assert_array_equal(read_fdc(path)[1], random_codes(h, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.fdc"]


def test_write_into_missing_folder_fails_cleanly(tmp_path):
    h = make_header(num_frames=1)
    with pytest.raises(OSError):
        write_fdc(tmp_path / "missing" / "x.fdc", h, random_codes(h))
    assert list(tmp_path.iterdir()) == []


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FdcError, match=r"nope\.fdc: cannot read"):
        read_fdc(tmp_path / "nope.fdc")
    with pytest.raises(FdcError, match="cannot read"):
        read_fdc(tmp_path)
    p = tmp_path / "song.fdc"
    h = make_header()
    write_fdc(p, h, random_codes(h))
    p.write_bytes(p.read_bytes()[:12 + header_size(h) + 4000])
    with pytest.raises(FdcError) as info:
        read_fdc(p)
    assert str(info.value) == (f"{p}: truncated file (expected 9375 payload bytes + a 4-byte checksum after the "
                               "header, got 4004 bytes)")
    p.write_bytes(b"")
    with pytest.raises(FdcError, match=f"^{re.escape(str(p))}: empty file"):
        read_fdc(p)


def test_each_reader_names_what_it_takes_when_given_the_other_kind(tmp_path):
    """read_fdc(bytes) failed as "embedded null byte", decode_fdc(Path) parsed the path's name as the file
    ("bad magic"), decode_fdc(str) as "string argument without an encoding"."""
    p = tmp_path / "song.fdc"
    h = make_header(num_frames=3)
    write_fdc(p, h, random_codes(h))
    data = p.read_bytes()
    for reader in (read_fdc, inspect_fdc):
        with pytest.raises(FdcError, match=rf"{reader.__name__} takes the path of a \.fdc file; for its bytes use "
                                           "decode_fdc"):
            reader(data)
        with open(p, "rb") as f, pytest.raises(FdcError, match="for an open stream use inspect_fdc_stream"):
            reader(f)
        with pytest.raises(FdcError, match=r"takes the path of a \.fdc file, got int"):
            reader(5)
    for path in (p, str(p)):
        with pytest.raises(FdcError, match=r"decode_fdc takes the bytes of a \.fdc file, got .*; for a path use "):
            decode_fdc(path)
    assert decode_fdc(memoryview(data))[0].num_frames == read_fdc(p)[0].num_frames == 3


def test_a_header_nests_at_most_32_levels():
    """msgpack itself allows 1,023 levels; showing such a header (``flowdec info``, repr, JSON) recursed
    past Python's limit. 32 levels read (the header map is the first), 33 are refused by name."""
    h = make_header(num_frames=0)

    def nested(levels: int) -> dict:  # the header map and levels - 1 containers inside it
        value: object = 1
        for i in range(levels - 1):
            value = [value] if i % 2 else {"k": value}
        return {**header_map(h), "deep": value}

    assert decode_fdc(forge(nested(32)))[0].extra["deep"]
    expect_error(forge(nested(33)), "invalid header: nested deeper than 32 levels")


def test_a_header_nested_too_deep_says_so():
    """msgpack's StackError has no message: the cause read "(StackError: )"."""
    from flowdec_cli.container import _parse_header

    with pytest.raises(FdcError, match=r"not a valid MessagePack map \(nested too deep\)$"):
        _parse_header(b"\x91" * 5000 + b"\xc0", "deep.fdc")
