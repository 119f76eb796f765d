"""Speed and memory of the flow postfilter at the official size (nf 64, 23.7 M parameters, random weights).

Each run times the straightforward way (float32, eager, NCHW, one whole file: ``Postfilter.enhance`` with
default settings) beside the optimised one, in the same process, on the same input and start noise, and
prints the largest output difference between the two:

* time per network pass per second of audio (passes interleaved, best and median of ``--passes``);
* real-time factor of a whole enhance at ``--nfe`` (default 6 = midpoint, 3 steps);
* peak memory during the enhance (CPU: peak RSS above the level before the call, sampled every 5 ms;
  CUDA: ``torch.cuda.max_memory_allocated``);
* optionally (``--chunked``) the long-audio path ``longaudio.enhance_long`` with batched chunks;
* optionally (``--breakdown``) how much of a pass is convolution, at what rate, next to the rate of one
  large 3x3 convolution alone: the roofline that bounds any float32 speed-up on this machine;
* optionally (``--profile N``) the N ops that take most device time in one optimised pass, and how much of
  the pass's wall time the device was busy at all (on CUDA: whether a pass is launch-bound, which CUDA
  graphs would fix, or kernel-bound, which they would not).

Optimised settings: CPU = channels-last + fused block tails + ``tune_cpu_allocator`` (glibc keeps large
blocks instead of unmapping and page-faulting them again), float32: the same math, differences are float
rounding; CUDA = bfloat16 + channels-last + fused tails (+ ``--compile``), whose accuracy cost is the
printed difference. ``--fast-precision`` / ``--no-channels-last`` / ``--no-fuse`` change them.

    python benchmarks/postfilter.py                           # CPU, 1 s of audio
    python benchmarks/postfilter.py --device cuda --duration 10 --chunked --compile
    python benchmarks/postfilter.py --device cuda --duration 10 --compile --compile-mode reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowdec_cli.longaudio import enhance_long
from flowdec_cli.postfilter import Postfilter, tune_cpu_allocator
from flowdec_cli.sampler import draw_noise, start_point

SR = 48000


def test_signal(seconds: float) -> torch.Tensor:
    """Tones, a chirp and a little noise at a codec-like level: [1, 1, L] float32."""
    rng = np.random.default_rng(0)
    t = np.arange(int(round(seconds * SR))) / SR
    x = 0.25 * np.sin(2 * np.pi * 180 * t) + 0.15 * np.sin(2 * np.pi * 950 * t) + 0.08 * np.sin(2 * np.pi * 3300 * t)
    x += 0.1 * np.sin(2 * np.pi * (60 * t + 0.5 * (20000 - 60) / max(seconds, 1e-9) * t ** 2))
    x += 0.02 * rng.standard_normal(len(t))
    return torch.from_numpy(x.astype(np.float32))[None, None]


def recipe_weights(model: Postfilter, seed: int = 0) -> None:
    """The weights of the ``flowdec_full_forward`` reference fixture, for any size: per-key generators,
    0.02 * randn (GroupNorm weights 1 + 0.02 * randn), Fourier W = 16 * randn. Realistic scales matter:
    PyTorch's default init makes a 35-module U-Net's outputs (and rounding differences) much larger."""
    state = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if not key.startswith("backbone."):
                continue
            if key == "backbone.all_modules.0.W":
                value.copy_(torch.randn(value.shape, generator=torch.Generator().manual_seed(seed)) * 16)
                continue
            r = torch.randn(value.shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode()) + seed))
            is_gn_weight = key.endswith(".weight") and ("GroupNorm" in key or value.dim() == 1)
            value.copy_(1 + 0.02 * r if is_gn_weight else 0.02 * r)


class PeakMemory:
    """Peak memory above the starting level while the block runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2 ** 20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mb = (self._peak - self._base) / 2 ** 20


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


class ConvolutionTimer:
    """Wall time and FLOPs of every convolution run inside the block (CPU: ops are synchronous).

    Wraps ``torch.nn.functional.conv2d`` / ``conv_transpose2d``, which nn.Conv2d and the FIR resamplers
    call; a TorchDispatchMode would see the same ops but slows the eager NCHW path by about half."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.flops = 0

    def _wrap(self, fn: Callable[..., torch.Tensor], transposed: bool) -> Callable[..., torch.Tensor]:
        def timed_conv(x: torch.Tensor, w: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            start = time.perf_counter()
            out = fn(x, w, *args, **kwargs)
            self.seconds += time.perf_counter() - start
            # multiply-adds: per output value (in/groups x kh x kw), or per input value when transposed
            self.flops += 2 * (x.numel() * w[0].numel() if transposed else out.numel() * w[0].numel())
            return out
        return timed_conv

    def __enter__(self) -> ConvolutionTimer:
        self._saved = (F.conv2d, F.conv_transpose2d)
        F.conv2d, F.conv_transpose2d = self._wrap(F.conv2d, False), self._wrap(F.conv_transpose2d, True)
        return self

    def __exit__(self, *exc: Any) -> None:
        F.conv2d, F.conv_transpose2d = self._saved


def conv_peak(device: torch.device, seconds: float) -> float:
    """GFLOP/s of one 256 -> 256 3x3 float32 convolution over ``seconds`` of features, channels-last:
    the largest layer of the U-Net, alone (best of 3)."""
    frames = max(8, int(round(seconds * SR / 384)) // 8 * 8)
    x = torch.randn(1, 256, 768, frames, device=device).contiguous(memory_format=torch.channels_last)
    w = (0.02 * torch.randn(256, 256, 3, 3, device=device)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        F.conv2d(x, w, padding=1)
        best = min(timed(device, lambda: F.conv2d(x, w, padding=1))[0] for _ in range(3))
    return 2 * 256 * 9 * 256 * 768 * frames / best / 1e9


def profile_pass(device: torch.device, fn: Callable[[], Any], top: int) -> dict[str, Any]:
    """Device time per op over one call of ``fn`` (after warm-up), and the share of the call's wall time
    that the device spent in kernels at all: far below 1 means the pass waits on launches."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall, _, _ = timed(device, fn)
    on_cuda = device.type == "cuda"
    # On CUDA an aten op is charged its kernels' time too; count the kernels (and memsets/copies) only.
    events = [e for e in prof.key_averages() if not on_cuda or e.device_type == DeviceType.CUDA]
    key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)
    busy_s = sum(getattr(e, key, 0) for e in events) / 1e6
    table = [{"op": e.key, "device_s": getattr(e, key, 0) / 1e6, "calls": e.count} for e in rows[:top]]
    print(f"\nprofile of one optimised pass: wall {wall:.4f} s, device busy {busy_s:.4f} s "
          f"({busy_s / wall:.0%}), {sum(e.count for e in events)} {'kernels' if on_cuda else 'op calls'}")
    for r in table:
        print(f"  {r['device_s'] * 1e3:9.2f} ms  {r['calls']:5d}x  {r['op'][:90]}")
    return {"wall_s": wall, "device_busy_s": busy_s, "top": table}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().to(torch.complex128 if a.is_complex() else torch.float64)
            - b.detach().cpu().to(torch.complex128 if b.is_complex() else torch.float64)).abs().max().item()


def _reexec_with_fixed_mmap_threshold() -> None:
    """glibc keeps freed large blocks mapped once its dynamic mmap threshold has grown, so RSS would not
    fall between the variants and the second one's peak would hide in the first one's. A fixed threshold
    makes every large tensor its own mapping, returned on free: RSS then follows the live tensors."""
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of audio (default 1 on CPU, 10 on CUDA)")
    ap.add_argument("--nfe", type=int, default=6)
    ap.add_argument("--solver", default="midpoint")
    ap.add_argument("--passes", type=int, default=2, help="timed single passes per variant (after a warm-up)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--nf", type=int, default=64, help="backbone width (64 = official size)")
    ap.add_argument("--fast-precision", default=None, help="float32, tf32, bfloat16 or float16")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--no-fuse", action="store_true")
    ap.add_argument("--no-allocator-tuning", action="store_true",
                    help="CPU: leave glibc's malloc alone for the optimised runs (see tune_cpu_allocator)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the optimised U-Net")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode with --compile (e.g. reduce-overhead = CUDA graphs, max-autotune)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="list the N ops with most device time in one optimised pass")
    ap.add_argument("--chunked", action="store_true", help="also time enhance_long (chunks, batched)")
    ap.add_argument("--chunk-seconds", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--skip-enhance", action="store_true", help="time single passes only")
    ap.add_argument("--breakdown", action="store_true",
                    help="CPU: convolution share and rate of a pass, beside one large convolution alone")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    duration = args.duration or (10.0 if device.type == "cuda" else 1.0)
    precision = args.fast_precision or ("bfloat16" if device.type == "cuda" else "float32")

    torch.manual_seed(0)
    ref = Postfilter(nf=args.nf)
    recipe_weights(ref)
    ref.to(device)
    fast = Postfilter(nf=args.nf)
    fast.load_state_dict(ref.state_dict())
    fast.to(device).configure(precision=precision, channels_last=not args.no_channels_last,
                              fuse=not args.no_fuse, compile=args.compile,
                              compile_mode=args.compile_mode)

    y = test_signal(duration).to(device)
    Y, _normfac, _frames = ref.features(y)
    noise = draw_noise(Y.shape, torch.Generator(device).manual_seed(0), device)
    x0 = start_point(Y, ref.sigma_y, noise)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()})",
        "torch": torch.__version__, "nf": args.nf, "duration_s": duration, "frames_padded": Y.shape[-1],
        "nfe": args.nfe, "solver": args.solver,
        "fast_settings": {"precision": precision, "channels_last": not args.no_channels_last,
                          "fuse": not args.no_fuse, "compile": args.compile,
                          "compile_mode": args.compile_mode,
                          "cpu_allocator_tuning": device.type == "cpu" and not args.no_allocator_tuning},
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(info, indent=1), flush=True)

    # -- single passes, interleaved -------------------------------------------------------------------
    variants = {"straightforward": ref, "optimised": fast}
    tune = device.type == "cpu" and not args.no_allocator_tuning

    def prepare(name: str) -> None:
        if device.type == "cpu":  # glibc defaults for the straightforward runs, tuned for the optimised ones
            tune_cpu_allocator(False)  # also hands the free heap back, so RSS peaks start from the same level
            if tune and name != "straightforward":
                tune_cpu_allocator(True)

    passes: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    outs: dict[str, torch.Tensor] = {}
    for name, model in variants.items():  # warm-up (oneDNN/cuDNN kernel selection, compilation)
        prepare(name)
        w, c, out = timed(device, lambda m=model: m.velocity(x0, Y, 0.37))
        outs[name] = out.clone()  # a CUDA-graph output buffer is overwritten by the next replay
        print(f"warm-up {name}: {w:.2f} s wall", flush=True)
    for _ in range(args.passes):
        for name, model in variants.items():
            prepare(name)
            w, c, _ = timed(device, lambda m=model: m.velocity(x0, Y, 0.37))
            passes[name].append((w, c))
    results: dict[str, Any] = {"info": info, "velocity_max_diff": max_diff(outs["optimised"],
                                                                          outs["straightforward"]),
                               "velocity_max_abs": outs["straightforward"].abs().max().item()}
    for name in variants:
        walls = [w for w, _ in passes[name]]
        results[name] = {
            "pass_s_per_audio_s_best": min(walls) / duration,
            "pass_s_per_audio_s_median": statistics.median(walls) / duration,
            "pass_cpu_s_per_audio_s_median": statistics.median(c for _, c in passes[name]) / duration,
        }

    if args.breakdown and device.type == "cpu":
        for name, model in variants.items():
            prepare(name)
            timer = ConvolutionTimer()
            with timer:
                wall, _, _ = timed(device, lambda m=model: m.velocity(x0, Y, 0.37))
            results[name]["breakdown"] = {"pass_s": wall, "conv_s": timer.seconds, "conv_gflop": timer.flops / 1e9,
                                          "conv_gflop_per_s": timer.flops / 1e9 / timer.seconds,
                                          "other_s": wall - timer.seconds}
        results["single_conv_gflop_per_s"] = conv_peak(device, duration)

    if args.profile:
        results["profile"] = profile_pass(device, lambda: fast.velocity(x0, Y, 0.37), args.profile)

    # -- whole enhance at the chosen NFE --------------------------------------------------------------
    if not args.skip_enhance:
        enh: dict[str, torch.Tensor] = {}
        for name, model in variants.items():
            prepare(name)
            with PeakMemory(device) as mem:
                w, c, enh[name] = timed(device, lambda m=model: m.enhance(y, args.nfe, args.solver, noise=noise))
            results[name].update({"enhance_s": w, "enhance_cpu_s": c, "rtf": w / duration,
                                  "peak_mem_mb": mem.peak_mb})
        results["enhance_max_diff"] = max_diff(enh["optimised"], enh["straightforward"])
        results["enhance_max_abs"] = enh["straightforward"].abs().max().item()
        if args.chunked:
            prepare("optimised")
            with PeakMemory(device) as mem:
                w, c, out = timed(device, lambda: enhance_long(
                    fast, y, nfe=args.nfe, solver=args.solver, noise=noise, chunk_seconds=args.chunk_seconds,
                    batch_size=args.batch_size))
            results["optimised_chunked"] = {"enhance_s": w, "enhance_cpu_s": c, "rtf": w / duration,
                                            "peak_mem_mb": mem.peak_mb,
                                            "max_diff_vs_straightforward": max_diff(out, enh["straightforward"]),
                                            "chunk_seconds": args.chunk_seconds, "batch_size": args.batch_size}

    # -- report ---------------------------------------------------------------------------------------
    s, o = results["straightforward"], results["optimised"]
    print(f"\n{'':28s}{'straightforward':>18s}{'optimised':>14s}")
    print(f"{'pass s / audio s (best)':28s}{s['pass_s_per_audio_s_best']:18.3f}{o['pass_s_per_audio_s_best']:14.3f}")
    print(f"{'pass s / audio s (median)':28s}{s['pass_s_per_audio_s_median']:18.3f}"
          f"{o['pass_s_per_audio_s_median']:14.3f}")
    print(f"{'pass CPU s / audio s':28s}{s['pass_cpu_s_per_audio_s_median']:18.3f}"
          f"{o['pass_cpu_s_per_audio_s_median']:14.3f}")
    if "rtf" in s:
        print(f"{f'RTF at NFE {args.nfe}':28s}{s['rtf']:18.3f}{o['rtf']:14.3f}")
        print(f"{'peak memory (MB)':28s}{s['peak_mem_mb']:18.0f}{o['peak_mem_mb']:14.0f}")
        print(f"speed-up (enhance wall time): {s['enhance_s'] / o['enhance_s']:.2f}x; "
              f"max |output difference| {results['enhance_max_diff']:.3g} "
              f"(output peak {results['enhance_max_abs']:.3g})")
    print(f"speed-up (best pass): {s['pass_s_per_audio_s_best'] / o['pass_s_per_audio_s_best']:.2f}x; "
          f"max |velocity difference| {results['velocity_max_diff']:.3g} (peak {results['velocity_max_abs']:.3g})")
    if "single_conv_gflop_per_s" in results:
        for name in variants:
            b = results[name]["breakdown"]
            print(f"{name}: {b['conv_gflop']:.0f} GFLOP of convolutions in {b['conv_s']:.2f} s "
                  f"({b['conv_gflop_per_s']:.0f} GFLOP/s), everything else {b['other_s']:.2f} s")
        print(f"one 256->256 3x3 convolution alone, channels-last: {results['single_conv_gflop_per_s']:.0f} GFLOP/s")
    if "optimised_chunked" in results:
        ch = results["optimised_chunked"]
        print(f"chunked ({ch['chunk_seconds']} s chunks, batch {ch['batch_size']}): RTF {ch['rtf']:.3f}, "
              f"peak memory {ch['peak_mem_mb']:.0f} MB, max diff vs whole {ch['max_diff_vs_straightforward']:.3g}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    _reexec_with_fixed_mmap_threshold()
    main()
