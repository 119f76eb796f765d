"""torchrun-style DistributedDataParallel on CPU (gloo, 2 processes) equals one process with the doubled batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flowdec_cli.training.common import load_checkpoint
from flowdec_cli.training.config import config_from_dict
from flowdec_cli.training.ndac_trainer import NDACTrainer
from flowdec_cli.training.postfilter_trainer import PostfilterTrainer

from .test_training_helpers import fast_cpu_settings, ndac_dict, postfilter_dict, write_clips, write_pairs_files

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _configs(clips: Path, pairs: Path, out: Path) -> dict[str, dict]:
    common_train = dict(max_steps=2, log_every=1, checkpoint_every=0, val_every=2)
    # quantizer dropout on (DAC's 0.5): each process dropped out its own first half where one process drops
    # out the first half of the whole batch
    ndac = ndac_dict([str(clips)], out / "ndac", model=dict(quantizer_dropout=0.5), data=dict(batch_size=4),
                     train=common_train)
    ndac["data"]["validation"] = [str(sorted(clips.iterdir())[0]), str(sorted(clips.iterdir())[1])]
    pf = postfilter_dict([str(pairs)], out / "postfilter", [str(pairs)], data=dict(batch_size=4),
                         train=common_train, validation=dict(num_files=2))
    return {"ndac": ndac, "postfilter": pf}


def _run_both(dicts: dict[str, dict]) -> dict[str, dict[str, float]]:
    results = {}
    with fast_cpu_settings():
        for kind, cls in (("ndac", NDACTrainer), ("postfilter", PostfilterTrainer)):
            t = cls(config_from_dict(kind, dicts[kind]), device="cpu", quiet=True)
            results[kind] = t.run()
    return results


def _trainable(kind: str, ckpt: dict) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of the optimizer's parameters, in its order (the model's parameter order)."""
    if kind == "ndac":
        from flowdec_cli.ndac import NDAC, NDACConfig

        model = NDAC(NDACConfig.from_kwargs(ckpt["model_config"]))
        return list(model.named_parameters())
    from flowdec_cli.postfilter import Postfilter

    pf = Postfilter.from_config(ckpt["model_config"])
    return [("backbone." + n, p) for n, p in pf.backbone.named_parameters()]


def _worker(rank: int, world: int, port: int, dicts: dict[str, dict], result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    # One process group for both trainers (a trainer leaves a group it did not create alone).
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = _run_both(dicts)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        import json

        (Path(result_dir) / "validation.json").write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path):
    clips = tmp_path / "clips"
    write_clips(clips, 4, seconds=0.3)
    pairs = write_pairs_files(tmp_path / "pairs", 4, seconds=0.3)[0]

    single = _run_both(_configs(clips, pairs, tmp_path / "one"))
    ddp_dicts = _configs(clips, pairs, tmp_path / "two")
    mp.spawn(_worker, args=(2, _free_port(), ddp_dicts, str(tmp_path)), nprocs=2, join=True)

    import json

    ddp = json.loads((tmp_path / "validation.json").read_text())
    dicts_lr = {kind: d["optim"]["lr"] for kind, d in ddp_dicts.items()}
    for kind in ("ndac", "postfilter"):
        one, two = load_checkpoint(tmp_path / "one" / kind), load_checkpoint(tmp_path / "two" / kind)
        assert one["trainer"]["step"] == two["trainer"]["step"] == 2
        assert two["trainer"]["world_size"] == 2
        # The averaged gradients agree up to float summation order (Adam's first moment after 2 steps).
        grads_one, grads_two = one["optimizer"]["state"], two["optimizer"]["state"]
        scale = max(float(st["exp_avg"].abs().max()) for st in grads_one.values())
        for pid, st in grads_one.items():
            assert torch.allclose(st["exp_avg"], grads_two[pid]["exp_avg"], rtol=1e-4, atol=1e-5 * scale), (kind, pid)
        # So do the weights, except where a gradient is pure rounding noise (~1e-10, e.g. some weight-norm
        # directions): Adam normalises those to steps of up to lr, so only that bound holds there.
        lr = dicts_lr[kind]
        names = [n for n, p in _trainable(kind, one)]
        # Per element: a gradient four orders below the largest is dominated by summation-order rounding
        # once Adam divides it by its own magnitude.
        noisy = {names[pid]: st["exp_avg"].abs() < 1e-4 * scale for pid, st in grads_one.items()}
        for key in ("model_state", "ema_state"):
            if one[key] is None:
                continue
            for name, a in one[key].items():
                b = two[key][name]
                mask = noisy.get(name)
                if mask is not None and mask.shape == a.shape and bool(mask.any()):
                    assert float((a - b).abs()[mask].max()) <= 2 * 2 * lr, (kind, name)
                    a, b = a[~mask], b[~mask]
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (kind, key, name, float((a - b).abs().max()))
        # the weights moved (so the comparison means something)
        assert one["optimizer"]["state"][0]["exp_avg"].abs().sum() > 0
        # validation is sharded over the processes and averaged: the same figures
        assert set(single[kind]) == set(ddp[kind]) and single[kind]
        for name, value in single[kind].items():
            assert ddp[kind][name] == pytest.approx(value, rel=1e-3, abs=1e-3), (kind, name)


def _budget_worker(rank: int, world: int, port: int, ndac: dict, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with fast_cpu_settings():
            t = NDACTrainer(config_from_dict("ndac", ndac), device="cpu", quiet=True)
            t.run()
    finally:
        dist.destroy_process_group()
    lr = t.optimizer.param_groups[0]["lr"]
    (Path(result_dir) / f"rank{rank}.txt").write_text(f"{t.step} {lr!r}")


@pytest.mark.timeout(300)
def test_a_time_budget_stops_every_process_at_the_same_step_and_rate(tmp_path):
    """Each process's clock differs; if they decided alone, one would wait forever in the next all-reduce
    and their rates would part."""
    clips = tmp_path / "clips"
    write_clips(clips, 4, seconds=0.3)
    ndac = ndac_dict([str(clips)], tmp_path / "ndac", data=dict(batch_size=4),
                     optim=dict(lr=1e-3, lr_final=1e-5),
                     train=dict(max_steps=10**6, max_seconds=1.0, log_every=0, checkpoint_every=0, val_every=0))
    mp.spawn(_budget_worker, args=(2, _free_port(), ndac, str(tmp_path)), nprocs=2, join=True)
    (step0, lr0), (step1, lr1) = ((int(a), float(b)) for a, b in
                                  (p.read_text().split() for p in (tmp_path / "rank0.txt", tmp_path / "rank1.txt")))
    assert step0 == step1 >= 1 and lr0 == lr1 and 1e-5 <= lr0 < 1e-3
    assert load_checkpoint(tmp_path / "ndac")["trainer"]["step"] == step0
