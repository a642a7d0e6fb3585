"""Posterior quantities derived from a fit: compute-optimal N*, D*, L*(C), and predictions.

Everything here works from an InferenceData written by :func:`bayescale.fit` alone: the law
and its options are read from the stored metadata. Intervals are equal-tailed: ``q05``,
``q50``, ``q95``, with ``mean`` and ``sd``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from . import _jax  # noqa: F401
from ._arviz import az
from .errors import InputError
from .inference import metadata
from .laws import EXPONENTS, PARAM_NAMES, broadcast_draws, compute_optimal, loss

QUANTILES = (0.05, 0.5, 0.95)


def summarize(x: Any) -> dict[str, float]:
    """``mean, sd, q05, q50, q95`` of a 1-D sample."""
    x = np.asarray(x, dtype=float).ravel()
    q = np.quantile(x, QUANTILES)
    return {"mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1)),
            "q05": float(q[0]), "q50": float(q[1]), "q95": float(q[2])}


def param_draws(idata: az.InferenceData, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Posterior draws of the law's natural parameters (and sigma), flattened over chains."""
    law = metadata(idata)["law"]
    names = list(names) if names is not None else [*PARAM_NAMES[law], "sigma"]
    post = idata.posterior
    return {n: np.asarray(post[n].values, dtype=float).reshape(-1) for n in names}


def exponents(idata: az.InferenceData) -> dict[str, np.ndarray]:
    """Draws of ``a`` and ``b`` with ``N* ∝ C^a`` and ``D* ∝ C^b``."""
    law = metadata(idata)["law"]
    a, b = EXPONENTS[law](param_draws(idata, PARAM_NAMES[law]))
    return {"a": np.asarray(a), "b": np.asarray(b)}


def optimal_draws(idata: az.InferenceData, compute: float | Iterable[float]) -> dict[str, np.ndarray]:
    """Draws of ``N_opt, D_opt, loss, tokens_per_param``, shape ``(draws, budgets)``."""
    law = metadata(idata)["law"]
    C = _positive_array(compute, "--compute")
    p = broadcast_draws(param_draws(idata, PARAM_NAMES[law]))
    out = compute_optimal(law, p, jnp.asarray(C)[None, :])
    return {k: np.asarray(v) for k, v in out.items()}


def optimal(idata: az.InferenceData, compute: float | Iterable[float]) -> list[dict[str, Any]]:
    """Posterior of the compute-optimal allocation at each budget.

    Parameters
    ----------
    idata
        A posterior from :func:`bayescale.fit` or :func:`bayescale.load_posterior`.
    compute
        One or more budgets in FLOP (``C = 6ND``).

    Returns
    -------
    list of dict
        One entry per budget: ``compute`` and summaries of ``N_opt``, ``D_opt``, ``loss``
        (the loss reached at the optimum, without observation noise) and
        ``tokens_per_param``.
    """
    C = _positive_array(compute, "--compute")
    dr = optimal_draws(idata, C)
    return [
        {"compute": float(c), **{k: summarize(dr[k][:, j])
                                 for k in ("N_opt", "D_opt", "loss", "tokens_per_param")}}
        for j, c in enumerate(C)
    ]


def predict_draws(
    idata: az.InferenceData,
    N: Any,
    D: Any,
    *,
    noise: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Posterior (predictive) draws of the loss at each ``(N, D)``, shape ``(draws, points)``.

    With ``noise=True`` each draw adds the fitted observation noise (Student-t or Gaussian on
    log loss), so the interval is where a new run's measured loss should fall; with
    ``noise=False`` it is the interval of the law's mean.
    """
    meta = metadata(idata)
    law = meta["law"]
    N = _positive_array(N, "--N")
    D = _positive_array(D, "--D")
    if N.shape != D.shape:
        raise InputError(f"N and D must pair up; got {N.size} N values and {D.size} D values", field="--D")
    p = param_draws(idata, PARAM_NAMES[law])
    mu = np.asarray(loss(law, broadcast_draws(p), N[None, :], D[None, :]))
    if not noise:
        return mu
    sigma = param_draws(idata, ["sigma"])["sigma"][:, None]
    rng = np.random.default_rng(seed)
    cfg = meta["config"]
    if cfg["likelihood"] == "student_t":
        eps = rng.standard_t(cfg["nu"], size=mu.shape)
    else:
        eps = rng.standard_normal(size=mu.shape)
    return mu * np.exp(sigma * eps)


def predict(
    idata: az.InferenceData,
    N: Any,
    D: Any,
    *,
    noise: bool = True,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Posterior predictive summaries of the loss at each ``(N, D)`` pair."""
    N = _positive_array(N, "--N")
    D = _positive_array(D, "--D")
    dr = predict_draws(idata, N, D, noise=noise, seed=seed)
    return [{"N": float(n), "D": float(d), **summarize(dr[:, j])} for j, (n, d) in enumerate(zip(N, D, strict=True))]


def param_summary(idata: az.InferenceData) -> dict[str, dict[str, float]]:
    """Natural parameters with ``mean, sd, q05, q50, q95, r_hat, ess_bulk``.

    R-hat and ESS are computed on the natural parameters themselves (they are deterministic
    functions of the sampled ones, so their chains mix as those do).
    """
    law = metadata(idata)["law"]
    names = [*PARAM_NAMES[law], "sigma"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a single chain: R-hat is NaN, reported as null
        rhat = az.rhat(idata, var_names=names)
    ess = az.ess(idata, var_names=names, method="bulk")
    draws = param_draws(idata, names)
    return {n: {**summarize(draws[n]), "r_hat": float(rhat[n]), "ess_bulk": float(ess[n])} for n in names}


def _positive_array(x: Any, field: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(x, dtype=float)).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"expected finite numbers > 0, got {np.asarray(x).tolist()}", field=field)
    return arr
