"""Corpus coding throughput: seconds of audio coded per second against Ray worker count, beside the
single-process folder mode (``flowdec compress DIR OUT``) and the in-process engine, in the same run.

    python benchmarks/corpus.py                                  # 16 clips of 15 s, workers 1,2
    python benchmarks/corpus.py --files 200 --seconds 30 --workers 1,2,4,8 --model flowdec-25s

Every configuration is the whole command, run as a subprocess and timed from start to exit (Python and torch
imports, model loading, Ray start-up and shutdown included): what a user waits for. Each is run twice, on
the corpus and on one clip, so the fixed cost (start-up) and the rate once running can be told apart:
``rate = (audio - one clip) / (wall - wall of one clip)``. Prints a markdown table and the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    """lscpu's model name, and whether the CPU has AVX-512 (torch's fastest CPU kernels need it)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = flags = ""
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Flags:"):
                flags = line
        if name:
            return name + (" (AVX-512)" if "avx512f" in flags.split() else " (no AVX-512)")
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def make_corpus(folder: Path, files: int, seconds: float) -> float:
    import numpy as np
    import soundfile as sf

    from flowdec_cli.demo import demo_clip

    folder.mkdir(parents=True)
    clip = demo_clip(seconds)
    total = 0.0
    for i in range(files):
        x = np.roll(clip, i * 4801)  # different content per file, same length
        sf.write(folder / f"clip{i:04d}.wav", x, 48000)
        total += len(x) / 48000
    return total


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to measure.")
    ap.add_argument("--shard-files", type=int, default=2)
    ap.add_argument("--threads", default="1,2",
                    help="torch threads of the single-process folder mode runs (Ray workers: 1 each).")
    ap.add_argument("--model", default="flowdec-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--no-ray", action="store_true", help="Only folder mode and the in-process engine.")
    ap.add_argument("--json", dest="json_out", default=None, help="Also write the figures to this file.")
    args = ap.parse_args()

    flowdec = [sys.executable, "-m", "flowdec_cli"]
    tmp = Path(tempfile.mkdtemp(prefix="flowdec-corpus-bench-"))
    try:
        audio = make_corpus(tmp / "in", args.files, args.seconds)
        make_corpus(tmp / "one", 1, args.seconds)
        one = args.seconds
        common = ["-m", args.model, "--device", args.device, "-q"]
        configs: list[tuple[str, list[str]]] = []
        for t in [int(x) for x in args.threads.split(",")]:
            configs.append((f"folder mode (`flowdec compress DIR`), 1 process, {t} thread{'s' if t > 1 else ''}",
                            ["compress", "{src}", "{dst}", "--threads", str(t)] + common))
        configs.append(("corpus, in-process engine, 1 thread",
                        ["corpus", "encode", "{src}", "{dst}", "--engine", "local", "--threads", "1",
                         "--shard-files", str(args.shard_files)] + common))
        envs: dict[str, dict[str, str]] = {}
        if not args.no_ray:
            counts = [int(x) for x in args.workers.split(",")]
            for w in counts:
                configs.append((f"corpus, Ray Data, {w} worker{'s' if w > 1 else ''}",
                                ["corpus", "encode", "{src}", "{dst}", "--engine", "ray", "--workers", str(w),
                                 "--cpus-per-worker", "1", "--gpus-per-worker", str(args.gpus_per_worker),
                                 "--shard-files", str(args.shard_files)] + common))
            # Ray's own default priority for workers (flowdec's private local Ray uses 0): what a shared
            # machine, or a cluster started without RAY_worker_niceness=0, gives
            name = f"corpus, Ray Data, {counts[-1]} workers at Ray's default niceness 15"
            configs.append((name, configs[-1][1]))
            envs[name] = {"RAY_worker_niceness": "15"}
        rows = []
        load = [os.getloadavg()[0]]  # other work on the machine shows here: the figures are only as quiet as it
        for n, (name, template) in enumerate(configs):
            walls = {}
            for label, src in (("one", tmp / "one"), ("all", tmp / "in")):
                dst = tmp / f"out{n}-{label}"
                walls[label] = timed(flowdec + [a.format(src=src, dst=dst) for a in template], envs.get(name))
                shutil.rmtree(dst, ignore_errors=True)
            # once running: the extra audio over the extra time (noisy, or None, when start-up dominates)
            rate = (audio - one) / (walls["all"] - walls["one"]) if walls["all"] > walls["one"] + 1 else None
            load.append(os.getloadavg()[0])
            rows.append({"config": name, "wall_s": walls["all"], "audio_per_s": audio / walls["all"],
                         "fixed_s": walls["one"], "rate_running": rate, "load_after": load[-1]})
            print(f"  {name}: {walls['all']:.1f} s for {audio:.0f} s of audio (one clip: {walls['one']:.1f} s)",
                  file=sys.stderr)
        import torch

        print(f"\n{args.files} clips of {args.seconds:g} s ({audio:.0f} s of audio), model {args.model}, "
              f"device {args.device}; CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; "
              f"1-min load average {min(load):.1f} to {max(load):.1f} during the run\n")
        print("| configuration | wall s | audio s per s (whole command) | wall s for one clip "
              "| audio s per s once running | load after |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            running = f"{r['rate_running']:.1f}" if r["rate_running"] is not None else "n/a"
            print(f"| {r['config']} | {r['wall_s']:.1f} | {r['audio_per_s']:.2f} | {r['fixed_s']:.1f} | {running} | "
                  f"{r['load_after']:.1f} |")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"files": args.files, "seconds": args.seconds,
                                                       "cpu": cpu_name(), "cores": os.cpu_count(),
                                                       "rows": rows}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
