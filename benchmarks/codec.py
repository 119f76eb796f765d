"""Codec-level figures for one model: stage times, real-time factor against NFE, size against bitrate, Opus.

    python benchmarks/codec.py                        # the built-in default model, CPU, a 10 s clip
    python benchmarks/codec.py --model flowdec-75m --device cuda --seconds 30

Prints markdown tables:
* encode, D0 and postfilter seconds per second of audio (postfilter per network pass), on the device;
* real-time factor of a whole decode against NFE (0, 2, 4, 6, 8);
* .fdc file size against the nominal bitrate (and the budget of the codes, their nominal x duration / 8 x 1.005
  + 128 B, which the side channel's bytes come on top of; under a rate plan the nominal rate counts both);
* Opus (opusenc/opusdec, when installed) at the same bitrates: size and encode+decode time.
The clip is the demo's synthesised signal (voice-like harmonics, melody, clicks, a chirp to 20 kHz).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Model reference (default: the built-in model).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nfe", default="0,2,4,6,8")
    args = ap.parse_args()

    import torch

    from flowdec_cli.container import encode_fdc_written, max_file_size
    from flowdec_cli.demo import demo_clip
    from flowdec_cli.evaluation.codec_eval import opus_available, opus_roundtrip
    from flowdec_cli.models.catalogue import default_model_name
    from flowdec_cli.pipeline import Codec

    torch.set_num_threads(args.threads)
    name = args.model or default_model_name()
    codec = Codec.load(name, args.device)
    sync = torch.cuda.synchronize if codec.device.type == "cuda" else (lambda: None)
    clip = demo_clip(args.seconds)[:, None]
    dur = len(clip) / 48000
    print(f"model {codec.model.name}; device {codec.device} ({machine(args.device)}); clip {dur:g} s\n")

    codec.compress_array(clip[:48000], 48000)  # warm-up
    sync()
    t0 = time.perf_counter()
    header, codes = codec.compress_array(clip, 48000)
    sync()
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    d0 = codec.ndac.decode(torch.from_numpy(codes).to(codec.device))
    sync()
    t_d0 = time.perf_counter() - t0
    rows = [("encode", t_enc / dur), ("D0 decode", t_d0 / dur)]
    if codec.postfilter is not None:
        codec.postfilter.enhance(d0[..., :48000], nfe=2, generator=torch.Generator().manual_seed(0))  # warm-up
        sync()
        t0 = time.perf_counter()
        codec.postfilter.enhance(d0, nfe=2, generator=torch.Generator().manual_seed(0))
        sync()
        rows.append(("postfilter, per network pass", (time.perf_counter() - t0) / 2 / dur))
    if header.envelope is not None:  # encode above includes measuring it; decoding measures and filters
        _, res = codec.decompress_codes_timed(header, codes, nfe=0, seed=0)
        rows.append(("side channel, decode (measure + filter)", res.envelope_seconds / dur))
    print("| stage | seconds per second of audio |\n| --- | --- |")
    for stage, v in rows:
        print(f"| {stage} | {v:.4f} |")

    print("\n| NFE | decode real-time factor (D0 + postfilter + resampling) |\n| --- | --- |")
    for nfe in (int(n) for n in args.nfe.split(",")):
        if nfe and codec.postfilter is None:
            continue
        t0 = time.perf_counter()
        codec.decompress_codes(header, codes, nfe=nfe, seed=0)
        sync()
        print(f"| {nfe} | {(time.perf_counter() - t0) / dur:.4f} |")

    print("\n| codebooks | nominal kbit/s | .fdc bytes (bit-packed) | actual kbit/s | codes budget bytes | side "
          "channel bytes | Opus bytes | Opus kbit/s | Opus enc+dec RTF |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for k, kbps in codec.bitrates():
            h, c = codec.compress_array(clip, 48000, bitrate_kbps=kbps)
            written, data = encode_fdc_written(h, c)
            size = len(data)
            opus = ""
            if opus_available() and kbps >= 6:
                res = opus_roundtrip(clip, 48000, kbps, Path(tmp))
                opus = f"{res.nbytes} | {res.kbps(dur):.2f} | {(res.encode_s + res.decode_s) / dur:.4f}"
            else:
                opus = " | | "
            print(f"| {k} | {kbps:g} | {size} | {size * 8 / dur / 1000:.3f} | "
                  f"{max_file_size(h.nominal_bitrate, dur):.0f} | {written.envelope_bytes} | {opus} |")


if __name__ == "__main__":
    main()
