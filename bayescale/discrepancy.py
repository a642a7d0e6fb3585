"""A structured model discrepancy: a Gaussian process over (log10 N, log10 D) on a law's residuals.

Why: no law is exactly right, and its misfit is not noise. Fitted to the cheaper runs of public
studies, every law of the family leaves residuals that vary smoothly over the (N, D) plane (a
law too steep at small N, too flat along one isoFLOP arm), and the runs a user predicts next
share that misfit wherever they lie near runs already trained: a larger budget's isoFLOP slice
reuses model sizes of the smaller ones with more tokens. Measured on the calibration bench
(fit the cheaper runs, predict the expensive ones; the prototype of 2026-11-27), adding this
process to each law of the family took the held-out median error from 0.74% to 0.31% on
Chinchilla and from 1.72% to 0.65% on the three Marin ladders, and the mean log predictive
density over all 122 held-out runs from 2.44 to 3.16; on Gadre (9 held-out runs, 0.2-1.3
decades beyond the data in N) it changed little (error 0.44% -> 0.57%, width 13.3% -> 14.2%).

The model, per law (a two-stage, "cut" treatment: the law's posterior is not refitted):

    r_i = log y_i - E_post[log mu(N_i, D_i)] = f(x_i) + e_i,
    f ~ GP(0, a^2 exp(-1/2 sum_k ((x_k - x'_k) / l_k)^2)),  e_i ~ Normal(0, s^2),
    x = (log10 N, log10 D),

with ``a ~ HalfNormal(0.05)`` (the misfit is a few percent of the loss) and ``log l_k ~
Normal(0, 1)`` (length scales of about a decade), the hyperparameters at their posterior mode.
A grouped fit has one process per group, independent, with hyperparameters shared. A prediction
at a new point adds the process's conditional mean to the law's log-mean and replaces the noise
by ``sqrt(s^2 + var f)``: inside the data the misfit is corrected, far beyond it the mean falls
back to the law and the variance to ``a^2``, the misfit's size in the runs. (The process's own
noise ``s``, not the law's ``sigma``, is the noise left once the misfit is modelled: the law's
``sigma`` absorbed the misfit as noise.) A group with no runs gets the prior: mean 0, variance
``a^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the process's marginal sd on log loss: HalfNormal with this scale
AMPLITUDE_PRIOR = 0.05
#: log length scale (decades of N or D) ~ Normal(0, LENGTH_PRIOR_SD)
LENGTH_PRIOR_SD = 1.0
FEATURES = ("log10 N", "log10 D")
_JITTER = 1e-10
_BOUNDS = [(-12.0, 0.0), (-12.0, 0.0), (-4.0, 4.0), (-4.0, 4.0)]  # log a, log s, log l_N, log l_D
#: starting points of the hyperparameter search (log a, log s, log l, log l): the modes are many
_STARTS = [(la, ls, ll, ll) for la in (-5.0, -4.0) for ll in (-1.0, 0.0, 0.7) for ls in (-5.0, -4.0)]
#: a forward fold's search: the full table's mode and the first six of these
_FOLD_STARTS = _STARTS[:6]


def features(N: Any, D: Any) -> np.ndarray:
    """Inputs of the process, ``(..., 2)``: log10 N and log10 D."""
    return np.stack([np.log10(np.asarray(N, float)), np.log10(np.asarray(D, float))], axis=-1)


@dataclass(frozen=True)
class ResidualGP:
    """Hyperparameters of a law's discrepancy process (log-loss units; length scales in decades)."""

    amplitude: float
    noise: float
    length_scales: tuple[float, float]

    def to_json(self) -> dict[str, Any]:
        return {"amplitude": self.amplitude, "noise": self.noise, "length_scales": list(self.length_scales),
                "features": list(FEATURES)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ResidualGP:
        return cls(float(d["amplitude"]), float(d["noise"]), (float(d["length_scales"][0]),
                                                              float(d["length_scales"][1])))

    def theta(self) -> np.ndarray:
        """The optimiser's coordinates: log a, log s, log l_N, log l_D (clipped into its bounds)."""
        x = np.log([self.amplitude, self.noise, *self.length_scales])
        return np.clip(x, [b[0] for b in _BOUNDS], [b[1] for b in _BOUNDS])

    def _k(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        ell = np.asarray(self.length_scales)
        return self.amplitude**2 * np.exp(-0.5 * (((A[:, None, :] - B[None, :, :]) / ell) ** 2).sum(-1))

    def predict(self, X: np.ndarray, r: np.ndarray | None, Xs: np.ndarray, *, group: np.ndarray | None = None,
                group_s: np.ndarray | None = None, weights: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Conditional mean and variance of the misfit ``f`` at ``Xs`` ``(P, 2)`` given residuals
        ``r`` at ``X`` (with the runs' robustness ``weights``, see :func:`robust_weights`). With
        groups, a point sees only its own group's runs; a point of a group with no runs (or ``r``
        None: no runs at all) gets the prior, mean 0 and variance ``a^2``."""
        from scipy.linalg import cho_factor, cho_solve

        Xs = np.asarray(Xs, float).reshape(-1, 2)
        m = np.zeros(len(Xs))
        v = np.full(len(Xs), self.amplitude**2)
        if r is None or len(r) == 0:
            return m, v
        w = np.ones(len(r)) if weights is None else np.asarray(weights, float)
        for key, idx in _blocks(group, len(r)).items():
            at = np.arange(len(Xs)) if key is None else np.flatnonzero(np.asarray(group_s) == key)
            if len(at) == 0:
                continue
            K = self._k(X[idx], X[idx]) + np.diag(self.noise**2 / w[idx] + _JITTER)
            cf = cho_factor(K, lower=True)
            Ks = self._k(Xs[at], X[idx])
            m[at] = Ks @ cho_solve(cf, r[idx])
            v[at] = np.maximum(self.amplitude**2 - np.einsum("ij,ji->i", Ks, cho_solve(cf, Ks.T)), 0.0)
        return m, v


def _blocks(group: np.ndarray | None, n: int) -> dict[Any, np.ndarray]:
    """The runs of each group (one block of all ``n`` runs where there are no groups)."""
    if group is None:
        return {None: np.arange(n)}
    g = np.asarray(group)
    return {k: np.flatnonzero(g == k) for k in np.unique(g)}


def _objective(theta: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, np.ndarray]:
    """Negative log posterior of the hyperparameters (log a, log s, log l_N, log l_D) and its gradient.

    ``parts``: per group, the squared differences of the runs' inputs ``(2, n, n)``, the residuals
    and the runs' robustness weights (the noise variance of a run is ``s^2 / weight``).
    """
    from scipy.linalg import cho_solve, lapack

    la, ls, *lell = theta
    a2, s2, inv_l2 = math.exp(2 * la), math.exp(2 * ls), np.exp(-2 * np.asarray(lell))
    f, g = 0.0, np.zeros(4)
    for sq, r, w in parts:
        n = len(r)
        R = np.exp(-0.5 * (inv_l2[0] * sq[0] + inv_l2[1] * sq[1]))
        K = a2 * R
        K[np.diag_indices(n)] += s2 / w + _JITTER
        L, info = lapack.dpotrf(K, lower=1)
        if info != 0:
            return 1e10, np.zeros(4)
        alpha = cho_solve((L, True), r)
        f += 0.5 * r @ alpha + np.log(np.diag(L)).sum() + 0.5 * n * math.log(2 * math.pi)
        Kinv, _ = lapack.dpotri(L, lower=1)  # lower triangle of K^-1
        Kinv = np.tril(Kinv) + np.tril(Kinv, -1).T
        WR = (Kinv - np.outer(alpha, alpha)) * R  # 2 d f / d K, times R
        g[0] += a2 * WR.sum()
        g[1] += s2 * np.sum((np.diag(Kinv) - alpha * alpha) / w)
        for k in range(2):
            g[2 + k] += 0.5 * a2 * inv_l2[k] * np.sum(WR * sq[k])
    # priors: a ~ HalfNormal(AMPLITUDE_PRIOR), log l ~ Normal(0, LENGTH_PRIOR_SD)
    f += 0.5 * a2 / AMPLITUDE_PRIOR**2 + 0.5 * float(np.sum(np.square(lell))) / LENGTH_PRIOR_SD**2
    g[0] += a2 / AMPLITUDE_PRIOR**2
    g[2:] += np.asarray(lell) / LENGTH_PRIOR_SD**2
    return f, g


def _squared_differences(X: np.ndarray) -> np.ndarray:
    return np.stack([(X[:, k, None] - X[None, :, k]) ** 2 for k in range(X.shape[1])])


def fit_gp(X: np.ndarray, r: np.ndarray, group: np.ndarray | None = None, *, likelihood: str = "gaussian",
           nu: float = 4.0, iterations: int = 30, tol: float = 1e-2, start: ResidualGP | None = None
           ) -> tuple[ResidualGP, np.ndarray]:
    """The hyperparameters' posterior mode given residuals ``r`` at ``X`` (groups independent,
    hyperparameters shared), and the runs' robustness weights.

    Gaussian noise: one fit from several starts (L-BFGS with the exact gradient), weights 1.
    Student-t noise (the law's likelihood): the process's noise is Student-t too, as a scale
    mixture of normals, fitted by EM. Each run's weight is its expected precision given the
    process, ``(nu + 1) / (nu + E[(r - f)^2] / s^2)``, and the noise variance of a run is
    ``s^2 / weight``. A run far from the process's mean (a diverged run, a unit error) then bends
    neither the process nor its noise. The smooth misfit that the law leaves is not down-weighted:
    the process explains it. EM stops when no hyperparameter moves by more than ``tol`` (relative)
    in a step, or after ``iterations`` steps. ``start``: a nearby mode (the full table's, for a
    forward fold of it) to start from as well as the default starts.
    """
    from scipy.optimize import minimize

    X, r = np.asarray(X, float), np.asarray(r, float)
    blocks = list(_blocks(group, len(r)).values())
    sq = [_squared_differences(X[idx]) for idx in blocks]
    w = np.ones(len(r))
    starts = ([np.array(st) for st in _STARTS] if start is None
              else [start.theta()] + [np.array(st) for st in _FOLD_STARTS])
    prev = None
    for it in range(1 + (iterations if likelihood == "student_t" else 0)):
        parts = [(q, r[idx], w[idx]) for q, idx in zip(sq, blocks, strict=True)]
        best = None
        for x0 in starts:
            res = minimize(_objective, x0, args=(parts,), jac=True, method="L-BFGS-B", bounds=_BOUNDS)
            if best is None or res.fun < best.fun:
                best = res
        la, ls, ln, ld = best.x
        gp = ResidualGP(float(np.exp(la)), float(np.exp(ls)), (float(np.exp(ln)), float(np.exp(ld))))
        if it == iterations or likelihood != "student_t" or (prev is not None and np.max(np.abs(best.x - prev)) < tol):
            break
        prev = best.x
        m, v = gp.predict(X, r, X, group=group, group_s=group, weights=w)  # f at the runs themselves
        w = (nu + 1.0) / (nu + ((r - m) ** 2 + v) / gp.noise**2)
        starts = [best.x]  # later EM steps move little: start from the last mode
    return gp, w


def residuals(y_log: np.ndarray, mu: np.ndarray, log_weights: np.ndarray | None = None) -> np.ndarray:
    """Residuals of log loss from the posterior mean of the law's log-mean ``mu`` ``(S, n)``
    (draws weighted by normalised ``log_weights`` where given)."""
    if log_weights is None:
        return np.asarray(y_log, float) - np.mean(mu, axis=0)
    w = np.exp(np.asarray(log_weights, float))
    return np.asarray(y_log, float) - (w / w.sum()) @ mu


@dataclass(frozen=True)
class Conditioned:
    """A law's discrepancy process conditioned on its residuals (``r`` None: on no runs, the prior)."""

    gp: ResidualGP
    X: np.ndarray  # (n, 2) features of the runs
    r: np.ndarray | None  # (n,) residuals
    w: np.ndarray | None = None  # (n,) robustness weights (None: all 1)

    def at(self, N: Any, D: Any) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the misfit at ``(N, D)`` (any broadcastable shapes; the result has it)."""
        N, D = np.broadcast_arrays(np.asarray(N, float), np.asarray(D, float))
        m, v = self.gp.predict(self.X, self.r, features(N.ravel(), D.ravel()), weights=self.w)
        return m.reshape(N.shape), v.reshape(N.shape)

    @property
    def noise(self) -> float:
        return self.gp.noise


def by_part(gps: list[Conditioned | None], sizes: list[int], N: Any, D: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the misfit for draws made of consecutive parts (one law each, ``sizes``
    draws, its process or None), ``(draws, P)``, at points shared by every draw (``N``, ``D``:
    ``(P,)``) or given per draw (``(draws, P)``). A part with no process adds nothing."""
    shape = (sum(sizes), np.shape(N)[-1])
    m, v = np.zeros(shape), np.zeros(shape)
    start = 0
    for size, gp in zip(sizes, gps, strict=True):
        sl = slice(start, start + size)
        start += size
        if gp is not None:
            m[sl], v[sl] = gp.at(*(x[sl] if np.ndim(x) == 2 else x for x in (N, D)))
    return m, v


def gaussian_draws(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draws of the process's part of a prediction, of variance ``v`` (nothing drawn where there is
    none, so that a posterior without a process gives the draws it gave before processes existed)."""
    return np.sqrt(v) * rng.standard_normal(v.shape) if np.any(v) else np.zeros_like(v)


RESIDUAL = "gp_residual"  # constant_data variable (LAW.gp_residual in an averaged file): a run's residual
WEIGHT = "gp_weight"  # ... and its robustness weight


def conditioned(idata: Any, law: str, meta: dict[str, Any]) -> Conditioned | None:
    """The discrepancy process of ``law`` in an averaged posterior ``idata`` (None where the file has
    none: a one-law fit, or a file written before it existed). Conditioned on the runs' residuals
    where the posterior is one group's (or ungrouped); the prior for a whole grouped posterior (its
    population law) and for a group with no runs."""
    spec = meta.get("laws", {}).get(law, {}).get("discrepancy_gp")
    if spec is None:
        return None
    cd = idata.constant_data
    X = features(np.asarray(cd["N"].values, float), np.asarray(cd["D"].values, float))
    name = f"{law}.{RESIDUAL}"
    one_group = "group" not in cd or len(np.unique(np.asarray(cd["group"].values))) <= 1
    if name not in cd or not one_group:
        return Conditioned(ResidualGP.from_json(spec), X, None)
    w_name = f"{law}.{WEIGHT}"
    w = np.asarray(cd[w_name].values, float) if w_name in cd else None
    return Conditioned(ResidualGP.from_json(spec), X, np.asarray(cd[name].values, float), w)
