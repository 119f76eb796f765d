"""Long inputs: chunk planning, exactness of the chunk machinery, agreement with whole-file runs, seams."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from flowdec_cli.longaudio import _NoiseStream, auto_batch_size, enhance_long, plan_chunks
from flowdec_cli.postfilter import Postfilter
from flowdec_cli.sampler import solve

from .conftest import PassCounter

SR = 48000
HOP = 384


def _stationary(seconds: float, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Tones plus a little noise: stationary, so per-chunk GroupNorm statistics match the whole file's."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    rows = [0.3 * np.sin(2 * np.pi * 220 * (1 + 0.2 * c) * t) + 0.2 * np.sin(2 * np.pi * 1375.5 * t + 0.3)
            + 0.1 * np.sin(2 * np.pi * 7040 * t) + 0.02 * rng.standard_normal(len(t)) for c in range(channels)]
    return torch.from_numpy(np.stack(rows).astype(np.float32))[:, None]


def _tiny(scale: float = 1.0) -> Postfilter:
    torch.manual_seed(0)
    model = Postfilter(nf=4, ch_mult=(1, 1, 1, 1))
    with torch.no_grad():
        model.backbone.output_layer.weight.mul_(scale)
    return model


def _local_field(model: Postfilter) -> Postfilter:
    """Replace the network by a field that acts on each frame alone: chunking then changes nothing."""
    model._field = lambda x, Y, t: 0.8 * (Y - x) + (0.3 * t) * Y  # type: ignore[method-assign]
    return model


def _global_noise(batch: int, frames: int, seed: int = 1) -> torch.Tensor:
    return torch.randn((batch, 1, 768, -(-frames // 64) * 64), dtype=torch.complex64,
                       generator=torch.Generator().manual_seed(seed))


# -- planning -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [SR * 2, SR * 2 + 1, 123_457, SR * 60 + 17, 64 * HOP, 64 * HOP + HOP])
@pytest.mark.parametrize("chunk, overlap", [(64, 20), (128, 16), (1280, 125)])
def test_plan_invariants(length, chunk, overlap):
    plan = plan_chunks(length, chunk, overlap)
    frames = 1 + length // HOP
    if frames <= chunk:
        assert plan.whole and plan.starts == (0,) and plan.ends == (length,)
        return
    starts, n = plan.starts, plan.chunk_frames
    count = math.ceil((frames - overlap) / (chunk - overlap))
    assert len(starts) == count  # no more chunks than full-size ones would need
    assert n % 8 == 0 and 3 * overlap + 2 <= n <= chunk
    # shrunk as far as it goes: 8 frames less and that many chunks could not keep the overlap
    assert n == max(3 * overlap + 2, 3 * overlap + 2 + (-(3 * overlap + 2)) % 8) or \
        count * (n - 8) < frames + (count - 1) * overlap
    assert starts[0] == 0 and starts[-1] == frames - n  # equal chunks, the last ends the file
    assert all(b - a <= n - overlap for a, b in pairwise(starts))  # overlap >= requested
    assert plan.ends[-1] == length
    assert plan.fade_length == (overlap - 1) * HOP
    for k, f in enumerate(plan.fades):
        assert starts[k + 1] * HOP <= f and f + plan.fade_length <= plan.ends[k]  # inside both chunks
    assert all(b >= a + plan.fade_length for a, b in zip(plan.fades, plan.fades[1:]))


def test_plan_shrinks_chunks_to_what_the_chunk_count_needs():
    # 10 s in CPU-sized chunks (5.12 s, 1 s overlap): three chunks are needed either way, but 504 frames
    # each cover the file: 1,512 frames per network pass instead of 1,920.
    plan = plan_chunks(SR * 10, 640, 125)
    assert len(plan.starts) == 3 and plan.chunk_frames == 504
    assert plan.starts == (0, 374, 747) and plan.total_frames == 1251
    # a plan whose chunks are already as small as the count allows is left alone
    assert plan_chunks(SR * 3, 64, 20).chunk_frames == 64


def test_plan_rejects_bad_overlaps():
    with pytest.raises(ValueError, match="overlap"):
        plan_chunks(SR * 10, 64, 30)
    with pytest.raises(ValueError, match="overlap"):
        plan_chunks(SR * 10, 64, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        plan_chunks(SR * 10, 60, 10)


def test_noise_stream_depends_on_frames_not_on_chunking():
    whole = _NoiseStream(2, 768, torch.Generator().manual_seed(4), torch.device("cpu")).get(0, 300)
    assert torch.equal(whole[..., :64],
                       torch.randn((2, 1, 768, 64), dtype=torch.complex64,
                                   generator=torch.Generator().manual_seed(4)))
    stream = _NoiseStream(2, 768, torch.Generator().manual_seed(4), torch.device("cpu"))
    for a, b in [(0, 64), (40, 104), (70, 134), (120, 300)]:
        assert torch.equal(stream.get(a, b), whole[..., a:b])
    assert min(stream.blocks) >= 120 // 64  # blocks behind the chunks are freed


# -- short inputs go through enhance unchanged ------------------------------------------------------------


def test_short_input_is_bit_identical_to_enhance():
    model = _tiny()
    y = _stationary(0.9, channels=2)
    a = model.enhance(y, 2, "euler", generator=torch.Generator().manual_seed(9))
    b = enhance_long(model, y, nfe=2, solver="euler", seed=9, chunk_seconds=1.0)
    assert torch.equal(a, b)
    noise = _global_noise(2, 1 + y.shape[-1] // HOP)
    assert torch.equal(model.enhance(y, 2, "euler", noise=noise),
                       enhance_long(model, y, nfe=2, solver="euler", noise=noise, chunk_seconds=1.0))
    assert torch.equal(enhance_long(model, y[0, 0], nfe=0), y[0, 0])


@pytest.mark.parametrize("kwargs, why", [
    ({"seed": 1.5}, "a seed must be a whole number"),  # ran with seed 1's noise
    ({"seed": -1}, "a seed must be a whole number"),  # ran with 2**64-1's
    ({"chunk_seconds": 0}, "chunk_seconds must be a positive number"),  # ran
    ({"chunk_seconds": float("nan")}, "chunk_seconds must be a positive number"),
    ({"overlap_seconds": float("nan")}, "overlap_seconds must be a positive number"),
    ({"normfac": 0.0}, "normfac must be positive"),  # gave all-NaN audio
    ({"out": np.zeros((2, 1, 100), np.int16)}, "out must be shaped like the input"),
    ({"out": "int16"}, "out must hold floats"),  # was filled with zeros
    ({"out": "read-only"}, "out is read-only"),
])
def test_arguments_that_ran_into_wrong_audio_are_refused(kwargs, why):
    y = _stationary(0.3, channels=2)
    if isinstance(kwargs.get("out"), str):
        out = np.zeros(tuple(y.shape), np.int16 if kwargs["out"] == "int16" else np.float32)
        out.flags.writeable = kwargs["out"] != "read-only"
        kwargs = {"out": out}
    with pytest.raises(ValueError, match=why):
        enhance_long(_tiny(), y.numpy(), nfe=2, **kwargs)


# -- the chunk machinery is exact for a frame-local field -------------------------------------------------


def test_chunking_is_exact_for_a_frame_local_field():
    """Features on the global frame grid, the global noise slice, the iSTFT spans and the complementary
    fades: with a field that has no receptive field across frames, chunked output equals whole output."""
    model = _local_field(_tiny())
    y = _stationary(3.0, channels=2) * torch.tensor([1.0, 0.5])[:, None, None]
    frames = 1 + y.shape[-1] // HOP
    noise = _global_noise(2, frames)
    whole = model.enhance(y, 4, "midpoint", noise=noise)
    for chunk_s, overlap_s, batch in [(0.512, 0.16, 1), (1.0, 0.3, 3), (0.6, 0.05, 2)]:
        chunked = enhance_long(model, y, nfe=4, solver="midpoint", noise=noise, chunk_seconds=chunk_s,
                               overlap_seconds=overlap_s, batch_size=batch)
        err = (chunked - whole).abs().max().item()
        assert err < 2e-5 * whole.abs().max().item(), (chunk_s, overlap_s, err)


def test_memmap_source_out_and_bounded_reads(tmp_path):
    model = _local_field(_tiny())
    y = _stationary(2.5, channels=2)[:, 0].numpy()  # [C, L], the pipeline's layout
    src = np.memmap(tmp_path / "in.f32", dtype=np.float32, mode="w+", shape=y.shape)
    src[:] = y
    out = np.memmap(tmp_path / "out.f32", dtype=np.float32, mode="w+", shape=y.shape)
    reads = []

    class Recording:
        shape = y.shape

        def __getitem__(self, index):
            reads.append(index[-1].stop - index[-1].start)
            return src[index]

    got = enhance_long(model, Recording(), out, nfe=2, solver="euler", seed=3, chunk_seconds=0.512,
                       overlap_seconds=0.16)
    assert got is out
    ref = enhance_long(model, torch.from_numpy(y), nfe=2, solver="euler", seed=3, chunk_seconds=0.512,
                       overlap_seconds=0.16)
    assert ref.shape == y.shape and np.array_equal(np.asarray(out), ref.numpy())
    chunk_span = (64 - 1) * HOP + 1534
    assert max(reads[1:]) <= chunk_span  # after the peak pass (1 MiB blocks), reads are chunk-sized
    blocks = []
    enhance_long(model, torch.from_numpy(y), nfe=2, solver="euler", seed=3, chunk_seconds=0.512,
                 overlap_seconds=0.16, sink=lambda start, block: blocks.append((start, block)))
    assert blocks[0][0] == 0
    assert all(s2 == s1 + b1.shape[-1] for (s1, b1), (s2, _) in pairwise(blocks))  # in order
    assert max(b.shape[-1] for _, b in blocks) <= 64 * HOP
    assert np.array_equal(torch.cat([b for _, b in blocks], -1)[:, 0].numpy(), ref.numpy())


def test_progress_counts_network_passes():
    model = _local_field(_tiny())
    progress = PassCounter()
    y = _stationary(2.0)
    plan = plan_chunks(y.shape[-1], 64, 20)
    enhance_long(model, y, nfe=6, seed=0, chunk_seconds=0.512, overlap_seconds=0.16, batch_size=2,
                 progress=progress)
    assert progress.totals == [(6 * len(plan.starts), "pass")] and sum(progress.updates) == 6 * len(plan.starts)


def test_on_a_cpu_the_network_sees_one_row_at_a_time_and_gives_what_a_batch_gives():
    """Channels (and CPU chunks) went through each pass together, so the memory of a multichannel decode grew
    with its channel count (8 channels at the default NFE: 3.6 GB, one 1.2 GB)."""
    torch.manual_seed(0)
    model = Postfilter(backbone="framewise", framewise={"dim": 16, "intermediate_dim": 32, "num_blocks": 2},
                       pad_multiple=8)
    y = _stationary(0.4, channels=3)
    field, rows = model._field, []

    def counting(x, Y, t):
        rows.append(x.shape[0])
        return field(x, Y, t)

    progress = PassCounter()
    model._field = counting  # type: ignore[method-assign]
    model.enhance(y, nfe=2, noise=_global_noise(3, 51)[..., :56], progress=progress)
    assert set(rows) == {1} and len(rows) == 3 * 2
    assert progress.totals == [(3 * 2, "pass")] and progress.updates == [1] * 6  # it moves with each row
    model._field = field  # type: ignore[method-assign]
    Y = model.feature_extractor(y)[0]
    x0 = model.start(Y, _global_noise(3, Y.shape[-1])[..., :Y.shape[-1]])
    with torch.inference_mode():
        with model._solving(Y):
            together = solve(lambda t, s: model._field(s, Y, t), x0, 2, "midpoint")
        one_by_one = model.solve_rows(Y, x0, 2, "midpoint")
    torch.testing.assert_close(one_by_one, together, rtol=1e-3, atol=1e-3)  # float rounding of other kernels


# -- with the real network: close to whole-file output, seams cost little -----------------------------------


def _lsd_per_frame(a: torch.Tensor, b: torch.Tensor, n_fft: int = 1024, hop: int = 256) -> torch.Tensor:
    """Log-spectral distance (dB) per STFT frame."""
    win = torch.hann_window(n_fft)
    spec = [20 * torch.stft(x, n_fft, hop, window=win, return_complex=True).abs().clamp_min(1e-5).log10()
            for x in (a, b)]
    return (spec[0] - spec[1]).pow(2).mean(0).sqrt()


def test_chunked_network_output_agrees_and_seams_are_cheap(capsys):
    model = _tiny(scale=0.2)
    y = _stationary(3.0)
    length = y.shape[-1]
    frames = 1 + length // HOP
    noise = _global_noise(1, frames, seed=1)
    whole = model.enhance(y, 2, "euler", noise=noise)
    redraw = model.enhance(y, 2, "euler", noise=_global_noise(1, frames, seed=2))
    chunked = enhance_long(model, y, nfe=2, solver="euler", noise=noise, chunk_seconds=0.512,
                           overlap_seconds=0.16, batch_size=3)
    plan = plan_chunks(length, 64, 20)
    assert len(plan.starts) >= 5

    # Away from the seams: the chunked run differs from the whole-file run only through GroupNorm
    # statistics and the missing context at chunk edges, far less than a different noise draw changes it.
    away = torch.ones(length, dtype=torch.bool)
    for f in plan.fades:
        away[max(0, f - 1536): f + plan.fade_length + 1536] = False

    def rel(diff):
        return (diff[0, 0][away].pow(2).mean() / whole[0, 0][away].pow(2).mean()).sqrt().item()

    chunk_err, noise_spread = rel(chunked - whole), rel(redraw - whole)
    assert chunk_err < 0.2 * noise_spread

    # Seam cost: log-spectral distance to the whole-file output in frames at the seams vs elsewhere.
    lsd = _lsd_per_frame(chunked[0, 0], whole[0, 0])
    centres = torch.arange(lsd.shape[0]) * 256
    at_seam = torch.zeros_like(lsd, dtype=torch.bool)
    for f in plan.fades:
        at_seam |= (centres >= f) & (centres < f + plan.fade_length)
    seam_lsd, other_lsd = lsd[at_seam].mean().item(), lsd[~at_seam].mean().item()
    with capsys.disabled():
        print(f"\n[seam cost] chunk 0.512 s, overlap 0.16 s, {len(plan.starts)} chunks: rel. rms diff vs whole "
              f"{chunk_err:.4f} (noise redraw {noise_spread:.3f}); LSD vs whole at seams {seam_lsd:.3f} dB, "
              f"elsewhere {other_lsd:.3f} dB")
    assert seam_lsd < 2.0 * other_lsd + 0.05


def test_cpu_batch_default_and_activation_estimate():
    model = _tiny()
    assert auto_batch_size(model, 640, 5) == 1  # CPU: batching gains nothing
    assert model.activation_bytes(128) > model.activation_bytes(64) > 0


@pytest.mark.gpu
def test_cuda_long_path_in_bfloat16():
    model = _tiny()
    model.to("cuda").configure(precision="bfloat16")
    y = _stationary(3.0, channels=2)
    out = enhance_long(model, y.cuda(), nfe=2, solver="euler", seed=0, chunk_seconds=0.512, overlap_seconds=0.16)
    assert out.device.type == "cuda" and out.shape == y.shape and torch.isfinite(out).all()
