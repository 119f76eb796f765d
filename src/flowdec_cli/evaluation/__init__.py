"""Objective evaluation of decoded audio: metrics, file pairing, reports and plots.

``flowdec eval`` and ``flowdec plot`` live in :mod:`flowdec_cli.evaluation.cli`; the metric
functions in :mod:`flowdec_cli.evaluation.metrics` (numpy only; the optional ones import their
packages on first use).
"""

from __future__ import annotations

from .metrics import (
    DEFAULT_METRICS,
    METRICS,
    OPTIONAL_METRICS,
    MetricError,
    MetricUnavailable,
    compute_metrics,
    estoi,
    log_spectral_distance,
    mel_distance,
    metric_available,
    pesq_wb,
    si_sdr,
    stoi,
    visqol,
)

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "OPTIONAL_METRICS",
    "MetricError",
    "MetricUnavailable",
    "compute_metrics",
    "estoi",
    "log_spectral_distance",
    "mel_distance",
    "metric_available",
    "pesq_wb",
    "si_sdr",
    "stoi",
    "visqol",
]
