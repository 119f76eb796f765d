"""Training FlowDec: the NDAC codec (stage 1) and the flow-matching postfilter (stage 2).

    from flowdec_cli.training import (load_config, train_ndac, prepare_pairs, pairs_from, estimate_sigma,
                                      write_sigma_file, train_postfilter, export_model)

    cfg = load_config("configs/ndac-tiny.toml", "ndac")
    trainer = train_ndac(cfg, device="auto")               # RUN/checkpoints, RUN/metrics.csv, RUN/model/
    prepare_pairs("runs/ndac-tiny", ["data/"], "pairs-tiny/", n_codebooks=[4, 2])  # where the config reads them
    estimate = estimate_sigma(pairs_from(["pairs-tiny/train.txt"]))  # as `flowdec train estimate-sigma`
    write_sigma_file("pairs-tiny/sigma.json", estimate)    # the config's sigma.file
    pf_cfg = load_config("configs/postfilter-tiny.toml", "postfilter")
    train_postfilter(pf_cfg)                               # RUN/postfilter/ (EMA weights)
    export_model("my-model", ndac="runs/ndac-tiny", postfilter="runs/postfilter-tiny")

The command line is ``flowdec train ...`` (:mod:`flowdec_cli.training.cli`); ``docs/training.md`` has the
details. Submodules are imported on first use, so importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ConfigError",
    "TrainingError",
    "load_config",
    "NDACTrainConfig",
    "PostfilterTrainConfig",
    "NDACTrainer",
    "PostfilterTrainer",
    "train_ndac",
    "train_postfilter",
    "prepare_pairs",
    "pairs_from",
    "estimate_sigma",
    "write_sigma_file",
    "gaussian_smooth",
    "export_model",
]

_WHERE = {
    "ConfigError": "config",
    "load_config": "config",
    "NDACTrainConfig": "config",
    "PostfilterTrainConfig": "config",
    "TrainingError": "common",
    "NDACTrainer": "ndac_trainer",
    "train_ndac": "ndac_trainer",
    "PostfilterTrainer": "postfilter_trainer",
    "train_postfilter": "postfilter_trainer",
    "prepare_pairs": "prepare",
    "pairs_from": "prepare",
    "estimate_sigma": "prepare",
    "write_sigma_file": "prepare",
    "gaussian_smooth": "prepare",
    "export_model": "export",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
