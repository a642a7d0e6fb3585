"""Posterior quantities derived from a fit: compute-optimal N*, D*, L*(C), and predictions.

Everything here works from an InferenceData written by :func:`bayescale.fit` alone. For an
averaged fit every quantity is drawn from the weighted mixture of the laws (law ``m`` supplies
``weight_m`` of the draws), and losses carry the model discrepancy: each mixture draw adds
``rate * d * t`` to the log loss, with ``rate`` a draw of the fitted discrepancy rate, ``d``
the point's distance beyond the runs in decades
(:func:`bayescale.averaging.extrapolation_distance`) and ``t`` a standard Student-t (Gaussian for
a Gaussian likelihood); with observation noise the two combine into one Student-t of scale
``sqrt(sigma^2 + (rate d)^2)``. Intervals are equal-tailed: ``q05``, ``q50``, ``q95``, with ``mean``
and ``sd``. Every ``optimal`` and ``predict`` row says how far beyond the runs it is
(``extrapolation``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from . import (
    _jax,  # noqa: F401
    convergence,
)
from ._idata import Posterior
from .averaging import DataRange, extrapolation_distance, mixture_counts, noise_draws
from .discrepancy import by_part, conditioned, gaussian_draws
from .errors import InputError
from .laws import EXPONENTS, PARAM_NAMES, broadcast_draws, compute_optimal, loss
from .store import AVERAGED, law_view, laws_of, metadata, weights_of

QUANTILES = (0.05, 0.5, 0.95)


def summarize(x: Any) -> dict[str, float]:
    """``mean, sd, q05, q50, q95`` of a 1-D sample."""
    x = np.asarray(x, dtype=float).ravel()
    q = np.quantile(x, QUANTILES)
    return {"mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1)),
            "q05": float(q[0]), "q50": float(q[1]), "q95": float(q[2])}


# --------------------------------------------------------------------------------------------
# the mixture of laws


@dataclass
class Mixture:
    """How a posterior's draws combine: which draws of which law, and the discrepancy rate."""

    parts: list[tuple[str, Any, np.ndarray]]  # (law, one-law view, indices of its flattened draws)
    rate: np.ndarray | None  # discrepancy rate per mixture draw (None: a one-law fit, no discrepancy)
    data: DataRange  # what the runs covered
    C_max: float
    corpus_tokens: float | None
    likelihood: str  # the fit's noise model, which the discrepancy shares
    nu: float
    gps: list[Any] | None = None  # per part: its law's discrepancy process (discrepancy.Conditioned) or None

    def gp_terms(self, N: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The structured discrepancy at points given per draw ``(draws, P)`` (or per point ``(P,)``):
        its mean and variance on log loss ``(draws, P)``, and the noise left beside it per draw
        ``(draws, 1)`` (None where no law has a process: the laws' own sigma stands)."""
        gps = self.gps or [None] * len(self.parts)
        m, v, noise = by_part(gps, [len(idx) for _, _, idx in self.parts], N, D)
        if all(g is None for g in gps):
            return m, v, None
        return m, v, noise[:, None]

    @property
    def size(self) -> int:
        """Number of mixture draws."""
        return sum(len(idx) for _, _, idx in self.parts)


def mixture(idata: Posterior) -> Mixture:
    """The draws that make up ``idata``'s posterior: for an averaged fit, ``round(weight * S)``
    draws of each law (evenly spaced over its chains; ``S`` draws per law), for one law all."""
    meta = metadata(idata)
    cd = idata.constant_data
    N, D, C = (np.asarray(cd[k].values, float) for k in ("N", "D", "C"))
    data = DataRange.of(N, D, C)
    cfg = meta["config"]
    common = (data, float(C.max()), meta.get("corpus_tokens"), cfg["likelihood"], float(cfg["nu"]))
    if meta["law"] != AVERAGED:
        S = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
        return Mixture([(meta["law"], idata, np.arange(S))], None, *common)
    laws = laws_of(idata)
    w = weights_of(idata)
    S = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    counts = mixture_counts([w[law] for law in laws], S)
    parts = [(law, law_view(idata, law), np.linspace(0, S - 1, n).round().astype(int))
             for law, n in zip(laws, counts, strict=True) if n > 0]
    rate = np.asarray(idata.posterior["discrepancy_rate"].values, float).reshape(-1)
    return Mixture(parts, rate, *common, gps=[conditioned(idata, law, meta) for law, _, _ in parts])


def param_draws(idata: Posterior, names: Sequence[str] | None = None, *, law: str | None = None
                ) -> dict[str, np.ndarray]:
    """Posterior draws of a law's natural parameters (and sigma), flattened over chains.

    An averaged posterior holds several laws with different parameters: name one with ``law``.
    """
    meta = metadata(idata)
    if meta["law"] == AVERAGED:
        if law is None:
            raise InputError(f"this posterior averages {', '.join(laws_of(idata))}: name the law whose "
                             "parameters you want (law=...)", field="law")
        idata = law_view(idata, law)
    elif law is not None and law != meta["law"]:
        raise InputError(f"this posterior holds the {meta['law']} law, not {law!r}", field="law")
    law = metadata(idata)["law"]
    names = list(names) if names is not None else [*PARAM_NAMES[law], "sigma"]
    post = idata.posterior
    return {n: np.asarray(post[n].values, dtype=float).reshape(-1) for n in names}


def _law_params(view: Any, law: str, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in param_draws(view, PARAM_NAMES[law]).items()}


def exponents(idata: Posterior) -> dict[str, np.ndarray]:
    """Draws of ``a`` and ``b`` with ``N* ∝ C^a`` and ``D* ∝ C^b`` (the mixture's, if averaged)."""
    a, b = [], []
    for law, view, idx in mixture(idata).parts:
        aa, bb = EXPONENTS[law](_law_params(view, law, idx))
        a.append(np.broadcast_to(np.asarray(aa, float), idx.shape))
        b.append(np.broadcast_to(np.asarray(bb, float), idx.shape))
    return {"a": np.concatenate(a), "b": np.concatenate(b)}


def _discrepancy_scale(mix: Mixture, d: np.ndarray) -> np.ndarray:
    """Scale of the model discrepancy on log loss, ``(draws, points)``, at distances ``d``: one per
    point ``(points,)``, or per draw and point ``(draws, points)``. Zero for a one-law fit."""
    shape = (mix.size, np.shape(d)[-1])
    if mix.rate is None:
        return np.zeros(shape)
    return np.broadcast_to(mix.rate[: mix.size, None] * d, shape)


def optimal_draws(idata: Posterior, compute: float | Iterable[float], *, seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Draws of ``N_opt, D_opt, loss, tokens_per_param``, shape ``(draws, budgets)``.

    ``loss`` is the law's loss at the optimum, with the model discrepancy at the optimum's
    distance beyond the runs (averaged fits), without observation noise.
    """
    return _optimal_draws(mixture(idata), _positive_array(compute, "--compute"), seed)


def _optimal_draws(mix: Mixture, C: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {"N_opt": [], "D_opt": [], "loss": []}
    for law, view, idx in mix.parts:
        out = compute_optimal(law, broadcast_draws(_law_params(view, law, idx)), jnp.asarray(C)[None, :])
        for k in parts:
            parts[k].append(np.asarray(out[k]))
    dr = {k: np.concatenate(v) for k, v in parts.items()}
    d = extrapolation_distance(dr["N_opt"], dr["D_opt"], mix.data, np.broadcast_to(C, dr["N_opt"].shape))
    m, v, _ = mix.gp_terms(dr["N_opt"], dr["D_opt"])
    rng = np.random.default_rng(seed)
    dr["loss"] = dr["loss"] * np.exp(m + gaussian_draws(v, rng)
                                     + noise_draws(_discrepancy_scale(mix, d), rng, likelihood=mix.likelihood,
                                                   nu=mix.nu))
    dr["tokens_per_param"] = dr["D_opt"] / dr["N_opt"]
    dr["distance"] = d
    return dr


def _extrapolation(mix: Mixture, C: float, N: np.ndarray, D: np.ndarray, d: np.ndarray) -> dict[str, Any]:
    """How far beyond the runs a row is (``N``, ``D``: one value, or the draws of an optimum)."""
    lo_n, hi_n = (10.0**x for x in mix.data.log10_N)
    lo_d, hi_d = (10.0**x for x in mix.data.log10_D)
    n_out = (N < lo_n) | (N > hi_n)
    d_out = (D < lo_d) | (D > hi_d)
    out: dict[str, Any] = {
        "compute_ratio": float(C / mix.C_max),
        "distance_decades": float(np.median(d)),
        "N_outside": bool(np.median(N) < lo_n or np.median(N) > hi_n),
        "D_outside": bool(np.median(D) < lo_d or np.median(D) > hi_d),
    }
    if np.size(N) > 1:  # draws of an optimum: how sure is it that the optimum is outside
        out["N_outside_share"] = float(np.mean(n_out))
        out["D_outside_share"] = float(np.mean(d_out))
    corpus = mix.corpus_tokens
    out["beyond_corpus"] = None if corpus is None else bool(np.median(D) > corpus)
    out["below_smallest_compute"] = bool(np.log10(C) < mix.data.log10_C[0])
    out["extrapolating"] = bool(out["compute_ratio"] > 1 or out["N_outside"] or out["D_outside"]
                                or out["beyond_corpus"] or out["below_smallest_compute"])
    return out


def optimal(idata: Posterior, compute: float | Iterable[float]) -> list[dict[str, Any]]:
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
        One entry per budget: ``compute``, summaries of ``N_opt``, ``D_opt``, ``loss`` (the loss
        reached at the optimum, without observation noise) and ``tokens_per_param``, and
        ``extrapolation``: ``compute_ratio`` (C / largest observed C), ``distance_decades``,
        whether the median ``N_opt`` / ``D_opt`` fall outside the observed N / D range (and the
        posterior share of draws that do), ``beyond_corpus`` (D* above the training corpus,
        where the runs record it; else null), ``below_smallest_compute`` and ``extrapolating``
        (any of these).
    """
    C = _positive_array(compute, "--compute")
    mix = mixture(idata)
    dr = _optimal_draws(mix, C, 0)
    rows = []
    for j, c in enumerate(C):
        row: dict[str, Any] = {"compute": float(c)}
        row.update({k: summarize(dr[k][:, j]) for k in ("N_opt", "D_opt", "loss", "tokens_per_param")})
        row["extrapolation"] = _extrapolation(mix, float(c), dr["N_opt"][:, j], dr["D_opt"][:, j], dr["distance"][:, j])
        rows.append(row)
    return rows


def predict_draws(
    idata: Posterior,
    N: Any,
    D: Any,
    *,
    C: Any = None,
    noise: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Posterior (predictive) draws of the loss at each ``(N, D)``, shape ``(draws, points)``.

    With ``noise=True`` each draw adds the fitted observation noise (Student-t or Gaussian on
    log loss), so the interval is where a new run's measured loss should fall; with
    ``noise=False`` it is the interval of the law's mean. Averaged fits add the model
    discrepancy at each point's distance beyond the runs either way. ``C`` is each point's
    compute as a table records it (``6ND`` when not given), used for that distance.
    """
    N, D = _paired(N, D)
    return _predict_draws(mixture(idata), N, D, None if C is None else _positive_array(C, "C"), noise, seed)


def _log_mean_and_scale(mix: Mixture, N: np.ndarray, D: np.ndarray, C: np.ndarray | None, noise: bool
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every mixture draw's log-mean loss at each point and the two parts of its error there, all
    ``(draws, points)``: the scale of the likelihood-shaped part (the rate discrepancy at the
    point's distance beyond the runs, and with ``noise`` the observation noise: one Student-t, or
    Gaussian, of scale ``sqrt(sigma^2 + scale^2)``), and the variance of the structured
    discrepancy's Gaussian part (its mean is in the log-mean)."""
    mu = np.concatenate([np.log(np.asarray(loss(law, broadcast_draws(_law_params(view, law, idx)), N[None, :],
                                                D[None, :]))) for law, view, idx in mix.parts])
    m, v, gp_noise = mix.gp_terms(N, D)
    scale = _discrepancy_scale(mix, extrapolation_distance(N, D, mix.data, C))
    if noise:
        sigma = np.concatenate([param_draws(view, ["sigma"])["sigma"][idx] for _, view, idx in mix.parts])[:, None]
        if gp_noise is not None:  # a law with a discrepancy process: its noise is what the process leaves
            sigma = np.where(np.isnan(gp_noise), sigma, gp_noise)
        scale = np.sqrt(sigma**2 + scale**2)
    return mu + m, scale, v


def _predict_draws(mix: Mixture, N: np.ndarray, D: np.ndarray, C: np.ndarray | None, noise: bool,
                   seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu, scale, v = _log_mean_and_scale(mix, N, D, C, noise)
    return np.exp(mu + gaussian_draws(v, rng) + noise_draws(scale, rng, likelihood=mix.likelihood, nu=mix.nu))


def log_predictive_density(idata: Posterior, N: Any, D: Any, loss_: Any, *, C: Any = None) -> np.ndarray:
    """Each observed loss's log predictive density (of its log loss) under the posterior: the
    mixture of laws with the model discrepancy at the run's distance beyond the fitted runs, and
    the observation noise, averaged over draws exactly (no sampling of the noise).

    The proper score of a prediction at runs the fit did not see: summed over held-out runs it
    is what stacking maximises and what a calibration study should rank methods by beside
    coverage (a median can be close while the interval around it is wrong, and vice versa).
    """
    from scipy.special import logsumexp

    from .averaging import noise_logpdf

    N, D = _paired(N, D)
    y = np.log(_positive_array(loss_, "loss"))
    if y.shape != N.shape:
        raise InputError(f"{y.size} losses for {N.size} (N, D) points", field="loss")
    mix = mixture(idata)
    mu, scale, v = _log_mean_and_scale(mix, N, D, None if C is None else _positive_array(C, "C"), True)
    # the structured discrepancy's Gaussian part joins the Student-t: one Student-t of the summed
    # variance (the convolution has no closed form; see averaging.pointwise_log_density)
    lp = noise_logpdf(y[None, :], mu, np.sqrt(scale**2 + v), mix.likelihood, mix.nu)
    return logsumexp(lp, axis=0) - np.log(lp.shape[0])


def predict(
    idata: Posterior,
    N: Any,
    D: Any,
    *,
    C: Any = None,
    noise: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Posterior predictive summaries of the loss at each ``(N, D)`` pair, with quartiles and the
    row's ``extrapolation`` (as in :func:`optimal`, for the point itself)."""
    N, D = _paired(N, D)
    given = None if C is None else _positive_array(C, "C")
    mix = mixture(idata)
    dr = _predict_draws(mix, N, D, given, noise, seed)
    Cs = 6.0 * N * D if given is None else given
    d = extrapolation_distance(N, D, mix.data, Cs)
    rows = []
    for j, (n, dd) in enumerate(zip(N, D, strict=True)):
        q25, q75 = np.quantile(dr[:, j], [0.25, 0.75])
        rows.append({"N": float(n), "D": float(dd), **summarize(dr[:, j]), "q25": float(q25), "q75": float(q75),
                     "extrapolation": _extrapolation(mix, float(Cs[j]), np.array(n), np.array(dd), np.array(d[j]))})
    return rows


def param_summary(idata: Posterior, *, law: str | None = None) -> dict[str, dict[str, float]]:
    """Natural parameters with ``mean, sd, q05, q50, q95, r_hat, ess_bulk`` (of ``law``, for an
    averaged posterior).

    R-hat and ESS are computed on the natural parameters themselves (they are deterministic
    functions of the sampled ones, so their chains mix as those do).
    """
    if metadata(idata)["law"] == AVERAGED:
        if law is None:
            raise InputError(f"this posterior averages {', '.join(laws_of(idata))}: name the law (law=...)",
                             field="law")
        idata = law_view(idata, law)
    law = metadata(idata)["law"]
    names = [*PARAM_NAMES[law], "sigma"]
    post = idata.posterior
    draws = param_draws(idata, names)
    # a single chain: R-hat is NaN, reported as null
    return {n: {**summarize(draws[n]), "r_hat": convergence.rhat(np.asarray(post[n].values, float)),
                "ess_bulk": convergence.ess_bulk(np.asarray(post[n].values, float))} for n in names}


def _paired(N: Any, D: Any) -> tuple[np.ndarray, np.ndarray]:
    N = _positive_array(N, "--N")
    D = _positive_array(D, "--D")
    if N.shape != D.shape:
        raise InputError(f"N and D must pair up; got {N.size} N values and {D.size} D values", field="--D")
    return N, D


def _positive_array(x: Any, field: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(x, dtype=float)).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"expected finite numbers > 0, got {np.asarray(x).tolist()}", field=field)
    return arr
