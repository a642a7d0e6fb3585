"""Scaling laws and their compute-optimal allocations, as pure ``jax.numpy`` functions.

Units: ``N`` non-embedding parameters, ``D`` training tokens, loss in nats/token,
compute ``C = 6 N D`` FLOP. Every function broadcasts: pass parameter arrays of shape
``(draws,)`` and ``N``/``D``/``C`` of shape ``(draws, 1)`` or ``(1, points)`` (or use
:func:`broadcast_draws`) to evaluate a whole posterior at once. Nothing here does I/O, so
all of it can be jitted, vmapped and differentiated.

The family of laws (:data:`LAWS`):

* ``chinchilla`` (Hoffmann et al. 2022): ``L = E + A / N^alpha + B / D^beta``.
* ``kaplan`` (Kaplan et al. 2020, eq. 1.5, plus an irreducible loss ``E``):
  ``L = E + [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D``.
* ``shared`` (Gadre et al. 2024, arXiv:2403.08540, their eq. for ``L(N, M)``; also the form
  behind Hoffmann et al.'s Approaches 1 and 2, where ``N* ∝ C^0.5``): the Chinchilla form with
  one exponent for both terms, ``L = E + A / N^alpha + B / D^alpha``. Why it is in the family:
  it is what the over-training study fitted to extrapolate to its 1.4B and 6.9B models (about
  0.7% error), it has one parameter fewer, so it bends less when it extrapolates, and it stands
  for a distinct hypothesis about the allocation (``N*`` and ``D*`` grow equally fast,
  ``a = b = 1/2``) that a user weighing Chinchilla-style fits should see weighed against the
  data rather than assumed or ignored.

All have closed-form compute-optimal allocations under ``C = 6ND`` (derived below); a
generic bracketing minimiser (:func:`numerical_optimal_N`) solves any law numerically and
is used in the tests to check the closed forms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from . import _jax  # noqa: F401  (float64 + compilation cache, before any array)

Params = Mapping[str, ArrayLike]

LAWS = ("chinchilla", "kaplan", "shared")
PARAM_NAMES = {
    "chinchilla": ("E", "A", "B", "alpha", "beta"),
    "kaplan": ("E", "N_c", "D_c", "alpha_N", "alpha_D"),
    "shared": ("E", "A", "B", "alpha"),
}
FLOP_PER_PARAM_TOKEN = 6.0  # C = 6 N D: forward 2ND + backward 4ND (Kaplan et al. 2020, sec. 2.1)


def check_law(law: str) -> str:
    """Return ``law`` if it is known, else raise ``ValueError`` naming the choices."""
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; expected one of {', '.join(LAWS)}")
    return law


# --------------------------------------------------------------------------------------------
# losses


def chinchilla_loss(p: Params, N: ArrayLike, D: ArrayLike) -> Array:
    """``E + A / N^alpha + B / D^beta``, computed in log space for range safety."""
    logN, logD = jnp.log(N), jnp.log(D)
    return (
        p["E"]
        + jnp.exp(jnp.log(p["A"]) - p["alpha"] * logN)
        + jnp.exp(jnp.log(p["B"]) - p["beta"] * logD)
    )


def kaplan_loss(p: Params, N: ArrayLike, D: ArrayLike) -> Array:
    """``E + [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D``."""
    r = p["alpha_N"] / p["alpha_D"]
    inner = jnp.exp(r * (jnp.log(p["N_c"]) - jnp.log(N))) + jnp.exp(jnp.log(p["D_c"]) - jnp.log(D))
    return p["E"] + jnp.exp(p["alpha_D"] * jnp.log(inner))


def shared_loss(p: Params, N: ArrayLike, D: ArrayLike) -> Array:
    """``E + A / N^alpha + B / D^alpha``: the Chinchilla form with one exponent."""
    return chinchilla_loss(_as_chinchilla(p), N, D)


def _as_chinchilla(p: Params) -> dict[str, ArrayLike]:
    """The shared-exponent law's parameters as Chinchilla parameters (``beta = alpha``)."""
    return {"E": p["E"], "A": p["A"], "B": p["B"], "alpha": p["alpha"], "beta": p["alpha"]}


LOSSES: dict[str, Callable[[Params, ArrayLike, ArrayLike], Array]] = {
    "chinchilla": chinchilla_loss,
    "kaplan": kaplan_loss,
    "shared": shared_loss,
}


def loss(law: str, p: Params, N: ArrayLike, D: ArrayLike) -> Array:
    """Loss of ``law`` with parameters ``p`` at ``(N, D)``."""
    return LOSSES[check_law(law)](p, N, D)


# --------------------------------------------------------------------------------------------
# compute-optimal allocation under C = 6ND


def chinchilla_exponents(p: Params) -> tuple[Array, Array]:
    """``(a, b)`` with ``N* ∝ C^a`` and ``D* ∝ C^b``: ``a = beta/(alpha+beta)``, ``b = 1 - a``."""
    s = p["alpha"] + p["beta"]
    return p["beta"] / s, p["alpha"] / s


def kaplan_exponents(p: Params) -> tuple[Array, Array]:
    """``(a, b)`` for the Kaplan law: ``a = alpha_D / (alpha_N + alpha_D)``, ``b = 1 - a``."""
    s = p["alpha_N"] + p["alpha_D"]
    return p["alpha_D"] / s, p["alpha_N"] / s


def chinchilla_optimal_N(p: Params, C: ArrayLike) -> Array:
    """Closed form ``N* = G (C/6)^a`` with ``G = (alpha A / (beta B))^(1/(alpha+beta))``.

    From ``d/dN [A N^-alpha + B (C / 6N)^-beta] = 0`` (Hoffmann et al. 2022, eq. 4).
    """
    a, _ = chinchilla_exponents(p)
    s = p["alpha"] + p["beta"]
    log_G = (jnp.log(p["alpha"]) + jnp.log(p["A"]) - jnp.log(p["beta"]) - jnp.log(p["B"])) / s
    return jnp.exp(log_G + a * jnp.log(jnp.asarray(C) / FLOP_PER_PARAM_TOKEN))


def kaplan_optimal_N(p: Params, C: ArrayLike) -> Array:
    """Closed form for the Kaplan law under ``C = 6ND``.

    With ``r = alpha_N / alpha_D`` the bracket is ``N_c^r N^-r + D_c 6N / C``; the outer
    power and ``E`` are monotone, so the optimum minimises the bracket:
    ``r N_c^r N^-(r+1) = 6 D_c / C``, i.e. ``N* = (r N_c^r (C/6) / D_c)^(1/(1+r))``.
    """
    r = p["alpha_N"] / p["alpha_D"]
    logC6 = jnp.log(jnp.asarray(C) / FLOP_PER_PARAM_TOKEN)
    return jnp.exp((jnp.log(r) + r * jnp.log(p["N_c"]) + logC6 - jnp.log(p["D_c"])) / (1.0 + r))


def shared_optimal_N(p: Params, C: ArrayLike) -> Array:
    """Closed form for the shared-exponent law: ``N* = (A / B)^(1/(2 alpha)) (C/6)^(1/2)``."""
    return chinchilla_optimal_N(_as_chinchilla(p), C)


def shared_exponents(p: Params) -> tuple[Array, Array]:
    """``(a, b) = (1/2, 1/2)`` for every draw: one exponent splits compute equally in log space."""
    half = 0.5 * jnp.ones_like(jnp.asarray(p["alpha"], dtype=float))
    return half, half


OPTIMAL_N: dict[str, Callable[[Params, ArrayLike], Array]] = {
    "chinchilla": chinchilla_optimal_N,
    "kaplan": kaplan_optimal_N,
    "shared": shared_optimal_N,
}
EXPONENTS: dict[str, Callable[[Params], tuple[Array, Array]]] = {
    "chinchilla": chinchilla_exponents,
    "kaplan": kaplan_exponents,
    "shared": shared_exponents,
}


def compute_optimal(law: str, p: Params, C: ArrayLike) -> dict[str, Array]:
    """``N_opt``, ``D_opt``, ``loss`` (at the optimum) and ``tokens_per_param`` for budget ``C``."""
    N = OPTIMAL_N[check_law(law)](p, C)
    D = jnp.asarray(C) / (FLOP_PER_PARAM_TOKEN * N)
    return {"N_opt": N, "D_opt": D, "loss": loss(law, p, N, D), "tokens_per_param": D / N}


def numerical_optimal_N(
    law: str,
    p: Params,
    C: ArrayLike,
    *,
    log_N_bounds: tuple[float, float] = (0.0, 60.0),
    iters: int = 200,
) -> Array:
    """Minimise ``L(N, C / 6N)`` over ``log N`` by golden-section search, per draw.

    Works for any unimodal law along the iso-compute line; vectorised over draws and budgets.
    Used to check the closed forms, and available for laws without one.
    """
    C = jnp.asarray(C)
    lo = jnp.full(jnp.broadcast_shapes(C.shape, *(jnp.shape(v) for v in p.values())), log_N_bounds[0])
    hi = jnp.full_like(lo, log_N_bounds[1])
    inv_phi = (jnp.sqrt(5.0) - 1.0) / 2.0

    def f(logN: Array) -> Array:
        N = jnp.exp(logN)
        return loss(law, p, N, C / (FLOP_PER_PARAM_TOKEN * N))

    for _ in range(iters):  # unrolled at trace time is fine: this is a test/reference path
        x1 = hi - inv_phi * (hi - lo)
        x2 = lo + inv_phi * (hi - lo)
        left = f(x1) < f(x2)
        hi = jnp.where(left, x2, hi)
        lo = jnp.where(left, lo, x1)
    return jnp.exp(0.5 * (lo + hi))


def broadcast_draws(p: Mapping[str, Any]) -> dict[str, Array]:
    """Reshape each 1-D parameter array to ``(draws, 1)`` so it broadcasts against points."""
    return {k: jnp.asarray(v)[:, None] for k, v in p.items()}
