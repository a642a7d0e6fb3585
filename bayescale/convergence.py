"""Convergence diagnostics and Pareto-smoothed importance weights in NumPy alone.

Why not ArviZ here: ``import arviz`` (0.23) imports matplotlib's pyplot and scipy.stats at
start-up, about 0.9 s of every command's start on the 2-core machine, and ``fit``, ``summary``,
``optimal`` and ``predict`` never draw anything. These are the estimators ArviZ's defaults
compute, from the papers that define them, so the numbers reported are those ArviZ would give
(the tests compare both on the same draws to 1e-9):

* R-hat: rank-normalised split R-hat, the larger of the bulk (ranks of the draws) and tail
  (ranks of the distance from the median) versions (Vehtari, Gelman, Simpson, Carpenter and
  Bürkner 2021, "Rank-normalization, folding, and localization", Bayesian Analysis 16(2)).
* ESS bulk: the effective sample size of the rank-normalised split chains; ESS tail: the
  smaller of the ESS of the indicators ``x <= q05`` and ``x <= q95`` (same paper). The
  autocorrelations are summed with Geyer's initial positive and monotone sequences (Geyer
  1992), as Stan does.
* PSIS: the largest ``min(n/5, 3 sqrt(n/r_eff))`` importance ratios are replaced by expected
  order statistics of a generalised Pareto fitted to them (Zhang and Stephens 2009, with the
  weakly informative prior on its shape of Vehtari et al. 2024, "Pareto smoothed importance
  sampling", JMLR 25); the fitted shape ``k`` says whether the weights can be trusted
  (``k <= 0.7``).

Arrays are ``(chains, draws)``; :func:`rhat` and the ESS functions reduce the last two axes of
anything shaped ``(chains, draws, ...)`` by moving them first.
"""

from __future__ import annotations

import math

import numpy as np

#: Offset of the normal scores of ranks (Blom's ``(r - 3/8) / (n + 1/4)``).
_BLOM = 0.375


def _split(x: np.ndarray) -> np.ndarray:
    """Each chain cut into its first and last halves (the middle draw of an odd length dropped)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened ``x`` (ties share their mean rank), in ``x``'s shape."""
    flat = x.ravel()
    order = np.argsort(flat, kind="mergesort")
    s = flat[order]
    # runs of equal values: their first and last positions in the sorted order
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks.reshape(x.shape)


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """Rank normalisation: each value replaced by the normal quantile of its (Blom-offset) rank."""
    from scipy.special import ndtri  # scipy.special alone: scipy.stats is what costs start-up time

    return ndtri((_average_ranks(x) - _BLOM) / (x.size + 1 - 2 * _BLOM))


def _rhat_plain(x: np.ndarray) -> float:
    """Potential scale reduction of chains ``x`` (chains, draws), Gelman-Rubin with n-1/n."""
    m, n = x.shape
    within = np.mean(np.var(x, axis=1, ddof=1))
    between = n * np.var(np.mean(x, axis=1), ddof=1)
    return float(np.sqrt(((n - 1) / n * within + between / n) / within))


def _unusable(x: np.ndarray, min_draws: int = 4) -> bool:
    return x.shape[1] < min_draws or not np.all(np.isfinite(x))


def rhat(x: np.ndarray) -> float:
    """Rank-normalised split R-hat of ``x`` (chains, draws); NaN with fewer than 2 chains."""
    x = np.asarray(x, float)
    if x.shape[0] < 2 or _unusable(x):
        return math.nan
    halves = _split(x)
    bulk = _rhat_plain(_normal_scores(halves))
    tail = _rhat_plain(_normal_scores(np.abs(halves - np.median(halves))))  # folded about the median
    return max(bulk, tail)


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance of each row of ``x`` at lags 0..n-1 (by FFT, zero-padded: no wrap)."""
    n = x.shape[1]
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(x - x.mean(axis=1, keepdims=True), n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def _ess_plain(x: np.ndarray) -> float:
    """Effective sample size of chains ``x`` (chains, draws), Geyer's initial monotone sequence."""
    m, n = x.shape
    if np.ptp(x) < np.finfo(float).resolution:  # constant: the draws are as good as independent
        return float(x.size)
    acov = _autocovariance(x)
    mean_var = acov[:, 0].mean() * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n + (np.var(x.mean(axis=1), ddof=1) if m > 1 else 0.0)
    rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus  # combined autocorrelation at every lag
    rho[0] = 1.0
    # initial positive sequence: sum pairs (rho[t], rho[t+1]) while their sum stays positive
    keep = np.zeros(n)
    keep[:2] = rho[:2]
    t, last_pair_positive = 1, rho[0] + rho[1] > 0
    even = 0.0
    while t < n - 3 and last_pair_positive:
        even, odd = rho[t + 1], rho[t + 2]
        last_pair_positive = even + odd > 0
        if even + odd >= 0:
            keep[t + 1], keep[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        keep[max_t + 1] = even
    # initial monotone sequence: pair sums may not increase
    t = 1
    while t <= max_t - 2:
        if keep[t + 1] + keep[t + 2] > keep[t - 1] + keep[t]:
            keep[t + 1] = keep[t + 2] = (keep[t - 1] + keep[t]) / 2.0
        t += 2
    total = m * n
    tau = -1.0 + 2.0 * keep[: max_t + 1].sum() + keep[max_t + 1: max_t + 2].sum()
    tau = max(tau, 1.0 / math.log10(total))
    return float(total / tau)


def ess_bulk(x: np.ndarray) -> float:
    """Bulk effective sample size of ``x`` (chains, draws): of its rank-normalised split chains."""
    x = np.asarray(x, float)
    if _unusable(x):
        return math.nan
    return _ess_plain(_normal_scores(_split(x)))


def ess_tail(x: np.ndarray) -> float:
    """Tail effective sample size of ``x`` (chains, draws): the smaller ESS of ``x <= q05`` and
    ``x <= q95``, where most of a 90% interval's Monte Carlo error comes from."""
    x = np.asarray(x, float)
    if _unusable(x):
        return math.nan
    return min(_ess_plain(_split((x <= np.quantile(x, q)).astype(float))) for q in (0.05, 0.95))


def per_element(fn, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """``fn`` (a diagnostic of one ``(chains, draws)`` array) for each trailing element of ``x``."""
    x = np.asarray(x, float)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return np.array([fn(flat[..., i]) for i in range(flat.shape[-1])]).reshape(x.shape[2:])


# --------------------------------------------------------------------------------------------
# Pareto-smoothed importance sampling


def _gpd_fit(tail: np.ndarray) -> tuple[float, float]:
    """Shape ``k`` and scale of a generalised Pareto fitted to ``tail`` (ascending, > 0): the
    posterior mean over a grid of the profile parameter (Zhang and Stephens 2009), then ``k``
    shrunk towards 0.5 as by 10 pseudo-observations."""
    n = tail.size
    grid = 30 + int(math.sqrt(n))
    j = np.arange(1, grid + 1, dtype=float)
    theta = 1.0 / tail[-1] + (1.0 - np.sqrt(grid / (j - 0.5))) / (3.0 * tail[int(n / 4 + 0.5) - 1])
    k_grid = np.mean(np.log1p(-theta[:, None] * tail[None, :]), axis=1)
    log_lik = n * (np.log(-theta / k_grid) - k_grid - 1.0)
    w = 1.0 / np.exp(log_lik[None, :] - log_lik[:, None]).sum(axis=1)
    usable = w >= 10 * np.finfo(float).eps
    w, theta = w[usable] / w[usable].sum(), theta[usable]
    theta_hat = float(np.sum(theta * w))
    k = float(np.mean(np.log1p(-theta_hat * tail)))
    scale = -k / theta_hat
    return (n * k + 10 * 0.5) / (n + 10), scale


def _gpd_quantiles(p: np.ndarray, k: float, scale: float) -> np.ndarray:
    if scale <= 0:
        return np.full_like(p, np.nan)
    if abs(k) < np.finfo(float).eps:
        return -scale * np.log1p(-p)
    return scale * np.expm1(-k * np.log1p(-p)) / k


def psis(log_ratios: np.ndarray, r_eff: float = 1.0) -> tuple[np.ndarray, float]:
    """Pareto-smoothed, normalised log importance weights of one set of ``log_ratios`` (draws,)
    and the fitted Pareto shape ``k`` (``inf`` when the tail is too short to fit)."""
    from scipy.special import logsumexp

    x = np.array(log_ratios, dtype=float).ravel()
    n = x.size
    x -= x.max()
    tail_len = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n / r_eff))))
    order = np.argsort(x)
    cut = max(x[order[-tail_len - 1]], np.log(np.finfo(float).tiny))
    tail_idx = np.flatnonzero(x > cut)
    k = math.inf
    if tail_idx.size > 4:
        by_size = tail_idx[np.argsort(x[tail_idx])]
        excess = np.exp(x[by_size]) - math.exp(cut)
        k, scale = _gpd_fit(excess)
        if math.isfinite(k):
            probs = (np.arange(by_size.size) + 0.5) / by_size.size
            x[by_size] = np.log(_gpd_quantiles(probs, k, scale) + math.exp(cut))
            x[x > 0] = 0.0  # no smoothed ratio above the largest raw one
    return x - logsumexp(x), float(k)
