"""The ODE sampler: NFE mapping, the torchdyn 1.0.6 time grid, the start point and the noise draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowdec_cli.sampler import (
    check_seed,
    draw_noise,
    nfe_plan,
    nfe_to_steps,
    solve,
    start_point,
    steps_to_nfe,
    time_grid,
)


@pytest.mark.parametrize("nfe, solver, steps", [(6, "midpoint", 3), (2, "midpoint", 1), (0, "midpoint", 0),
                                                (0, "euler", 0), (1, "euler", 1), (5, "euler", 5)])
def test_nfe_to_steps(nfe, solver, steps):
    assert nfe_to_steps(nfe, solver) == steps
    assert nfe_plan(nfe, solver) == (solver, steps)
    assert steps_to_nfe(steps, solver) == nfe


@pytest.mark.parametrize("nfe, solver, words", [(3, "midpoint", "even"), (-2, "midpoint", "non-negative"),
                                                (2.0, "euler", "integer"), (True, "euler", "integer"),
                                                (4, "heun", "unknown solver"), (1002, "midpoint", "more than 1000"),
                                                (10**11, "euler", "more than 1000")])
def test_nfe_to_steps_errors(nfe, solver, words):
    with pytest.raises(ValueError, match=words):
        nfe_to_steps(nfe, solver)


@pytest.mark.parametrize("seed", ["0", 1.5, True, -1, 2**64])
def test_a_seed_is_a_whole_number_the_generator_takes(seed):
    """A string would be parsed and a float truncated (two requests, one noise); beyond torch's range the
    generator fails deep inside the sampler."""
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to 2"):
        check_seed(seed)
    assert check_seed(None) is None and check_seed(np.int64(3)) == 3
    torch.Generator().manual_seed(check_seed(2**64 - 1))


def _torchdyn_times(steps: int, solver: str) -> list[torch.Tensor]:
    """The times torchdyn 1.0.6's fixed-step loop hands the field, restated literally."""
    t_span = torch.linspace(0, 1, steps + 1)
    t, dt, seen = t_span[0], t_span[1] - t_span[0], []
    for k in range(1, steps + 1):
        seen.append(t)
        if solver == "midpoint":
            seen.append(t + 0.5 * dt)
        t = t + dt
        if k < steps:
            dt = t_span[k + 1] - t
    return seen


@pytest.mark.parametrize("steps, solver", [(3, "midpoint"), (2, "euler"), (7, "midpoint"), (5, "euler")])
def test_field_sees_the_official_times(steps, solver):
    seen = []

    def field(t, x):
        assert t.dtype == torch.float32 and t.dim() == 0
        seen.append(t.clone())
        return torch.zeros_like(x)

    solve(field, torch.zeros(1, 1, 4, 8, dtype=torch.complex64), steps, solver)
    expected = _torchdyn_times(steps, solver)
    assert len(seen) == steps_to_nfe(steps, solver)
    assert all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert max(float(t) for t in seen) < 1.0  # never evaluated at t = 1
    if (steps, solver) == (3, "midpoint"):
        assert [round(float(t) * 6) for t in seen] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("solver, order", [("euler", 1), ("midpoint", 2)])
def test_solver_steps_on_a_linear_field(solver, order):
    a = torch.tensor(-0.7 + 0.4j, dtype=torch.complex128)
    x0 = torch.ones(1, 1, 2, 8, dtype=torch.complex128)
    steps = 4
    out = solve(lambda t, x: a * x, x0, steps, solver)
    h = a / steps
    factor = 1 + h if order == 1 else 1 + h + h * h / 2  # one explicit RK step of the given order
    assert torch.allclose(out, x0 * factor ** steps, atol=1e-6)


def test_solver_counts_evaluations():
    calls = []
    solve(lambda t, x: x, torch.zeros(1, 1, 2, 8, dtype=torch.complex64), 3, "midpoint",
          on_evaluation=lambda: calls.append(1))
    assert len(calls) == 6
    assert time_grid(3).dtype == torch.float32


def test_noise_draw_is_torch_randn_complex64():
    shape = (2, 1, 768, 64)
    got = draw_noise(shape, torch.Generator().manual_seed(7))
    want = torch.randn(shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(7))
    assert got.dtype == torch.complex64 and torch.equal(got, want)
    # E|eps|^2 = 1: real and imaginary parts each of variance 1/2
    assert abs(got.abs().pow(2).mean().item() - 1) < 0.02
    assert abs(got.real.var().item() - 0.5) < 0.02


@pytest.mark.parametrize("fixture, seed", [("flowdec_small", 101), ("pipeline_small", 202)])
def test_fixture_noise_recipe(reference_dir, fixture, seed):
    noise = np.load(reference_dir / fixture / "io.npz")["noise"]
    assert torch.equal(draw_noise(noise.shape, torch.Generator().manual_seed(seed)), torch.from_numpy(noise))


def test_start_point_matches_official_bit_for_bit(reference_dir):
    io = np.load(reference_dir / "flowdec_small" / "io.npz")
    sigma_y = torch.from_numpy(io["sigma_y"])
    assert sigma_y.dtype == torch.float64
    x0 = start_point(torch.from_numpy(io["Y_feat"]), sigma_y, torch.from_numpy(io["noise"]))
    assert x0.dtype == torch.complex64
    assert torch.equal(x0, torch.from_numpy(io["x0"]))
    # the numpy restatement of the recipe gives the same bits
    numpy_x0 = io["Y_feat"] + (io["sigma_y"] * io["noise"].astype(np.complex128)).astype(np.complex64)
    assert np.array_equal(numpy_x0, io["x0"])


def test_start_point_with_a_global_sigma():
    Y = torch.zeros(1, 1, 4, 8, dtype=torch.complex64)
    eps = torch.ones(1, 1, 4, 8, dtype=torch.complex64)
    assert torch.equal(start_point(Y, torch.tensor(0.66), eps), torch.full_like(Y, 0.66))
