"""The postfilter's ODE sampler: start point and fixed-step solve, as the official FlowDec code runs them.

Official inference (``FlowModel.enhance``) draws the start point ``X0 = Y + sigma_y * eps`` with complex
Gaussian ``eps`` (real and imaginary parts each of variance 1/2) and integrates the learned field from
t = 0 to 1 with torchdyn 1.0.6's fixed-step loop. We restate that loop rather than depend on torchdyn.
The details below are what makes the result bit-identical to an official run given the same noise:

* the time grid is ``torch.linspace(0, 1, steps + 1)`` in float32; t starts at the first entry and
  ``dt = grid[1] - grid[0]``; after each step ``t = t + dt`` and then ``dt = grid[k + 1] - t``, all as
  float32 tensor arithmetic (so dt drifts by an ulp exactly as it does officially);
* midpoint: ``x_mid = x + (0.5 * dt) * v(t, x)``; ``x = x + dt * v(t + 0.5 * dt, x_mid)`` (NFE 2 per step);
* euler: ``x = x + dt * v(t, x)`` (NFE 1 per step);
* the field never sees t = 1;
* the start point's noise product is formed in sigma_y's dtype (float64 for the released curves), giving a
  complex128 product that is then rounded once to complex64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .exceptions import InvalidValue
from .numeric import is_integer, is_real

__all__ = ["SOLVERS", "MAX_NFE", "MAX_TEMPERATURE", "check_seed", "check_temperature", "nfe_plan", "nfe_to_steps",
           "steps_to_nfe", "draw_noise", "start_point", "time_grid", "solve"]

SOLVERS = {"midpoint": 2, "euler": 1}  # network evaluations per step

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (t 0-dim float32, x) -> dx/dt

# ours: the start-noise temperature scales eps (1 = FlowDec). Above 2 the start point is mostly noise and the
# sampler has nothing left of the coded signal to refine; the bound also keeps a forged model card sane.
MAX_TEMPERATURE = 2.0
# ours: far beyond any useful budget (the paper's largest is in the tens), and small enough that a mistyped
# NFE is refused instead of allocating a time grid of that length
MAX_NFE = 1000
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed takes


def check_seed(seed: object) -> int | None:
    """The start noise's seed: None, or a whole number torch's generator takes (a string would be parsed and a
    float truncated, so two different requests could give the same noise)."""
    if seed is None:
        return None
    if not is_integer(seed) or not 0 <= int(seed) <= MAX_SEED:
        raise InvalidValue(f"a seed must be a whole number from 0 to 2**64-1, got {seed!r}")
    return int(seed)


def check_temperature(value: object) -> float:
    """A start-noise temperature as a float, or ValueError: the one rule for the command line, the model
    card and the training config (a card's value is data from a file, so a bool or a string is refused)."""
    if not is_real(value) or not 0.0 <= float(value) <= MAX_TEMPERATURE:
        raise InvalidValue(f"postfilter temperature {value!r} must be a number from 0 to {MAX_TEMPERATURE:g}")
    return float(value)


def nfe_to_steps(nfe: int, solver: str = "midpoint") -> int:
    """Number of solver steps for a budget of ``nfe`` network evaluations; 0 means "no postfilter".

    Midpoint costs two evaluations per step, so its NFE must be even (the official default NFE 6 is
    midpoint with 3 steps).
    """
    if solver not in SOLVERS:
        raise InvalidValue(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if not is_integer(nfe) or nfe < 0:
        raise InvalidValue(f"NFE must be a non-negative integer, got {nfe!r}")
    nfe = int(nfe)
    if nfe > MAX_NFE:
        raise InvalidValue(f"NFE {nfe} is more than {MAX_NFE} network passes")
    per_step = SOLVERS[solver]
    if nfe % per_step:
        raise InvalidValue(f"NFE {nfe} is odd, but the {solver} solver evaluates the network {per_step} times "
                         f"per step: use an even NFE such as {nfe + 1}, or the euler solver")
    return nfe // per_step


def nfe_plan(nfe: int, solver: str = "midpoint") -> tuple[str, int]:
    """``(solver, steps)`` for an NFE budget, validated as in :func:`nfe_to_steps` (steps 0 = no postfilter)."""
    return solver, nfe_to_steps(nfe, solver)


def steps_to_nfe(steps: int, solver: str = "midpoint") -> int:
    return steps * SOLVERS[solver]


def draw_noise(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Complex64 standard normal noise, exactly ``torch.randn(shape, dtype=complex64, generator=...)``.

    The official code calls ``randn_like(Y)``; with the same generator state, device and shape this is the
    same draw. Without a generator the draw uses torch's global RNG on ``device``.
    """
    if generator is not None:
        device = generator.device
    return torch.randn(tuple(shape), dtype=torch.complex64, generator=generator, device=device)


def start_point(Y: torch.Tensor, sigma_y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``X0 = Y + (sigma_y * noise).to(complex64)``, the product formed at sigma_y's precision.

    ``sigma_y`` is [F, 1] (per frequency) or 0-dim (global). float64 sigma_y makes the product complex128,
    rounded once to complex64, as officially.
    """
    sigma_y = sigma_y.to(Y.device)
    noise = noise.to(Y.device)
    return Y + (sigma_y * noise).to(torch.complex64)


def time_grid(steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    return torch.linspace(0, 1, steps + 1, dtype=torch.float32, device=device)


def solve(field: VectorField, x: torch.Tensor, steps: int, solver: str = "midpoint",
          on_evaluation: Callable[[], None] | None = None) -> torch.Tensor:
    """Integrate ``dx/dt = field(t, x)`` from t = 0 to 1 in ``steps`` fixed steps (torchdyn 1.0.6 loop).

    ``field`` gets t as a 0-dim float32 tensor on x's device. ``on_evaluation`` is called after every
    network evaluation (progress reporting).
    """
    if solver not in SOLVERS:
        raise InvalidValue(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if steps < 1:
        return x

    def evaluate(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        v = field(t, state)
        if on_evaluation is not None:
            on_evaluation()
        return v

    grid = time_grid(steps, x.device)
    t, dt = grid[0], grid[1] - grid[0]
    for k in range(1, steps + 1):
        if solver == "midpoint":
            half = 0.5 * dt
            x_mid = x + half * evaluate(t, x)
            x = x + dt * evaluate(t + half, x_mid)
        else:
            x = x + dt * evaluate(t, x)
        t = t + dt
        if k < steps:
            dt = grid[k + 1] - t
    return x
