"""NDAC against the official DAC 1.0.0 fixtures, and the chunked forms against the whole-file ones."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from flowdec_cli.checkpoints import CheckpointError, load_dac_weights
from flowdec_cli.models import ModelError, load_ndac
from flowdec_cli.ndac import NDAC, NDACConfig

from .conftest import make_tiny_ndac

FIXTURES = ["ndac75_small", "ndac25_small"]


@pytest.fixture(params=FIXTURES)
def fixture(request, reference_dir):
    folder = reference_dir / request.param
    io = np.load(folder / "io.npz")
    meta = json.loads((folder / "meta.json").read_text())
    return folder, io, meta


def test_codes_and_waveforms_match_official(fixture):
    folder, io, meta = fixture
    model = load_ndac(folder / "weights.pth")
    assert model.hop_length == meta["hop_length"]
    assert model.n_codebooks == meta["constructor_kwargs"]["n_codebooks"]
    assert model.codebook_size == 1024 and model.sample_rate == 48000
    audio = torch.from_numpy(io["audio_in"])
    assert np.array_equal(model.pad_to_hop(audio).numpy(), io["audio_padded"])
    codes = model.encode(audio)
    assert codes.dtype == torch.int64
    np.testing.assert_array_equal(codes.numpy(), io["codes_all"])
    low = model.encode(audio, n_codebooks=meta["n_low"])
    np.testing.assert_array_equal(low.numpy(), io["codes_low"])
    with torch.inference_mode():
        latent = model.encoder(model.pad_to_hop(audio))
        np.testing.assert_allclose(latent.numpy(), io["latent_encoder_out"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(model.quantizer.from_codes(codes).numpy(), io["z_from_codes_all"], atol=2e-5,
                                   rtol=0)
    decoded = model.decode(codes)
    assert decoded.shape[-1] == meta["len_decoded"] == model.decoded_length(meta["n_frames"])
    np.testing.assert_allclose(decoded.numpy(), io["decoded_all"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.decode(low).numpy(), io["decoded_low"], atol=1e-5, rtol=0)


def test_unfolded_training_graph_matches_official(fixture):
    """The quantizer's training-mode outputs (z, latents) agree with DAC's encode() in eval mode."""
    folder, io, _ = fixture
    state, kwargs = load_dac_weights(folder / "weights.pth")
    model = NDAC(NDACConfig.from_kwargs(kwargs))
    model.load_official_state_dict(state)
    model.eval()
    with torch.no_grad():
        z = model.encoder(torch.from_numpy(io["audio_padded"]))
        z_q, codes, latents, _, _ = model.quantizer(z)
    np.testing.assert_array_equal(codes.numpy(), io["codes_all"])
    np.testing.assert_allclose(z_q.numpy(), io["z_encode_all"], atol=2e-5, rtol=0)
    np.testing.assert_allclose(latents.numpy(), io["latents_all"], atol=2e-5, rtol=0)


def test_folding_weight_norm_is_exact(reference_dir):
    state, kwargs = load_dac_weights(reference_dir / "ndac75_small" / "weights.pth")
    plain = NDAC(NDACConfig.from_kwargs(kwargs))
    plain.load_official_state_dict(state)
    plain.eval()
    folded = load_ndac(reference_dir / "ndac75_small" / "weights.pth")
    audio = torch.from_numpy(np.load(reference_dir / "ndac75_small" / "io.npz")["audio_in"])
    codes = plain.encode(audio)
    assert torch.equal(codes, folded.encode(audio))
    assert torch.equal(plain.decode(codes), folded.decode(codes))


def test_strict_load_names_every_bad_key(reference_dir):
    state, kwargs = load_dac_weights(reference_dir / "ndac75_small" / "weights.pth")
    state = dict(state)
    state.pop("encoder.block.0.weight_g")
    state["encoder.extra"] = torch.zeros(1)
    model = NDAC(NDACConfig.from_kwargs({**kwargs, "latent_dim": 32}))
    with pytest.raises(ValueError) as err:
        model.load_official_state_dict(state, source="w.pth")
    msg = str(err.value)
    assert "encoder.block.0.weight_g" in msg and "encoder.extra" in msg and "shape of" in msg
    assert "more" in msg and len(msg) < 1500  # a file of another size is named in one readable line


def test_a_decoy_pickle_or_a_stride_0_weight_cannot_make_us_allocate_either(tmp_path):
    """A second data.pkl placed first was scanned in the place of the one torch loads (531 bytes allocated
    1 GiB); a stride-0 weight of 4 stored bytes stood for 2**28 values (a 2 KB file took 2 GB to check)."""
    import pickle
    import zipfile

    decoy = tmp_path / "decoy.pth"
    with zipfile.ZipFile(decoy, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/decoy/data.pkl", pickle.dumps({"state_dict": {}}, protocol=2))
        z.writestr("archive/data.pkl", b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x40\x85R.")
        z.writestr("archive/version", b"3\n")
        z.writestr("archive/byteorder", b"little")
    with pytest.raises(CheckpointError, match="holds 2 pickles"):
        load_dac_weights(decoy)
    wide = tmp_path / "wide.pth"
    torch.save({"state_dict": {"w": torch.zeros(1).expand(1 << 20)}, "metadata": {"kwargs": {}}}, wide)
    with pytest.raises(CheckpointError, match="weight w claims 1,048,576 values over 1 stored"):
        load_dac_weights(wide)
    sparse = tmp_path / "sparse.pth"
    torch.save({"state_dict": {"s": torch.eye(3).to_sparse()}, "metadata": {"kwargs": {}}}, sparse)
    with pytest.raises(CheckpointError, match=r"weight s is a torch\.sparse_coo tensor"):
        load_dac_weights(sparse)
    shared = torch.arange(6.0)  # views of one storage, each within it: what real state dicts hold
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": {"a": shared[:3], "b": shared[3:]}, "metadata": {"kwargs": {}}}, plain)
    assert load_dac_weights(plain)[0]["b"].tolist() == [3.0, 4.0, 5.0]


def test_a_pickle_cannot_make_us_allocate_what_it_does_not_hold(tmp_path):
    """``bytearray(n)`` is allowed by torch's weights_only loader: a 400-byte file asked for 3 GB. Both our
    loaders refuse it before anything is allocated."""
    import builtins
    import io
    import pickle

    from flowdec_cli.checkpoints import _RestrictedUnpickler

    class Bomb:
        def __reduce__(self):
            return (builtins.bytearray, (3_000_000_000,))

    evil = tmp_path / "weights.pth"
    torch.save({"state_dict": {}, "metadata": {"kwargs": {}}, "x": Bomb()}, evil)
    with pytest.raises(CheckpointError, match="asks for bytes or bytearray"):
        load_dac_weights(evil)
    with pytest.raises(pickle.UnpicklingError, match="allocates memory the file does not hold"):
        _RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": Bomb()}, protocol=4))).load()
    # protocol 2 names it __builtin__.bytearray, which is not on the allowlist: an inert stub, nothing built
    stub = _RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": Bomb()}, protocol=2))).load()["a"]
    assert not isinstance(stub, bytearray | bytes)
    data = pickle.dumps({"a": bytearray(b"abc"), "b": b"xy"}, protocol=4)  # built from data: fine
    assert _RestrictedUnpickler(io.BytesIO(data)).load() == {"a": bytearray(b"abc"), "b": b"xy"}


def test_a_pickle_too_large_to_scan_is_refused(tmp_path, monkeypatch):
    """The scan for ``bytearray`` read pickles up to 64 MB and let a larger one through unscanned, padding
    and all, to torch's loader, which allows ``bytearray(n)``."""
    import flowdec_cli.checkpoints as ck

    evil = tmp_path / "weights.pth"
    torch.save({"state_dict": {}, "metadata": {"kwargs": {}, "pad": "A" * 4096}}, evil)
    monkeypatch.setattr(ck, "_MAX_PICKLE_BYTES", 1024)  # the real limit, without writing 64 MB
    with pytest.raises(CheckpointError, match=r"weights.pth: refused: its pickle is .* MB"):
        load_dac_weights(evil)


def test_the_lightning_unpickler_calls_no_str_on_shared_structures():
    """``str`` of a list holding itself twice at every level (through the memo) doubles its work per level:
    a 1.5 KB pickle could run for ever. ``str``, ``int``, ``float`` and ``complex`` are stubs now."""
    import builtins
    import io
    import pickle

    from flowdec_cli.checkpoints import _RestrictedUnpickler

    nested: list = [0]
    for _ in range(22):  # about 2 s and 150 MB when str was called
        nested = [nested, nested]

    class AsText:
        def __reduce__(self):
            return (builtins.str, (nested,))

    data = pickle.dumps({"hparams": AsText()}, protocol=4)
    assert len(data) < 4096
    loaded = _RestrictedUnpickler(io.BytesIO(data)).load()["hparams"]
    assert not isinstance(loaded, str)


def test_weights_file_is_never_unpickled_unsafely(tmp_path):
    evil = tmp_path / "weights.pth"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {}, "metadata": {"kwargs": {}}, "x": Boom()}, evil)
    with pytest.raises(CheckpointError, match="refused: not plain NDAC weights") as err:
        load_dac_weights(evil)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match=re.escape("junk.pth")):
        load_ndac(tmp_path / "junk.pth")


def test_lengths_follow_dac_1_0_0():
    model = make_tiny_ndac(encoder_rates=(2, 4, 5, 6, 8))
    assert model.hop_length == 1920
    for frames in (1, 3, 10):
        codes = torch.zeros(1, 2, frames, dtype=torch.long)
        assert model.decode(codes).shape[-1] == model.decoded_length(frames) == frames * 1920 - 8


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_encode_equals_whole(chunk):
    model = make_tiny_ndac().eval().fold_weight_norm()
    audio = torch.randn(2, 1, 640 * 40 + 123, generator=torch.Generator().manual_seed(3)) * 0.3
    whole = model.encode(audio)
    assert torch.equal(model.encode_chunked(audio, chunk_frames=chunk), whole)
    blocks = [audio[..., i:i + 999] for i in range(0, audio.shape[-1], 999)]
    assert torch.equal(torch.cat(list(model.encode_stream(blocks, chunk_frames=chunk)), -1), whole)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_decode_matches_whole(chunk):
    model = make_tiny_ndac().eval().fold_weight_norm()
    codes = torch.randint(0, 1024, (2, 10, 50), generator=torch.Generator().manual_seed(4))
    whole = model.decode(codes)
    chunked = model.decode_chunked(codes, chunk_frames=chunk)
    assert chunked.shape == whole.shape
    assert (chunked - whole).abs().max().item() < 1e-5  # float rounding only


def test_chunked_forms_put_a_few_channels_through_at_a_time(monkeypatch):
    """Working memory must not grow with the channel count a file declares: the chunked forms run at most
    ITEMS_AT_ONCE channels through the network together, with the same results."""
    from flowdec_cli import ndac as ndac_module

    monkeypatch.setattr(ndac_module, "ITEMS_AT_ONCE", 2)
    model = make_tiny_ndac().eval().fold_weight_norm()
    seen: list[int] = []
    for part in (model.encoder, model.decoder):
        part.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    audio = torch.randn(5, 1, 640 * 12 + 7, generator=torch.Generator().manual_seed(5)) * 0.3
    codes = torch.cat(list(model.encode_stream([audio], chunk_frames=4)), -1)
    decoded = model.decode_chunked(codes, chunk_frames=4)
    assert seen and max(seen) == 2
    for i in range(5):
        assert torch.equal(codes[i:i + 1], model.encode(audio[i:i + 1]))
        assert (decoded[i:i + 1] - model.decode(codes[i:i + 1])).abs().max().item() < 1e-5


def test_bad_requests():
    model = make_tiny_ndac().eval()
    with pytest.raises(ValueError, match="between 1 and 10"):
        model.encode(torch.zeros(1, 1, 640), n_codebooks=11)
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        model.decode(torch.full((1, 2, 3), 1024))
    with pytest.raises(ValueError, match="different products"):
        NDACConfig(encoder_rates=[2, 4], decoder_rates=[4, 4])
    for rates in ("abc", [4, "a"], 5, [True, 2]):  # a config file's mistakes, named by field
        with pytest.raises(ValueError, match=r"encoder_rates must be a list of whole numbers"):
            NDACConfig(encoder_rates=rates, decoder_rates=[4, 4])
    # whole numbers as numpy or JSON hands them over still count, as they did before rates were checked
    assert NDACConfig(encoder_rates=[np.int64(4), 4.0], decoder_rates=[4, 4]).encoder_rates == [4, 4]


def test_fresh_model_spreads_over_its_codebooks():
    """A newly built NDAC must not start collapsed: with std-0.02 conv init (what DAC's init_weights means to
    do, but never does under weight norm) every frame landed on one or two codes and training could not
    recover. Torch's default init, which released DAC models trained from, spreads them."""
    from .conftest import tone

    torch.manual_seed(0)
    model = NDAC(NDACConfig(encoder_dim=8, encoder_rates=[4, 4, 5, 8], latent_dim=64, decoder_dim=96,
                            decoder_rates=[8, 5, 4, 4], n_codebooks=4, codebook_size=1024, sample_rate=48000)).eval()
    audio = torch.from_numpy(tone(2.0, 48000)[:, 0])[None, None]
    codes = model.encode(audio)
    assert all(len(torch.unique(codes[0, i])) > 30 for i in range(4))


def test_stage_calls_refuse_what_they_coded_wrongly_or_failed_on_deep_inside():
    """NaN audio was coded as all-zero codes, n_codebooks=2.9 as 2 and True as 1; float64 audio, numpy
    arrays, float codes and empty inputs failed inside torch; bitrate(11) of a 10-codebook codec answered."""
    from .test_training_helpers import TINY_NDAC_MODEL

    model = NDAC(NDACConfig(**TINY_NDAC_MODEL)).eval()
    audio = torch.randn(1, 1, 1280) * 0.1
    codes = model.encode(audio)
    assert torch.equal(model.encode(audio.double()), codes)  # cast, as the docstring says
    for bad, why in ((audio * float("nan"), "NaN or infinite"), (audio.numpy(), "must be a torch tensor"),
                     ((audio * 1000).short(), "float samples"), (audio[..., :0], "no samples"),
                     (torch.tensor(0.5), "must be shaped")):
        with pytest.raises(ValueError, match=why):
            model.encode(bad)
        with pytest.raises(ValueError, match=why):
            model.code_margins(bad)
    for k in (2.9, True):
        with pytest.raises(ValueError, match="n_codebooks must be an int"):
            model.encode(audio, k)
    for bad, why in ((codes.float(), "integer torch tensor"), (codes.numpy(), "integer torch tensor"),
                     (codes[..., :0], "no frames")):
        with pytest.raises(ValueError, match=why):
            model.decode(bad)
    for k in (0, 4, -3):
        with pytest.raises(ValueError, match="n_codebooks must be between 1 and 3"):
            model.bitrate(k)
    assert model.bitrate(3) == 3 * model.bitrate(1)


@pytest.mark.parametrize("training", [False, True])
def test_each_item_at_its_own_codebook_count_equals_coding_it_alone(training):
    """``n_quantizers_per_item``: the trainer's dropout counts drawn for a batch split over processes, and
    experiments that code each item at its own rate; item i is coded as if alone at its count."""
    torch.manual_seed(0)
    model = make_tiny_ndac()
    quantizer = model.quantizer.train(training)
    z = torch.randn(3, model.config.latent_dim, 7)
    counts = torch.tensor([1, 3, 2])
    z_q = quantizer(z, n_quantizers_per_item=counts)[0]
    quantizer.eval()
    for i, k in enumerate(counts.tolist()):
        alone = quantizer(z[i:i + 1], n_quantizers=k)[0]
        assert torch.allclose(z_q[i:i + 1], alone, atol=1e-6), i
