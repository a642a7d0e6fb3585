"""Averaging over the family of laws, with weights and a model discrepancy learned by validating
forward in compute.

Why: a posterior that takes one law as exactly true is too sure of itself exactly where a user
decides, at budgets beyond the runs. Fitted on the cheaper runs of public studies, the single
Chinchilla-law posterior put 30-57% of the expensive runs inside its 90% intervals; the errors
were one-sided and grew with the distance from the data (the law's shape, not noise). Which law
is right, and how wrong any law is out there, are the largest uncertainties of an extrapolation.
LOO does not measure them: it scores fit among the runs one has.

What this module does, for a table of runs:

1. **Leave-future-out validation.** The runs are ordered by compute and cut at a few budgets
   (:func:`cut_points`; whole isoFLOP slices stay together). For each cut every law is fitted to
   the runs below it and predicts the runs above it. The first cut is an exact refit; later cuts
   reuse the last exact fit by Pareto-smoothed importance sampling (adding the newly included runs'
   likelihood) where the Pareto k of those weights is below 0.7, and refit exactly where it is not
   (the approximate LFO-CV of Bürkner, Gabry and Vehtari 2020). All refits of a law share the
   sampler compiled for the whole table (the cut is a mask).
2. **Model discrepancy.** Each law's prediction of log loss gets an extra error of scale
   ``tau * d``, where ``d`` is how far the point lies beyond the runs the law was fitted to, in
   decades (:func:`extrapolation_distance`: the largest excess of log10 N, log10 D or log10 C
   over the fitted range), and ``tau`` is a rate per decade; it shares the noise's Student-t
   shape, and the two combine into one Student-t of scale ``sqrt(sigma^2 + (tau d)^2)``. Inside
   the data ``d = 0`` and nothing changes. ``tau`` is learned from the forward predictions: its
   posterior on a grid, from a half-normal prior (scale :data:`RATE_PRIOR_SCALE`), shared by the
   family (see :func:`calibrate`).
3. **Stacking.** The laws' forward predictive densities (with their discrepancy) are stacked
   (Yao, Vehtari, Simpson and Gelman 2018): the weights maximise the summed log density of the
   mixture at the held-out runs.

The final predictive for a new point is the weighted mixture of the laws' full-data posteriors,
each with its discrepancy at the point's distance from all the runs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln, logsumexp

from . import _jax  # noqa: F401  (float64)
from .sampler import pad_runs

#: cuts are placed between budget levels: runs whose log10 C differ by less than this are one level
#: (an isoFLOP slice, or a table's rounding of its budgets)
LEVEL_TOLERANCE = 0.05
#: the prior on the discrepancy rate tau: half-normal with this scale, in relative error per decade
RATE_PRIOR_SCALE = 0.05
#: grid on which the rate's posterior is evaluated (relative error of log loss per decade)
RATE_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 0.3, 24)])
#: PSIS is trusted below this Pareto k (Vehtari et al. 2024); above it the cut is refitted exactly
PARETO_K_MAX = 0.7


@dataclass(frozen=True)
class LFOConfig:
    """Where to cut the runs for forward validation, and how hard to sample the refits."""

    cuts: int = 3  # cut points
    first: float = 0.5  # the first cut keeps about this share of the runs below it
    last: float = 0.8  # the last cut keeps about this share
    min_runs: int = 10  # never fit fewer runs than this at a cut
    warmup: int = 200  # warm-up of each exact refit, per chain (started where the full fit ended)
    draws: int = 200  # draws of each exact refit, per chain
    psis: bool = True  # reuse the last exact fit by PSIS where sound


# --------------------------------------------------------------------------------------------
# where to cut, and how far beyond the data a point lies


def budget_levels(C: np.ndarray, tol: float = LEVEL_TOLERANCE) -> np.ndarray:
    """Level index of every run: runs are sorted by log10 C and a new level starts where the gap
    to the previous run exceeds ``tol`` decades."""
    lc = np.log10(np.asarray(C, dtype=float))
    order = np.argsort(lc, kind="stable")
    level = np.zeros(len(lc), int)
    level[order] = np.cumsum(np.concatenate([[0], np.diff(lc[order]) > tol]))
    return level


def cut_points(C: np.ndarray, config: LFOConfig = LFOConfig()) -> list[float]:
    """Budgets at which to cut the runs: a cut ``c`` fits the runs with ``C < c``.

    Cuts fall between budget levels, near the shares ``first ... last`` of the runs, with at least
    ``min_runs`` runs below and one level above every cut. May return fewer cuts than asked (none
    for a table too small or with too few levels to validate forward).
    """
    C = np.asarray(C, dtype=float)
    level = budget_levels(C)
    n_levels = level.max() + 1
    below = np.array([np.sum(level < k) for k in range(1, n_levels)])  # runs below level k
    starts = np.array([C[level == k].min() for k in range(1, n_levels)])  # cut value: level k's start
    ok = below >= config.min_runs
    if not ok.any():
        return []
    shares = np.linspace(config.first, config.last, config.cuts) if config.cuts > 1 else np.array([config.first])
    wanted = shares * len(C)
    chosen: list[int] = []
    for w in wanted:
        cand = np.flatnonzero(ok)
        k = int(cand[np.argmin(np.abs(below[cand] - w))])
        if k not in chosen:
            chosen.append(k)
    return sorted(float(starts[k]) for k in chosen)


@dataclass(frozen=True)
class DataRange:
    """The ranges of N, D and C that a fit saw, in log10 (C as the runs record it)."""

    log10_N: tuple[float, float]
    log10_D: tuple[float, float]
    log10_C: tuple[float, float]

    @classmethod
    def of(cls, N: np.ndarray, D: np.ndarray, C: np.ndarray | None = None) -> DataRange:
        """The ranges of these runs (``C = 6ND`` when not given)."""
        ln, ld = np.log10(np.asarray(N, float)), np.log10(np.asarray(D, float))
        lc = np.log10(6.0) + ln + ld if C is None else np.log10(np.asarray(C, float))
        return cls(_span(ln), _span(ld), _span(lc))

    def to_json(self) -> dict[str, list[float]]:
        """As stored in a posterior's metadata."""
        return {"log10_N": list(self.log10_N), "log10_D": list(self.log10_D), "log10_C": list(self.log10_C)}

    @classmethod
    def from_json(cls, d: dict[str, list[float]]) -> DataRange:
        """From a posterior's metadata."""
        return cls(tuple(d["log10_N"]), tuple(d["log10_D"]), tuple(d["log10_C"]))  # type: ignore[arg-type]


def _span(x: np.ndarray) -> tuple[float, float]:
    return float(np.min(x)), float(np.max(x))


def _excess(x: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    return np.maximum(0.0, np.maximum(x - lo_hi[1], lo_hi[0] - x))


def extrapolation_distance(N: np.ndarray, D: np.ndarray, ref: DataRange, C: np.ndarray | None = None) -> np.ndarray:
    """How far each ``(N, D)`` lies beyond the fitted runs, in decades: the largest excess of
    log10 N, log10 D or log10 C beyond (above or below) the range ``ref`` saw; 0 inside.

    ``C`` is the compute of each point as the runs record it (a table's own budget column);
    ``6ND`` when not given.
    """
    ln, ld = np.log10(np.asarray(N, float)), np.log10(np.asarray(D, float))
    lc = np.log10(6.0) + ln + ld if C is None else np.log10(np.asarray(C, float))
    return np.maximum.reduce([_excess(ln, ref.log10_N), _excess(ld, ref.log10_D), _excess(lc, ref.log10_C)])


# --------------------------------------------------------------------------------------------
# predictive densities with the discrepancy integrated out


def noise_logpdf(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, likelihood: str, nu: float) -> np.ndarray:
    """Log density of log loss ``y`` around ``mu`` with scale ``sigma`` (numpy, broadcasting)."""
    z = (y - mu) / sigma
    if likelihood == "gaussian":
        return -0.5 * z * z - np.log(sigma) - 0.5 * math.log(2 * math.pi)
    c = gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * math.log(nu * math.pi)
    return c - np.log(sigma) - (nu + 1) / 2 * np.log1p(z * z / nu)


def pointwise_log_density(
    y: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    scale: np.ndarray,
    *,
    likelihood: str,
    nu: float,
    log_weights: np.ndarray | None = None,
) -> np.ndarray:
    """``log p(y_i)`` under posterior draws, with a discrepancy of scale ``scale_i`` on log loss.

    The discrepancy and the observation noise combine into one Student-t (or Gaussian) of scale
    ``sqrt(sigma^2 + scale^2)``: a systematic error with the same heavy tails as the noise. (A
    Gaussian discrepancy convolved with Student-t noise has no closed form, and fixed quadratures
    of it err by nats in one regime or another: Gauss-Hermite where the discrepancy is several
    times the noise, as it is beyond the Chinchilla runs; Gauss-Laguerre over the t's mixing
    variable in the tails.)

    Parameters
    ----------
    y
        Observed log losses, shape ``(n,)``.
    mu, sigma
        The law's log-mean per draw and point ``(S, n)`` and noise scale per draw ``(S,)`` (or
        per draw and point ``(S, n)``: a grouped fit's noise, or measurement errors added).
    scale
        Discrepancy scale per point ``(n,)``, or ``(G, n)`` for G discrepancy scales at once
        (the result is then ``(G, n)``).
    log_weights
        Normalised log importance weights of the draws ``(S,)``; uniform when ``None``.
    """
    S = mu.shape[0]
    lw = np.full(S, -math.log(S)) if log_weights is None else np.asarray(log_weights, float)
    scale = np.asarray(scale, float)
    sigma = np.asarray(sigma, float)
    sigma = sigma if sigma.ndim == 2 else sigma[:, None]
    n = len(y)  # padded to a bucketed size, so a growing table compiles this once per bucket
    out = _log_density(pad_runs(y, n), pad_runs(mu, n), pad_runs(sigma, n), pad_runs(np.atleast_2d(scale), n),
                       jnp.asarray(lw), likelihood=likelihood, nu=float(nu))
    out = np.asarray(out)[:, :n]
    return out if scale.ndim == 2 else out[0]


@partial(jax.jit, static_argnames=("likelihood", "nu"))
def _log_density(y: jax.Array, mu: jax.Array, sigma: jax.Array, scales: jax.Array, lw: jax.Array, *,
                 likelihood: str, nu: float) -> jax.Array:
    def one(scale: jax.Array) -> jax.Array:  # (n,) -> (n,)
        tot = jnp.sqrt(sigma ** 2 + scale[None, :] ** 2)
        z = (y[None, :] - mu) / tot
        if likelihood == "gaussian":
            lp = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
        else:
            c = float(gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * math.log(nu * math.pi))
            lp = c - (nu + 1) / 2 * jnp.log1p(z * z / nu)
        return jax.scipy.special.logsumexp(lp - jnp.log(tot) + lw[:, None], axis=0)

    return jax.lax.map(one, scales)


def noise_draws(scale: np.ndarray, rng: np.random.Generator, *, likelihood: str, nu: float) -> np.ndarray:
    """Errors on log loss with these scales, of the likelihood's shape: Student-t with ``nu``
    degrees of freedom, or Gaussian. The observation noise, the discrepancy alone (the error of
    the law's mean) and the two combined (see :func:`pointwise_log_density`) are all drawn so."""
    z = rng.standard_t(nu, size=np.shape(scale)) if likelihood == "student_t" else rng.standard_normal(np.shape(scale))
    return np.asarray(scale) * z


def rate_posterior(lpd_grid: np.ndarray, grid: np.ndarray = RATE_GRID,
                   prior_scale: float = RATE_PRIOR_SCALE) -> np.ndarray:
    """Posterior weights of the discrepancy rate over ``grid`` given forward log densities.

    ``lpd_grid[g, i]`` is point ``i``'s forward log density with rate ``grid[g]``. The prior is
    half-normal with ``prior_scale``, discretised with the trapezoid rule on the (uneven) grid.
    """
    widths = np.gradient(grid)
    log_prior = -0.5 * (grid / prior_scale) ** 2 + np.log(widths)
    lp = log_prior + lpd_grid.sum(axis=1)
    return np.exp(lp - logsumexp(lp))


def stacking_weights(
    lpd: np.ndarray,
    *,
    point_weights: np.ndarray | None = None,
    alpha: float = 1.0,
    iters: int = 1000,
    tol: float = 1e-10,
) -> tuple[np.ndarray, float]:
    """Stacking weights (Yao et al. 2018) from held-out log densities ``lpd[m, i]`` of M models.

    Maximises ``sum_i v_i log sum_m w_m exp(lpd[m, i]) + (alpha - 1) sum_m log w_m`` over the
    simplex by EM (monotone): ``v`` are the points' weights (default 1) and ``alpha`` a symmetric
    Dirichlet prior on the weights (1: none, plain stacking). Returns the weights and the
    objective's data term at them.
    """
    M, n = lpd.shape
    v = np.ones(n) if point_weights is None else np.asarray(point_weights, float)
    w = np.full(M, 1.0 / M)
    prev = -np.inf
    for _ in range(iters):
        lr = np.log(np.maximum(w, 1e-300))[:, None] + lpd
        tot = logsumexp(lr, axis=0)
        obj = float(v @ tot) + (alpha - 1) * float(np.sum(np.log(np.maximum(w, 1e-300))))
        w = (np.exp(lr - tot) @ v + alpha - 1) / (v.sum() + M * (alpha - 1))
        if obj - prev < tol:
            break
        prev = obj
    w = w / w.sum()
    data = float(v @ logsumexp(np.log(np.maximum(w, 1e-300))[:, None] + lpd, axis=0))
    return w, data


def psis_log_weights(log_ratios: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed normalised log importance weights and the Pareto k diagnostic."""
    from .convergence import psis

    return psis(log_ratios)


def mixture_counts(weights: Sequence[float], total: int) -> np.ndarray:
    """How many of ``total`` mixture draws each law contributes (largest remainders): the
    mixture's draws are then exact to 1/``total`` in every quantile."""
    w = np.asarray(weights, float)
    raw = w / w.sum() * total
    n = np.floor(raw).astype(int)
    n[np.argsort(raw - n, kind="stable")[::-1][: total - n.sum()]] += 1
    return n


# --------------------------------------------------------------------------------------------
# forward validation, discrepancy and weights for a table of runs


@dataclass
class Fold:
    """One law's forward predictions at one cut."""

    cut: float  # runs with C < cut were fitted
    n_fit: int
    future: np.ndarray  # indices of the runs scored (C >= cut)
    mu: np.ndarray  # (S, n) log-mean of the law per draw at the scored runs
    sigma: np.ndarray  # (S, n) noise scale per draw at the scored runs (the group's; measurement error added)
    d: np.ndarray  # (n,) distance of the scored runs beyond the fitted ones, decades
    log_weights: np.ndarray | None  # PSIS weights of the draws (None: an exact refit)
    method: str  # "exact" or "psis"
    pareto_k: float | None  # of the PSIS weights, where tried


def forward_folds(runs: Any, law: str, config: Any, rng_key: Any, *, quiet: bool = True,
                  warm_start: Any = None, progress: str | None = None,
                  executor: Executor | None = None) -> tuple[list[float], list[Fold]]:
    """Leave-future-out predictions of ``law`` at the cut points of ``runs``.

    The first cut is an exact refit of the runs below it (priors anchored on those runs, as a
    user fitting only them would have); at each later cut the last exact refit is reweighted by
    PSIS with the likelihood of the runs added since, and refitted exactly where the Pareto k of
    those weights exceeds :data:`PARETO_K_MAX` (or ``config.psis`` is off). Exact refits start
    from ``warm_start`` (the full fit's chains and adaptation) where given. A grouped table is
    refitted grouped (every group's law scores its own runs), with runs' measurement errors
    where the table has them. ``progress`` (the law's stage label) shows a progress line on
    stderr for each exact refit ("LABEL, forward cut 2/3"); None shows none. With
    ``config.structured_discrepancy`` each cut's law gets its misfit process, fitted to the runs
    below the cut with its hyperparameters integrated (see the note above :data:`SMALL_FOLD`).
    ``executor`` (one worker): where the cuts' processes are fitted, so that a cut's process
    search (numpy) runs while the next cut samples (JAX); the folds are the same as without it.
    """
    import jax

    from .discrepancy import features, hyperparameter_posterior, residuals
    from .inference import Groups, log_mean_draws, measurement_se, pointwise_log_lik, sample_law
    from .models import Anchors, resolve_priors

    N, D, y, C = (runs[c].to_numpy(float) for c in ("N", "D", "loss", "C"))
    lN, lD, ly = np.log(N), np.log(D), np.log(y)
    lfo = LFOConfig(cuts=config.lfo_cuts, warmup=config.lfo_warmup, draws=config.lfo_draws, psis=config.psis)
    cuts = cut_points(C, lfo)
    cfg = replace(config, law=law, warmup=lfo.warmup, draws=lfo.draws)
    folds: list[Fold] = []
    ref: tuple[np.ndarray, dict[str, np.ndarray], Any] | None = None  # (mask, flat samples, anchors)
    grp = Groups.of(runs, cfg, tuple(config.family))
    gi = None if grp.pooling is None else grp.index
    se = measurement_se(runs)
    at = lambda x, sel: None if x is None else x[sel]  # noqa: E731

    def misfit(m: np.ndarray, fut: np.ndarray, mu_all: np.ndarray, lw: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The process learned below the cut, carried to the runs above: its mean and variance there."""
        fitted = np.flatnonzero(m)
        r = residuals(ly[fitted], mu_all[:, fitted], lw)
        X = features(N[fitted], D[fitted])
        # the hyperparameters integrated, as the full fit's process has them (see the note above SMALL_FOLD)
        _, w, hyper, _ = hyperparameter_posterior(X, r, at(gi, fitted), likelihood=config.likelihood,
                                                  nu=config.nu, seed=config.seed)
        S, Xs = mu_all.shape[0], features(N[fut], D[fut])
        which = np.arange(S) * len(hyper) // S  # in blocks, so that every SCORE_THIN-th draw sees them all
        shift, var = np.empty((S, len(fut))), np.empty((S, len(fut)))
        for k, gp in enumerate(hyper):
            mk, vk = gp.predict(X, r, Xs, group=at(gi, fitted), group_s=at(gi, fut), weights=w)
            shift[which == k], var[which == k] = mk, gp.noise**2 + vk
        return shift, var

    pending: list[tuple[Any, ...]] = []  # per cut: what its Fold needs, its process (or the future of it)
    for k, c in enumerate(cuts):
        m = C < c
        lw, khat, method = None, None, "exact"
        if lfo.psis and ref is not None:
            new = m & ~ref[0]
            log_r = pointwise_log_lik(law, ref[1], lN[new], lD[new], ly[new], anchors=ref[2],
                                      likelihood=config.likelihood, nu=config.nu, group=at(gi, new),
                                      se=at(se, new)).sum(axis=-1)
            lw, khat = psis_log_weights(log_r)
            method = "psis" if khat <= PARETO_K_MAX else "exact"
        if method == "exact":
            anchors = Anchors.from_data(N[m], D[m], y[m])
            priors = resolve_priors(law, anchors, dict(config.priors))
            # a few runs leave a broad posterior whose score beyond them is noisy, and cost little
            # per draw: take more draws there (see SMALL_FOLD)
            more = min(SMALL_FOLD_MAX, max(1.0, SMALL_FOLD / max(int(m.sum()), 1)))
            draws = sample_law(law, lN, lD, ly, anchors=anchors, priors=priors,
                               config=replace(cfg, draws=int(round(cfg.draws * more))),
                               rng_key=jax.random.fold_in(rng_key, k), mask=m, warm_start=warm_start,
                               group=gi, pooling=grp.pooling, se=se,
                               progress=None if progress is None else f"{progress}, forward cut {k + 1}/{len(cuts)}")
            flat = {s: v.reshape(-1, *v.shape[2:]) for s, v in draws.samples.items()}
            ref, lw = (m, flat, anchors), None
        fut = np.flatnonzero(~m)
        # at every run (one shape for every cut: the jitted law compiles once), then split
        mu_all = log_mean_draws(law, ref[1], lN, lD, ref[2], group=gi)  # (S, runs)
        sigma = ref[1]["sigma"][:, None] if gi is None else ref[1]["g_sigma"][:, gi[fut]]
        gp: Any = None
        if config.structured_discrepancy:  # the misfit learned below the cut, carried to the runs above
            gp = (misfit(m, fut, mu_all, lw) if executor is None
                  else executor.submit(misfit, m, fut, mu_all, lw))
        pending.append((float(c), m, fut, mu_all[:, fut], sigma, gp, lw, method, khat))
        if not quiet:
            how = "refit" if method == "exact" else f"PSIS, k={khat:.2f}"
            print(f"  {law}: cut at C = {c:.3g}: {m.sum()} runs fitted, {len(fut)} scored ({how})",
                  file=sys.stderr, flush=True)
    for c, m, fut, mu, sigma, gp, lw, method, khat in pending:
        if gp is not None:
            shift, var = gp.result() if isinstance(gp, Future) else gp
            mu = mu + shift
            sigma = np.sqrt(np.atleast_2d(var))
        if se is not None:
            sigma = np.sqrt(sigma**2 + se[fut] ** 2)
        sigma = np.broadcast_to(sigma, mu.shape)
        d = extrapolation_distance(N[fut], D[fut], DataRange.of(N[m], D[m], C[m]), C[fut])
        folds.append(Fold(c, int(m.sum()), fut, mu, sigma, d, lw, method, khat))
    return cuts, folds


# A forward fold's misfit process (fitted to the runs below its cut) has its hyperparameters
# integrated by :func:`bayescale.discrepancy.hyperparameter_posterior`, each draw of the fold's law
# taking one of the process's draws, as the full fit's predictions do. Until 2026-12-07 a fold kept
# the process at one EM mode (:func:`bayescale.discrepancy.fit_gp`), and which mode EM reached
# turned on the sampler's seed: fitted to the 165 cheapest Chinchilla rows, the shared law's score
# of the 20 runs beyond the second cut read 64.1 at seed 0 and 81.1 at seed 2 (without a process,
# the same at both), its weight 0.89 or 0.94, and the 90% width of log N*(5.88e23) 0.57-0.78 over
# four seeds; integrated, 63.3-64.1, 0.80-0.84 and 0.82-0.85. Out of sample (bench/calibration.py)
# the 122 held-out runs' mean log predictive density went from 3.310 to 3.342 (the bench in 123 s
# instead of 149 s, though a fit of the 240 Chinchilla rows takes about 4 s more).

#: an exact forward refit of fewer runs than this takes proportionally more draws, up to
#: SMALL_FOLD_MAX times ``lfo_draws``. Why: the score of runs beyond a fold is a log-mean of
#: narrow densities over a broad posterior, dominated by the few draws that land near each run;
#: on Gadre's c4_original ladder (15 runs below the first cut) its Monte Carlo error with 200
#: draws per chain was 0.5-0.75 nats per fold (delta method, with the draws' ESS), the first
#: cut's score of the shared law read 30.9, 33.2 and 31.7 at three sampler seeds, and the
#: stacking weights went 0.37 / 0.70 / 0.48 with it. At 800 draws per chain, every other one
#: scored: 31.0, 31.9, 31.9 and 0.39 / 0.54 / 0.55. Small folds are cheap per draw (the calibration
#: bench's 12 small tables took 190-225 s instead of 160); Chinchilla's (100-190 runs) keep 200.
SMALL_FOLD = 100
SMALL_FOLD_MAX = 4.0
#: a forward fit's draws are scored every SCORE_THIN-th (neighbouring draws of a chain are
#: alike: half of them carry most of the information at half the cost)
SCORE_THIN = 2
#: a symmetric Dirichlet prior on the weights: the forward scores of two or three cuts are weak
#: evidence about which law extrapolates best (on the Marin tables they favoured the law that
#: then did worst beyond the data), so the weights move from equal only as far as that evidence
#: carries them
WEIGHT_PRIOR = 2.0


@dataclass
class Calibration:
    """What forward validation says about the family: weights, the discrepancy rate, scores."""

    weights: np.ndarray  # per law
    rate_posterior: np.ndarray  # over RATE_GRID
    scores: dict[str, list[dict[str, Any]]]  # per law, per cut


def calibrate(laws: Sequence[str], y: np.ndarray, folds: dict[str, list[Fold]], *, likelihood: str,
              nu: float, independent: bool = False) -> Calibration:
    """Weights and discrepancy rate of the family from every law's forward folds.

    Without a structured discrepancy, every cut's scored runs share the misfit of the law fitted
    below it (their errors are one systematic error, not independent ones), so each cut counts as
    one observation: a run's log density enters with weight ``1 / (runs scored at its cut)``. With
    one (``independent``: the folds' predictions carry the misfit process learned below the cut,
    :mod:`bayescale.discrepancy`), what the runs share is modelled, and each run counts once.
    The rate is shared by the family
    (the error left once the laws' disagreement is in the mixture): for each rate on
    :data:`RATE_GRID` the weights are stacked (with the :data:`WEIGHT_PRIOR` Dirichlet prior),
    the rate's posterior weighs the stacked mixture's score by the half-normal prior, and the
    weights are averaged over that posterior.
    """
    cuts = folds[laws[0]]
    if not cuts:  # nothing to validate forward with: the priors speak
        post = rate_posterior(np.zeros((len(RATE_GRID), 0)))
        return Calibration(np.full(len(laws), 1.0 / len(laws)), post, {law: [] for law in laws})
    point_w = np.concatenate([np.full(len(f.future), 1.0 if independent else 1.0 / len(f.future)) for f in cuts])
    lpd = np.empty((len(RATE_GRID), len(laws), len(point_w)))
    for j, law in enumerate(laws):
        parts = []
        for f in folds[law]:
            keep = np.arange(0, len(f.sigma), SCORE_THIN)
            lw = None if f.log_weights is None else f.log_weights[keep] - logsumexp(f.log_weights[keep])
            parts.append(pointwise_log_density(y[f.future], f.mu[keep], f.sigma[keep], RATE_GRID[:, None] * f.d,
                                               likelihood=likelihood, nu=nu, log_weights=lw))
        lpd[:, j, :] = np.concatenate(parts, axis=1)
    stacked = [stacking_weights(lpd[g], point_weights=point_w, alpha=WEIGHT_PRIOR) for g in range(len(RATE_GRID))]
    post = rate_posterior(np.array([[s[1]] for s in stacked]))
    weights = np.sum([p * s[0] for p, s in zip(post, stacked, strict=True)], axis=0)
    scores: dict[str, list[dict[str, Any]]] = {}
    for j, law in enumerate(laws):
        integrated = logsumexp(np.log(np.maximum(post, 1e-300))[:, None] + lpd[:, j, :], axis=0)
        start, rows = 0, []
        for f in folds[law]:
            sl = slice(start, start + len(f.future))
            rows.append({"cut": f.cut, "n_fit": f.n_fit, "n_scored": int(len(f.future)), "method": f.method,
                         "pareto_k": f.pareto_k, "mean_distance": float(np.mean(f.d)),
                         "elpd": float(np.sum(lpd[0, j, sl])), "elpd_with_discrepancy": float(np.sum(integrated[sl]))})
            start += len(f.future)
        scores[law] = rows
    return Calibration(weights / weights.sum(), post, scores)


def fit_family(runs: Any, config: Any, *, quiet: bool = False, source: str | None = None,
               filter: str | None = None, progress: bool = False) -> Any:  # noqa: A002
    """Fit every law of ``config.family``, validate them forward, and store the weighted family.

    See the module docstring for the method and :mod:`bayescale.store` for the file's layout.
    ``progress`` shows a progress line on stderr for each sampler it runs (each law's full fit and
    forward refits: "kaplan law 2/3, forward cut 1/3").
    """
    import time

    import jax

    from .discrepancy import DRAWS_KEY, RESIDUAL, WEIGHT
    from .inference import build_idata, fit_law, group_metadata, law_metadata, report_diagnostics, run_metadata
    from .models import law_overrides
    from .store import AVERAGED, SEP

    laws = list(config.family)
    t0 = time.perf_counter()
    key = jax.random.PRNGKey(config.seed)
    fits, folds, cuts, gps = {}, {}, [], {}
    per_law = {law: replace(config, law=law, priors=tuple(law_overrides(law, dict(config.priors), tuple(laws)).items()))
               for law in laws}  # every override checked before any fitting
    keys = [jax.random.split(jax.random.fold_in(key, j)) for j in range(len(laws))]  # (full fit, forward folds)
    stages = [f"{law} law {j + 1}/{len(laws)}" if progress else None for j, law in enumerate(laws)]
    # Every law's full fit first, then every law's forward folds: a law's misfit process (numpy,
    # seconds) is searched on a worker thread while the next laws sample (JAX), and each cut's
    # process while the next cut samples. The order changes no number: each law has its own keys.
    pool = ThreadPoolExecutor(max_workers=1)  # one worker: the tasks run in the order submitted
    try:
        for j, law in enumerate(laws):
            fits[law] = fit_law(runs, law, per_law[law], keys[j][0], quiet=quiet, family=tuple(laws),
                                progress=None if stages[j] is None else f"{stages[j]}, all runs")
            if config.structured_discrepancy:
                gps[law] = _discrepancy_process(runs, fits[law], config, pool)
        for j, law in enumerate(laws):
            cuts, folds[law] = forward_folds(runs, law, per_law[law], keys[j][1], quiet=quiet,
                                             warm_start=fits[law].adapted, progress=stages[j], executor=pool)
        gps = {law: f.result() for law, f in gps.items()}
    finally:  # an error or an interrupt drops the searches not yet started
        pool.shutdown(wait=True, cancel_futures=True)
    cal = calibrate(laws, np.log(runs["loss"].to_numpy(float)), folds, likelihood=config.likelihood, nu=config.nu,
                    independent=config.structured_discrepancy)
    rng = np.random.default_rng(config.seed)
    shape = fits[laws[0]].diverging.shape
    groups: dict[str, dict[str, np.ndarray]] = {}
    for law in laws:
        for g, vars_ in fits[law].groups(law + SEP).items():
            groups.setdefault(g, {}).update(vars_)
    groups["posterior"]["discrepancy_rate"] = rng.choice(RATE_GRID, size=shape, p=cal.rate_posterior)
    C = runs["C"].to_numpy(float)
    seconds = time.perf_counter() - t0
    meta = run_metadata(runs, config, source=source, filter=filter)
    meta["law"] = AVERAGED
    meta["laws"] = {law: {**law_metadata(fits[law]), "weight": float(w), "lfo": cal.scores[law]}
                    for law, w in zip(laws, cal.weights, strict=True)}
    for law, (gp, _, _, hyper) in gps.items():
        meta["laws"][law]["discrepancy_gp"] = gp.to_json()
        meta["laws"][law][DRAWS_KEY] = hyper
    rate = RATE_GRID
    cdf = np.cumsum(cal.rate_posterior)
    meta["averaging"] = {
        "method": ("stacking of leave-future-out predictive densities ("
                   + ("each run counts once, the misfit they share modelled by each law's Gaussian process over "
                      "(log10 N, log10 D); " if config.structured_discrepancy else "each cut counts once; ")
                   + f"Dirichlet({WEIGHT_PRIOR:g}) prior on the weights), with a model discrepancy of scale "
                   "rate x distance on log loss, combined with the noise as sqrt(sigma^2 + (rate x distance)^2)"),
        "cuts": cuts,
        "n_levels": int(budget_levels(C).max() + 1),
        "data_range": DataRange.of(runs["N"].to_numpy(float), runs["D"].to_numpy(float), C).to_json(),
        "distance": "decades beyond the fitted runs: largest excess of log10 N, log10 D or log10 C",
        "discrepancy": {
            "rate_grid": [float(x) for x in rate], "rate_posterior": [float(x) for x in cal.rate_posterior],
            "rate_mean": float(rate @ cal.rate_posterior),
            "rate_q05": float(rate[np.searchsorted(cdf, 0.05)]), "rate_q95": float(rate[np.searchsorted(cdf, 0.95)]),
            "rate_prior": f"HalfNormal({RATE_PRIOR_SCALE:g}) per decade",
        },
        "seconds": seconds,
    }
    if not cuts:
        meta["averaging"]["note"] = ("too few runs or budget levels to validate forward: equal weights, and the "
                                     "discrepancy rate is its prior")
    grouped = [f.groups_ for f in fits.values() if f.groups_ is not None]
    if grouped:
        meta.update(group_metadata(grouped[0]))
    idata = build_idata(runs, groups, meta, grouped[0] if grouped else None,
                        run_data={k: v for law, (_, r, w, _) in gps.items()
                                  for k, v in ((f"{law}{SEP}{RESIDUAL}", r), (f"{law}{SEP}{WEIGHT}", w))})
    if not quiet:
        print("weights (forward validation): " + ", ".join(f"{law} {w:.2f}" for law, w in zip(laws, cal.weights,
              strict=True)) + f"; discrepancy rate {100 * meta['averaging']['discrepancy']['rate_mean']:.1f}%"
              " of the loss per decade beyond the data", file=sys.stderr, flush=True)
    report_diagnostics(idata, seconds, quiet)
    return idata


def _discrepancy_process(runs: Any, fit: Any, config: Any, executor: Executor
                         ) -> Future[tuple[Any, np.ndarray, np.ndarray, dict[str, Any]]]:
    """A law's discrepancy process (:mod:`bayescale.discrepancy`) fitted to its residuals from its
    full-data posterior mean: its hyperparameters' mode, those residuals (a grouped fit's by each
    run's group), the runs' robustness weights, and the hyperparameters' posterior draws (JSON).
    The residuals are computed here (JAX); the search and sampling (numpy) run on ``executor``."""
    from .discrepancy import features, hyper_draws_to_json, hyperparameter_posterior, residuals
    from .inference import log_mean_draws

    N, D = runs["N"].to_numpy(float), runs["D"].to_numpy(float)
    ly = np.log(runs["loss"].to_numpy(float))
    gi = None if fit.groups_ is None or fit.groups_.pooling is None else fit.groups_.index
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in fit.samples.items()}
    r = residuals(ly, log_mean_draws(fit.law, flat, np.log(N), np.log(D), fit.anchors, group=gi))

    def search() -> tuple[Any, np.ndarray, np.ndarray, dict[str, Any]]:
        gp, w, draws, ess = hyperparameter_posterior(features(N, D), r, gi, likelihood=config.likelihood,
                                                     nu=config.nu, seed=config.seed)
        return gp, r, w, hyper_draws_to_json(draws, ess)

    return executor.submit(search)
