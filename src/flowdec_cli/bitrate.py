"""The nominal bitrate: one formula, used by the codec, the .fdc header, the model cards and the catalogue.

A code of a codebook with ``codebook_size`` entries takes ``ceil(log2(codebook_size))`` bits (that is how
.fdc files bit-pack it), so one channel with ``n_codebooks`` codebooks costs ``frame_rate x n_codebooks x
bits`` bit/s, where ``frame_rate = sample_rate / hop``.
"""

from __future__ import annotations

__all__ = ["bits_for_codebook_size", "bitrate_table", "codes_kbps", "nominal_bitrate"]


def bits_for_codebook_size(codebook_size: int) -> int:
    """ceil(log2(codebook_size)): 1024 -> 10, 1000 -> 10, 1025 -> 11, 2 -> 1."""
    if codebook_size < 2:
        raise ValueError(f"codebook size must be at least 2, got {codebook_size}")
    return (int(codebook_size) - 1).bit_length()


def nominal_bitrate(sample_rate: float, hop: int, n_codebooks: int, codebook_size: int) -> float:
    """Nominal bitrate of one channel in bit/s: frames per second x codebooks x bits per code."""
    return sample_rate / hop * n_codebooks * bits_for_codebook_size(codebook_size)


def codes_kbps(sample_rate: float, hop: int, n_codebooks: int, codebook_size: int) -> list[float]:
    """kbit/s per channel with 1, 2, ... ``n_codebooks`` codebooks: what a rate plan prices its entries on."""
    return [nominal_bitrate(sample_rate, hop, k, codebook_size) / 1000 for k in range(1, n_codebooks + 1)]


def bitrate_table(sample_rate: float, hop: int, n_codebooks: int, codebook_size: int) -> list[float]:
    """:func:`codes_kbps` rounded to 6 decimals (model cards and the catalogue list these)."""
    return [round(v, 6) for v in codes_kbps(sample_rate, hop, n_codebooks, codebook_size)]
