"""``make demo`` (``python -m flowdec_cli.demo``): round-trip a short synthesised clip with the default model
at its own NFE, beside Opus at the same rate when opusenc is present, and report what happened.

The clip is generated here (a voiced, speech-like harmonic signal with a melody, percussion clicks and a
chirp to 20 kHz), so the demo needs no download and carries no licence questions.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def demo_clip(seconds: float = 5.0, sr: int = 48000) -> np.ndarray:
    rng = np.random.default_rng(2025)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t)) * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    envelope = 0.5 * (1 + np.sign(np.sin(2 * np.pi * 1.6 * t))) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t) ** 2)
    voice = envelope * sum((0.25 / k) * np.sin(k * phase) * np.exp(-((k * 120 - 700) / 1800) ** 2)
                           for k in range(1, 40))
    notes = 440 * 2 ** (np.array([0, 3, 7, 12, 7, 3, 0, -5]) / 12)
    melody_f = notes[(t * 1.6).astype(int) % len(notes)]
    melody = 0.08 * np.sin(2 * np.pi * np.cumsum(melody_f) / sr) * (1 - (t * 1.6) % 1) ** 2
    clicks = np.zeros_like(t)
    for start in np.arange(0.0, seconds, 0.5):
        n = int(start * sr)
        burst = rng.standard_normal(min(2000, len(t) - n)) * np.exp(-np.arange(min(2000, len(t) - n)) / 300)
        clicks[n:n + len(burst)] += 0.15 * burst
    chirp = 0.03 * np.sin(2 * np.pi * (50 * t + 0.5 * (20000 - 50) / seconds * t**2))
    x = voice + melody + clicks + chirp
    return (0.8 * x / np.abs(x).max()).astype(np.float32)


def run_demo(out_dir: Path, seconds: float = 5.0, kbps: float = 7.5, device: str = "auto",
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Round-trip the clip with the default model at its own NFE and, when opusenc is present, with Opus at
    the same rate; report bitrate on disk, time and a quality figure (mel distance, lower is better; SI-SDR
    says little about a codec at these rates, which keeps the sound but not the waveform)."""
    import soundfile as sf

    from .evaluation.codec_eval import opus_available, opus_roundtrip
    from .evaluation.metrics import mel_distance
    from .models.catalogue import builtin_notice, default_model_name
    from .pipeline import Codec

    out_dir.mkdir(parents=True, exist_ok=True)
    clip = demo_clip(seconds)
    src = out_dir / "demo_in.wav"
    sf.write(src, clip, 48000, subtype="PCM_16")
    ref, _ = sf.read(src, dtype="float32")
    codec = Codec.load(default_model_name(), device)
    nfe = codec.resolve_nfe(None)  # the model's own setting, as `flowdec roundtrip` without --nfe
    rate = codec.choose_rate(max(kbps, codec.bitrates()[0][1]))
    say(f"model {codec.model.name} on {codec.device}; {seconds:g} s synthesised clip: {src}")
    nominal = rate.kbps  # the codes and, under a rate plan, their side channel
    dst = out_dir / f"demo_out_{nominal:g}kbps.wav"
    t0 = time.perf_counter()
    comp, _ = codec.roundtrip_file(src, dst, bitrate_kbps=nominal, seed=0)
    took = time.perf_counter() - t0
    out, _ = sf.read(dst, dtype="float32")
    result: dict[str, Any] = {
        "model": codec.model.name, "nfe": nfe, "kbps_nominal": nominal,
        "kbps_on_disk": comp.actual_bitrate / 1000, "seconds": took, "mel": mel_distance(ref, out, 48000),
        "output": str(dst)}
    say(f"flowdec  {result['kbps_on_disk']:6.2f} kbit/s on disk ({result['kbps_nominal']:g} nominal), NFE {nfe}, "
        f"{took:5.1f} s for {seconds:g} s of audio, mel distance {result['mel']:.3f}   {dst}")
    if opus_available():
        res = opus_roundtrip(clip[:, None], 48000, result["kbps_nominal"])
        opus_dst = out_dir / "demo_out_opus.wav"
        sf.write(opus_dst, res.audio, 48000, subtype="PCM_16")
        result["opus"] = {"kbps_on_disk": res.kbps(seconds), "seconds": res.encode_s + res.decode_s,
                          "mel": mel_distance(ref, res.audio[:, 0], 48000), "output": str(opus_dst)}
        o = result["opus"]
        say(f"opus     {o['kbps_on_disk']:6.2f} kbit/s on disk, {o['seconds']:13.1f} s for {seconds:g} s of audio, "
            f"mel distance {o['mel']:.3f}   {opus_dst}")
    else:
        say("opus: opusenc/opusdec not found; install opus-tools to compare at the same rate")
    say("mel distance: multi-resolution log-mel L1, lower is better (docs/evaluation.md)")
    notice = builtin_notice(codec.model.name)
    if notice:
        say(notice)
    return result


def main() -> int:
    from .errors import error_line
    from .models import ModelError

    try:
        run_demo(Path(tempfile.gettempdir()) / "flowdec-demo")
    except ModelError as exc:  # no model bundled in this build, or a default that cannot load
        print(error_line(str(exc)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
