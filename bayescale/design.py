"""Which run to train next: expected information gain (EIG) per FLOP, from posterior draws.

For a candidate run at ``(N, D)`` the observation is its log loss ``y``. Given posterior draw
``theta_j`` it has density ``f_j(y) = f0((y - mu_j) / s_j) / s_j``: ``mu_j`` the law's log loss,
``s_j = sqrt(sigma_j^2 + (rate_j d)^2)`` (the fitted noise plus, for a law-averaged posterior, the
model discrepancy at the candidate's distance ``d`` beyond the runs), ``f0`` the fitted noise shape
(Student-t with ``nu`` degrees of freedom, or Gaussian). The draws of an averaged posterior are the
weighted mixture of the laws (:func:`bayescale.posterior.mixture`), so a run whose outcome the laws
predict differently carries information about which law holds, and is valued for it.

**The estimator** (:func:`mutual_information`). ``EIG = I(y; theta) = E_j [KL(f_j || p)]`` with
``p = sum_j w_j f_j`` the predictive. Each draw's inner expectation over its own noise is a
deterministic quadrature (Gauss-Hermite for Gaussian noise; for Student-t, Gauss-Legendre after
mapping the line onto (-1, 1) by ``z = tan(pi x / 2)``, see :func:`noise_quadrature`): no sampling
of ``y`` at all (Rao-Blackwellised). ``log p`` is needed at every draw's nodes (``M x K`` points,
each a sum over ``M`` draws); it is a function of ``y`` alone, so it is evaluated exactly on a grid
(uniform across the draws' bulk with spacing at most :data:`GRID_RESOLUTION` times the narrowest
noise scale, geometric in the tails) and interpolated linearly to the nodes. That turns an
``M^2 K`` cost into ``M G`` (``G`` a few hundred grid points), and every remaining step is a
matrix product, which is what makes 1,000 candidates cheap. The estimate is the EIG of the
``M``-draw empirical posterior; it cannot exceed ``log M``, and :func:`rank` warns when it comes
within :data:`HEADROOM` of that. Beside it come two bounds on the EIG of the posterior the draws
stand for, from a contrast set of ``L`` draws and the other draws as outer samples (Foster et al.
2019): nested Monte Carlo, which leaves the outer draw out of the inner average (an upper bound in
expectation), and prior-contrastive estimation, which puts it in (a lower bound, at most
``log(L + 1)``). With ``L < M`` the estimate sits between them; a wide bracket says the draws are
too few for the question.

**Targeted EIG** ``I(y; phi)`` for an objective ``phi(theta)`` (log N*(C), log D*(C), the log loss
at the optimum or at a table's rows, jointly): after an outcome ``y`` the draws are reweighted by
``f_j(y)``; ``phi``'s posterior is approximated by a Gaussian with the reweighted mean and
covariance, so ``I ~ 1/2 log det Cov(phi) - E_y[1/2 log det Cov(phi | y)]``. It is exact for a
linear-Gaussian model (tested against the closed form) and measures how much a run shrinks
``phi``'s spread. Its limits: a ``phi`` whose posterior is skewed or multimodal (laws that put N*
far apart) is summarised by its covariance only, so the value is the Gaussian-equivalent
reduction, not the exact mutual information; and an outcome that leaves only a handful of draws
with weight cannot show a posterior narrower than the draws resolve (each covariance gets the
prior's covariance over ``M`` added, so the value stays below about ``P/2 log M``). It is clipped
to ``[0, full EIG]``, the range the exact value obeys. The reweighted covariances are, again,
functions of ``y`` alone: computed on the grid, interpolated to the nodes.

**Batches** (:class:`Batch`, :func:`select`): by the chain rule the joint EIG of runs
``x_1..x_B`` is the sum of each one's EIG given the outcomes of those before it. Earlier outcomes
are integrated out over scenarios: ``S`` outer draws, each with outcomes of the earlier picks
simulated from it (stratified noise quantiles, permuted across scenarios: a Latin hypercube);
within a scenario every draw is reweighted by the likelihood of those outcomes and the EIG of the
next run is the same Rao-Blackwellised estimate under those weights. A near-duplicate of an earlier
pick therefore gains little. Selection is greedy on conditional EIG per FLOP, evaluated lazily
(the EIG of a run can only fall as the batch grows, so stale values bound fresh ones from above).

The estimator is generic over the likelihood (:class:`LocationScale` for the fitted noise,
:class:`Discrete` for a finite outcome set): both reduce a candidate to the same three arrays (the
draws' densities on the grid of outcomes, where each draw's quadrature mass falls on it, and each
draw's own negative entropy), so the closed-form tests run the very code path of a real design.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from . import _jax  # noqa: F401  (float64 before any array)
from .errors import InputError

#: noise quadrature nodes: Gauss-Hermite for Gaussian noise, tan-mapped Gauss-Legendre for Student-t
#: (measured on a 50-component t(4) mixture, error of E[log p]: 1e-3 nats at 16 nodes, 2e-4 at 24)
NODES = {"gaussian": 20, "student_t": 24}
#: the grid's spacing across the draws' bulk, relative to the narrowest noise scale; linear
#: interpolation of a log density with curvature <= 1/s^2 then errs by <= (1/4)^2 / 8 = 0.008 nats at
#: worst (between nodes of the narrowest component) and far less on average
GRID_RESOLUTION = 0.25
#: the bulk of the grid spans every draw's mean +- this many of its noise scales; beyond, the tails
CENTRAL_SCALES = 4.0
#: grid points in each tail (spacing growing geometrically out to the farthest node)
TAIL_POINTS = 32
#: bulk grid sizes (one compiled function per size)
GRID_SIZES = (64, 128, 256, 512, 1024, 2048)
#: draws used by default (thinned evenly from the posterior's mixture draws)
MAX_DRAWS = 1024
#: scenarios over which earlier picks' outcomes are integrated out in a batch
SCENARIOS = 64
#: contrast draws of the nested-MC / prior-contrastive bounds
CONTRAST = 128
#: disjoint contrast sets the bounds are averaged over (fewer where they would take more than half the draws)
CONTRAST_SETS = 4
#: warn when EIG > log M - HEADROOM: fewer than ~20 draws would be left to describe a posterior
HEADROOM = math.log(20.0)
#: candidates per vectorised chunk (memory: about G x M x 3 floats each)
CHUNK = 16
#: objectives of `bayescale design`
OBJECTIVES = ("n_opt", "d_opt", "loss_opt", "loss_at", "params")
#: most objective dimensions the targeted estimator keeps (principal components of phi's prior)
MAX_TARGET_DIMS = 8
Z90 = 1.6448536269514722  # standard normal 95% quantile: a 90% interval is +- Z90 sd


class DrawsWarning(UserWarning):
    """An EIG close to log M: the posterior draws are too few to resolve what the run would teach."""


# --------------------------------------------------------------------------------------------
# noise quadrature


def noise_quadrature(likelihood: str, nu: float = 4.0, K: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z`` and weights ``w`` (summing to 1) with ``sum w g(z) ~ E[g(Z)]`` for standard noise ``Z``.

    Gaussian: probabilists' Gauss-Hermite, exact for polynomials of degree < 2K. Student-t: its
    moments stop at order ``nu``, so no Gauss rule of its own weight is accurate; instead the line
    is mapped onto (-1, 1) by ``z = tan(pi x / 2)`` and integrated by Gauss-Legendre against the t
    density times the Jacobian, an integrand that is smooth in ``x`` because the t's tails are
    polynomial. Measured (tests): ``E[log(1 + Z^2/nu)]`` to 1e-8 and a t-mixture's ``E[log p]`` to
    2e-4 nats with 24 nodes.
    """
    K = NODES[likelihood] if K is None else int(K)
    if likelihood == "gaussian":
        z, w = np.polynomial.hermite_e.hermegauss(K)
    elif likelihood == "student_t":
        x, wl = np.polynomial.legendre.leggauss(K)
        z = np.tan(0.5 * np.pi * x)
        logpdf = (special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * math.log(nu * math.pi)
                  - (nu + 1) / 2 * np.log1p(z * z / nu))
        w = wl * 0.5 * np.pi / np.cos(0.5 * np.pi * x) ** 2 * np.exp(logpdf)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    return z, w / w.sum()


def _f0(z: jax.Array, likelihood: str, nu: float) -> jax.Array:
    """Standard noise density. The t's power ``(1 + z^2/nu)^-(nu+1)/2`` is a square root and integer
    powers when ``nu`` is an integer (``nu = 4``: ``q^-2 q^-1/2``), about 3x cheaper than exp(log)."""
    if likelihood == "gaussian":
        return jnp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    c = math.exp(float(special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * math.log(nu * math.pi)))
    q = 1.0 + z * z / nu
    if float(nu).is_integer():
        k = int(nu + 1) // 2
        out = 1.0 / jax.lax.integer_pow(q, k) if k else jnp.ones_like(q)
        return c * (out * jax.lax.rsqrt(q) if int(nu + 1) % 2 else out)
    return c * jnp.exp(-(nu + 1) / 2 * jnp.log(q))


def _log_f0(z: jax.Array, likelihood: str, nu: float) -> jax.Array:
    if likelihood == "gaussian":
        return -0.5 * z * z - 0.5 * math.log(2 * math.pi)
    c = float(special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * math.log(nu * math.pi))
    return c - (nu + 1) / 2 * jnp.log1p(z * z / nu)


# --------------------------------------------------------------------------------------------
# likelihoods: each reduces a candidate to (F, L, negent)
#   F      (G, M)  density of every draw at G outcomes (a grid, or the outcome set)
#   L      (M, G)  where each draw's quadrature mass over its own outcomes falls among those G
#   negent (M,)    each draw's E[log f_j(y)] under its own noise (minus its entropy)


@dataclass(frozen=True)
class LocationScale:
    """``y = mu_j + s_j Z`` with standard noise ``Z`` (Gaussian or Student-t): the fitted likelihood.

    A candidate's parameters are ``(mu, s)``, each of shape ``(M,)``.
    """

    likelihood: str = "student_t"
    nu: float = 4.0
    nodes: int | None = None

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        return noise_quadrature(self.likelihood, self.nu, self.nodes)

    def bulk_points(self, mu: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Bulk grid size each candidate needs (``mu, s``: ``(C, M)``) for :data:`GRID_RESOLUTION`."""
        width = np.max(mu + CENTRAL_SCALES * s, axis=-1) - np.min(mu - CENTRAL_SCALES * s, axis=-1)
        return np.ceil(width / (GRID_RESOLUTION * np.min(s, axis=-1))).astype(int) + 1

    def discretise(self, params: tuple[jax.Array, jax.Array], Gc: int) -> tuple[jax.Array, ...]:
        mu, s = params
        z, wq = (jnp.asarray(a) for a in self.quadrature())
        M, K, T = mu.shape[0], z.shape[0], TAIL_POINTS
        lo = jnp.min(mu - CENTRAL_SCALES * s)
        hi = jnp.max(mu + CENTRAL_SCALES * s)
        h = (hi - lo) / (Gc - 1)
        ynode = mu[:, None] + s[:, None] * z[None, :]  # (M, K)
        extent = jnp.maximum(jnp.max(jnp.maximum(ynode - hi, lo - ynode)), h)  # farthest node beyond the bulk
        beta = jnp.maximum(jnp.log(extent / h), 1e-6)
        em1 = jnp.expm1(beta)
        tail = extent * jnp.expm1(beta * jnp.arange(1, T + 1) / T) / em1  # (T,) distances beyond the bulk
        grid = jnp.concatenate([lo - tail[::-1], lo + h * jnp.arange(Gc), hi + tail])  # (G,)

        def index(y: jax.Array) -> jax.Array:  # continuous grid index of y (the inverse of the grid's map)
            below = T - T * jnp.log1p(jnp.maximum(lo - y, 0.0) * em1 / extent) / beta
            above = T + Gc - 1 + T * jnp.log1p(jnp.maximum(y - hi, 0.0) * em1 / extent) / beta
            return jnp.where(y < lo, below, jnp.where(y > hi, above, T + (y - lo) / h))

        G = Gc + 2 * T
        u = jnp.clip(index(ynode), 0.0, G - 1.0)
        i = jnp.clip(jnp.floor(u).astype(int), 0, G - 2)
        frac = u - i
        F = _f0((grid[:, None] - mu[None, :]) / s[None, :], self.likelihood, self.nu) / s[None, :]
        negent = jnp.sum(wq * _log_f0(z, self.likelihood, self.nu)) - jnp.log(s)
        return F, i, frac, jnp.broadcast_to(wq, (M, K)), negent

    def own_density(self, params: tuple[jax.Array, jax.Array]) -> jax.Array:
        """Each draw's density at its own quadrature nodes, ``(M, K)``."""
        z = jnp.asarray(self.quadrature()[0])
        return _f0(z, self.likelihood, self.nu)[None, :] / params[1][:, None]

    def sample(self, u: jax.Array, params: tuple[jax.Array, jax.Array], idx: jax.Array) -> jax.Array:
        """Outcomes of draws ``idx`` at noise quantiles ``u`` (both ``(S,)``)."""
        from jax.scipy.special import ndtri

        mu, s = params
        if self.likelihood == "gaussian":
            z = ndtri(u)
        else:  # t quantile through the regularised incomplete beta, inverted on the host (S is small)
            z = jnp.asarray(_t_ppf(np.asarray(u), self.nu))
        return mu[idx] + s[idx] * z

    def loglik(self, y: jax.Array, params: tuple[jax.Array, jax.Array]) -> jax.Array:
        """``log f_j(y_s)``, shape ``(S, M)``."""
        mu, s = params
        return _log_f0((y[:, None] - mu[None, :]) / s[None, :], self.likelihood, self.nu) - jnp.log(s)[None, :]


def _t_ppf(u: np.ndarray, nu: float) -> np.ndarray:
    from scipy import stats

    return stats.t.ppf(u, nu)


@dataclass(frozen=True)
class Discrete:
    """``y`` in a finite outcome set ``0..V-1`` with probabilities ``probs[j, v]`` per draw (``(M, V)``).

    The grid is the outcome set itself, so nothing is interpolated: the estimate is exact.
    """

    def bulk_points(self, probs: np.ndarray, _: Any = None) -> np.ndarray:
        return np.full(probs.shape[0], probs.shape[-1])

    def discretise(self, params: tuple[jax.Array], Gc: int) -> tuple[jax.Array, ...]:
        (p,) = params
        M, V = p.shape
        logp = jnp.log(jnp.where(p > 0, p, 1.0))
        idx = jnp.broadcast_to(jnp.arange(V), (M, V))
        return p.T, idx, jnp.zeros((M, V)), p, jnp.sum(p * logp, axis=1)

    def own_density(self, params: tuple[jax.Array]) -> jax.Array:
        """Each draw's probability of each outcome, ``(M, V)``."""
        return params[0]

    def sample(self, u: jax.Array, params: tuple[jax.Array], idx: jax.Array) -> jax.Array:
        (p,) = params
        cdf = jnp.cumsum(p[idx], axis=1)
        return jnp.sum(u[:, None] > cdf[:, :-1], axis=1)

    def loglik(self, y: jax.Array, params: tuple[jax.Array]) -> jax.Array:
        (p,) = params
        return jnp.log(p[:, y].T)


# --------------------------------------------------------------------------------------------
# the core: one candidate, S scenarios of draw weights


def _moment_columns(phi: np.ndarray) -> np.ndarray:
    """``[phi_a, phi_a phi_b (a <= b)]`` per draw: what a reweighting needs for mean and covariance."""
    P = phi.shape[1]
    a, b = np.triu_indices(P)
    return np.concatenate([phi, phi[:, a] * phi[:, b]], axis=1)


def _cov_from_moments(m: jax.Array, P: int) -> jax.Array:
    """Covariance ``(..., P, P)`` from weighted moments ``(..., P + P(P+1)/2)`` (no scatter: slow under vmap)."""
    mean = m[..., :P]
    if P == 1:
        return (m[..., 1] - mean[..., 0] ** 2)[..., None, None]
    a, b = np.triu_indices(P)
    col = np.zeros((P, P), int)
    col[a, b] = col[b, a] = P + np.arange(len(a))
    rows = [jnp.stack([m[..., int(col[i, j])] for j in range(P)], axis=-1) for i in range(P)]
    return jnp.stack(rows, axis=-2) - mean[..., :, None] * mean[..., None, :]


def _spread(idx: jax.Array, frac: jax.Array, wn: jax.Array, W: jax.Array, G: int) -> jax.Array:
    """Where the draws' quadrature mass falls on the grid, under each weighting: ``(S, G)``.

    Node ``k`` of draw ``j`` (weight ``wn[j, k]``) sits a fraction ``frac`` of the way from grid point
    ``idx`` to ``idx + 1``; linear interpolation splits its mass between them.
    """
    ids = jnp.concatenate([idx.ravel(), jnp.minimum(idx + 1, G - 1).ravel()])
    mass = jnp.concatenate([(wn * (1 - frac)).ravel(), (wn * frac).ravel()])  # (2 M K,)
    M, K = idx.shape
    if W.shape[0] == 1:  # one weighting: scatter the weighted node masses straight onto the grid
        return jax.ops.segment_sum(mass * jnp.tile(jnp.repeat(W[0], K), 2), ids, num_segments=G)[None, :]
    # several: each draw's mass on the grid (M, G), then one matrix product
    rows = jnp.tile(jnp.repeat(jnp.arange(M), K), 2)
    dense = jax.ops.segment_sum(mass, rows * G + ids, num_segments=M * G).reshape(M, G)
    return W @ dense


def _interp(v: jax.Array, idx: jax.Array, frac: jax.Array) -> jax.Array:
    """``v`` (grid values, ``(..., G)``) interpolated linearly at nodes ``(idx, frac)``."""
    G = v.shape[-1]
    return (1 - frac) * jnp.take(v, idx, axis=-1) + frac * jnp.take(v, jnp.minimum(idx + 1, G - 1), axis=-1)


def _candidate(lik: Any, Gc: int, P: int, bounds: bool, params: tuple[jax.Array, ...], W: jax.Array,
               psi: jax.Array, jitter: jax.Array) -> dict[str, jax.Array]:
    """EIG (and targeted EIG) of one candidate under each of ``S`` weightings ``W`` (``(S, M)``, rows sum to 1)."""
    F, idx, frac, wn, negent = lik.discretise(params, Gc)
    G = F.shape[0]
    S, M = W.shape
    Q = psi.shape[1] if P else 0
    # one product gives the predictive density on the grid and, for a target, its reweighted moments
    rhs = jnp.concatenate([W.T, (W.T[:, :, None] * psi[:, None, :]).reshape(M, S * Q)], axis=1) if P else W.T
    FW = F @ rhs  # (G, S (1 + Q))
    Pg = FW[:, :S].T  # (S, G)
    B = _spread(idx, frac, wn, W, G)  # (S, G) quadrature mass of the outcomes on the grid
    logP = jnp.log(jnp.maximum(Pg, 1e-300))
    out = {"eig": W @ negent - jnp.sum(B * logP, axis=1)}
    if P:
        prior = _cov_from_moments(W @ psi, P) + jitter  # (S, P, P)
        num = FW[:, S:].reshape(G, S, Q)
        post = _cov_from_moments(jnp.swapaxes(num, 0, 1) / jnp.maximum(Pg, 1e-300)[..., None], P) + jitter[:, None]
        hld = _half_logdet(post)  # (S, G)
        out["targeted"] = _half_logdet(prior) - jnp.sum(B * hld, axis=1)
        # expected posterior sd of phi's first coordinate, relative to its sd before the run
        sd_post = jnp.sqrt(jnp.maximum(post[..., 0, 0], 0.0))
        out["sd_ratio"] = jnp.sum(B * sd_post, axis=1) / jnp.sqrt(prior[:, 0, 0])
    if bounds:  # nested MC (upper) and PCE (lower): random contrast sets, and outer draws from the rest
        # (random, not every k-th draw: a stride picks a structured subset of quasi-random draws). One
        # contrast set's error is shared by every outer draw and every candidate, so each bound is
        # averaged over CONTRAST_SETS disjoint contrast sets
        M = W.shape[1]
        perm = np.random.default_rng(0).permutation(M)
        Lc = min(CONTRAST, M // 2)
        sets = max(1, min(CONTRAST_SETS, M // (2 * Lc)))
        own = lik.own_density(params)  # each draw's density at its own nodes, exactly
        upper, lower = 0.0, 0.0
        for r in range(sets):
            c, o = perm[r * Lc:(r + 1) * Lc], np.concatenate([perm[:r * Lc], perm[(r + 1) * Lc:]])
            wc = W[0, c] / jnp.sum(W[0, c])
            wo = W[0, o] / jnp.sum(W[0, o])
            pc = F[:, c] @ wc  # (G,) the contrast draws' predictive
            log_pc = _interp(jnp.log(jnp.maximum(pc, 1e-300)), idx[o], frac[o])  # (outer, K) at their own nodes
            nmc = negent[o] - jnp.sum(wn[o] * log_pc, axis=1)
            pce = negent[o] - jnp.sum(wn[o] * jnp.log((own[o] + Lc * jnp.exp(log_pc)) / (Lc + 1)), axis=1)
            upper, lower = upper + jnp.sum(wo * nmc) / sets, lower + jnp.sum(wo * pce) / sets
        out["upper"], out["lower"] = upper, lower
    return out


def _half_logdet(cov: jax.Array) -> jax.Array:
    """Half the log determinant of ``(..., P, P)`` covariances (direct for ``P = 1``, else by Cholesky)."""
    if cov.shape[-1] == 1:
        return 0.5 * jnp.log(jnp.maximum(cov[..., 0, 0], 1e-300))
    return jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(cov), axis1=-2, axis2=-1)), axis=-1)


def _chunk_bucket(n: int) -> int:
    """``n`` chunks rounded up to a quarter-octave step (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, ...).

    The compiled EIG program is specialised to its number of chunks, and a replay's pool shrinks by
    a batch every iteration: without rounding every iteration compiled a new program, each holding
    LLVM memory mappings until the process ends. Rounding wastes at most a quarter of the work.
    """
    if n <= 8:
        return max(n, 1)
    step = 1 << (n.bit_length() - 3)  # a quarter of the octave [2^k, 2^(k+1)) that holds n
    return -(-n // step) * step


@partial(jax.jit, static_argnames=("lik", "Gc", "P", "bounds"))
def _chunked(lik: Any, Gc: int, P: int, bounds: bool, params: tuple[jax.Array, ...], W: jax.Array,
             psi: jax.Array, jitter: jax.Array) -> dict[str, jax.Array]:
    """:func:`_candidate` over chunks of candidates: ``params`` leaves are ``(chunks, CHUNK, M, ...)``."""
    one = partial(_candidate, lik, Gc, P, bounds)
    return jax.lax.map(lambda p: jax.vmap(one, in_axes=(0, None, None, None))(p, W, psi, jitter), params)


def mutual_information(
    lik: Any,
    params: Sequence[np.ndarray],
    *,
    log_weights: np.ndarray | None = None,
    scenario_loglik: np.ndarray | None = None,
    phi: np.ndarray | None = None,
    bounds: bool = True,
) -> dict[str, np.ndarray]:
    """EIG of each of ``C`` candidates (and, with ``phi``, the targeted EIG about ``phi``).

    Parameters
    ----------
    lik
        :class:`LocationScale` or :class:`Discrete`.
    params
        The likelihood's per-draw parameters, each ``(C, M, ...)``: ``(mu, s)`` or ``(probs,)``.
    log_weights
        Prior log weights of the ``M`` draws (default: equal).
    scenario_loglik
        ``(S, M)``: each scenario's summed log likelihood of earlier picks' outcomes; the EIG is then
        conditional on those outcomes, averaged over the scenarios (see :class:`Batch`).
    phi
        ``(M, P)`` objective draws; gives ``targeted`` and ``sd_ratio`` (the expected posterior sd of
        ``phi[:, 0]`` over its sd before the run).
    bounds
        Also compute the nested-MC upper and prior-contrastive lower bounds (unconditional only).

    Returns
    -------
    dict of ``(C,)`` arrays: ``eig``, and ``upper``, ``lower``, ``targeted``, ``sd_ratio`` as asked.
    """
    params = [np.asarray(p, float) for p in params]
    C, M = params[0].shape[:2]
    lw = np.zeros(M) if log_weights is None else np.asarray(log_weights, float)
    A = np.zeros((1, M)) if scenario_loglik is None else np.asarray(scenario_loglik, float)
    W = A + lw[None, :]
    W = np.exp(W - W.max(axis=1, keepdims=True))
    W /= W.sum(axis=1, keepdims=True)
    bounds = bool(bounds and A.shape[0] == 1 and M >= 8)
    if phi is not None:
        phi, P = _project(np.asarray(phi, float), W)
        psi = _moment_columns(phi)
        # a scenario whose weight sits on one draw has no spread to estimate: its covariance comes out
        # non-finite, and so does the targeted EIG it feeds (counted as none below)
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "degrees of freedom <= 0"
            cov = np.stack([np.atleast_2d(np.cov(phi.T, aweights=w)) for w in W]) if M > 1 \
                else np.ones((W.shape[0], P, P))
        jitter = cov / M
    else:
        P, psi, jitter = 0, np.zeros((M, 1)), np.zeros((W.shape[0], 1, 1))
    need = int(np.max(lik.bulk_points(*params)))
    Gc = next((g for g in GRID_SIZES if g >= need), GRID_SIZES[-1])
    n_chunks = _chunk_bucket(-(-C // CHUNK))  # a shrinking pool then compiles a few sizes, not one per count
    pad = n_chunks * CHUNK - C
    padded = tuple(jnp.asarray(np.concatenate([p, np.repeat(p[-1:], pad, axis=0)]).reshape(n_chunks, CHUNK,
                                                                                              *p.shape[1:]))
                   for p in params)
    out = _chunked(lik, Gc, P, bounds, padded, jnp.asarray(W), jnp.asarray(psi), jnp.asarray(jitter))
    res = {}
    for k, v in out.items():
        v = np.asarray(v).reshape(n_chunks * CHUNK, *np.shape(v)[2:])[:C]
        if v.ndim == 2 and k in ("targeted", "sd_ratio"):
            # Scenarios whose earlier outcomes left all the weight on one draw: the draws say nothing
            # more there (the full EIG is 0 in them), so such a scenario adds no targeted EIG and
            # leaves the sd ratio to the others. Averaging its NaN in would make the whole candidate
            # NaN, and one such scenario among many ended a batch after its first pick, spending a
            # third of a batch's budget (the first batch from 5 runs, bench/design_benefit.py).
            bad = ~np.isfinite(v)
            if k == "targeted":
                v = np.where(bad, 0.0, v)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # every scenario degenerate: NaN
                    res[k] = np.nanmean(v, axis=1)
                continue
        res[k] = v.mean(axis=1) if v.ndim == 2 else v
    if "targeted" in res:  # the exact value lies in [0, I(y; theta)]
        res["targeted"] = np.clip(res["targeted"], 0.0, np.maximum(res["eig"], 0.0))
    res["grid_ok"] = np.asarray(lik.bulk_points(*params) <= Gc)
    return res


def _project(phi: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, int]:
    """``phi`` centred, and reduced to its leading principal components (by the unconditional prior
    covariance) when it has more than :data:`MAX_TARGET_DIMS` dimensions or is degenerate."""
    phi = phi - np.average(phi, axis=0, weights=W.mean(axis=0))
    P = phi.shape[1]
    if P == 1:
        return phi, 1
    cov = np.atleast_2d(np.cov(phi.T, aweights=W.mean(axis=0)))
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1]
    val, vec = val[order], vec[:, order]
    keep = int(min(MAX_TARGET_DIMS, np.sum(val > 1e-9 * max(val[0], 1e-300))))
    if keep == P:
        return phi, P
    return phi @ vec[:, :keep], keep


# --------------------------------------------------------------------------------------------
# batches: earlier picks' outcomes integrated out over scenarios


@dataclass
class Batch:
    """Runs chosen so far, with their outcomes simulated over scenarios (see the module docstring).

    ``scenario_loglik`` (``(S, M)``) is each scenario's summed log likelihood, per draw, of the
    earlier picks' simulated outcomes; pass it to :func:`mutual_information` for conditional EIGs.
    """

    lik: Any
    M: int
    S: int = SCENARIOS
    seed: int = 0
    log_weights: np.ndarray | None = None
    picks: list[int] = field(default_factory=list)
    eigs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        lw = np.zeros(self.M) if self.log_weights is None else np.asarray(self.log_weights, float)
        p = np.exp(lw - lw.max())
        p /= p.sum()
        # scenario draws: stratified over the draws' cumulative weight, so every part of the posterior is seen
        u = (np.arange(self.S) + self._rng.uniform()) / self.S
        self.idx = np.minimum(np.searchsorted(np.cumsum(p), u), self.M - 1)
        self.scenario_loglik = np.zeros((self.S, self.M))

    @property
    def joint_eig(self) -> float:
        """EIG of the batch so far: the sum of its picks' conditional EIGs (the chain rule)."""
        return float(np.sum(self.eigs))

    def add(self, params: Sequence[np.ndarray], pick: int | None = None, eig: float | None = None) -> None:
        """Add a run (its per-draw parameters, ``(M, ...)`` each): simulate its outcome in every scenario."""
        u = (self._rng.permutation(self.S) + self._rng.uniform(size=self.S)) / self.S  # Latin hypercube column
        p = tuple(jnp.asarray(np.asarray(a, float)) for a in params)
        y = self.lik.sample(jnp.asarray(u), p, jnp.asarray(self.idx))
        self.scenario_loglik = self.scenario_loglik + np.asarray(self.lik.loglik(y, p))
        if pick is not None:
            self.picks.append(pick)
        if eig is not None:
            self.eigs.append(float(eig))


def sequential_eig(lik: Any, params: Sequence[np.ndarray], *, log_weights: np.ndarray | None = None,
                   phi: np.ndarray | None = None, scenarios: int = SCENARIOS, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """EIG of each of ``C`` runs given the outcomes of those before it, in order (``params``: ``(C, M, ...)``).

    Their sum is the joint EIG of the runs (the chain rule); with ``phi``, the same for the targeted EIG.
    """
    params = [np.asarray(p, float) for p in params]
    C, M = params[0].shape[:2]
    batch = Batch(lik, M, scenarios, seed, log_weights)
    eig, tgt = [], []
    for c in range(C):
        one = [p[c : c + 1] for p in params]
        r = mutual_information(lik, one, log_weights=log_weights, phi=phi, bounds=False,
                               scenario_loglik=None if c == 0 else batch.scenario_loglik)
        eig.append(float(r["eig"][0]))
        if phi is not None:
            tgt.append(float(r["targeted"][0]))
        batch.add([p[c] for p in params], c, eig[-1])
    return {"eig": np.array(eig), **({"targeted": np.array(tgt)} if phi is not None else {})}


# --------------------------------------------------------------------------------------------
# from a posterior: draws, predictions at candidates, objectives


@dataclass
class DesignDraws:
    """Posterior draws as the design needs them: each draw's law and parameters, noise and discrepancy."""

    parts: list[tuple[str, dict[str, np.ndarray]]]  # (law, natural parameters (m_law,)) in draw order
    sigma: np.ndarray  # (M,)
    rate: np.ndarray | None  # (M,) discrepancy rate per draw (None: one law)
    data: Any  # DataRange of the runs
    likelihood: str
    nu: float
    N_obs: np.ndarray
    D_obs: np.ndarray
    C_obs: np.ndarray
    total: int  # draws in the posterior before thinning
    gps: list[Any] | None = None  # per part: its law's discrepancy process (discrepancy.Conditioned) or None

    def gp_terms(self, N: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The structured discrepancy's mean and variance per draw, ``(M, P)``, at points ``(P,)``
        or per draw ``(M, P)`` (:func:`bayescale.discrepancy.by_part`)."""
        from .discrepancy import by_part

        return by_part(self.gps or [None] * len(self.parts), [len(next(iter(p.values()))) for _, p in self.parts],
                       N, D)[:2]

    @property
    def M(self) -> int:
        return len(self.sigma)

    @property
    def lik(self) -> LocationScale:
        return LocationScale(self.likelihood, self.nu)

    def law_of_draws(self) -> np.ndarray:
        return np.concatenate([np.full(len(next(iter(p.values()))), law) for law, p in self.parts])


def design_draws(idata: Any, max_draws: int = MAX_DRAWS) -> DesignDraws:
    """The posterior's mixture draws (:func:`bayescale.posterior.mixture`), thinned evenly to ``max_draws``."""
    from .laws import PARAM_NAMES
    from .posterior import mixture, param_draws

    mix = mixture(idata)
    total = mix.size
    keep = np.unique(np.linspace(0, total - 1, min(max_draws, total)).round().astype(int))
    parts, sig, gps, start = [], [], [], 0
    for j, (law, view, idx) in enumerate(mix.parts):
        mine = keep[(keep >= start) & (keep < start + len(idx))] - start
        start += len(idx)
        if len(mine) == 0:
            continue
        d = param_draws(view, [*PARAM_NAMES[law], "sigma"])
        parts.append((law, {k: d[k][idx[mine]] for k in PARAM_NAMES[law]}))
        sig.append(d["sigma"][idx[mine]])
        gps.append(mix.gps[j] if mix.gps else None)
    rate = None if mix.rate is None else mix.rate[:total][keep]
    cd = idata.constant_data
    N, D, C = (np.asarray(cd[k].values, float) for k in ("N", "D", "C"))
    return DesignDraws(parts, np.concatenate(sig), rate, mix.data, mix.likelihood, mix.nu, N, D, C, total, gps)


def _discrepancy(dr: DesignDraws, d: np.ndarray) -> np.ndarray:
    """Discrepancy scale ``(points, M)`` at distances ``d`` ``(points,)``."""
    if dr.rate is None:
        return np.zeros((len(d), dr.M))
    return np.asarray(d, float)[:, None] * dr.rate[None, :]


def predictive_params(dr: DesignDraws, N: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` (log loss of the law) and ``s`` (noise and discrepancy scale) per candidate and draw, ``(C, M)``."""
    from .averaging import extrapolation_distance
    from .laws import broadcast_draws, loss

    N, D = np.asarray(N, float), np.asarray(D, float)
    mu = np.concatenate([np.log(np.asarray(loss(law, broadcast_draws(p), N[None, :], D[None, :]))) for law, p in
                         dr.parts]).T
    disc = _discrepancy(dr, extrapolation_distance(N, D, dr.data))
    # the laws' own likelihood (sigma), without their misfit processes: what a refit with the new run
    # updates is each law's posterior, under that likelihood (the processes are refitted after it)
    return mu, np.sqrt(dr.sigma[None, :] ** 2 + disc**2)


def objective_draws(dr: DesignDraws, objective: str, *, target_compute: float | None = None,
                    target: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0) -> np.ndarray | None:
    """Draws of the objective ``phi``, ``(M, P)``; None for ``params`` (every parameter: the full EIG).

    ``n_opt``, ``d_opt``: log N*, log D* at ``target_compute``; ``loss_opt``: the log loss there;
    ``loss_at``: the log losses at ``target``'s ``(N, D)`` rows. Losses carry the model discrepancy at
    their distance beyond the runs (averaged posteriors), drawn as :func:`bayescale.posterior.optimal_draws`
    draws it.
    """
    from .averaging import extrapolation_distance, noise_draws
    from .discrepancy import gaussian_draws
    from .laws import broadcast_draws, compute_optimal, loss

    if objective == "params":
        return None
    rng = np.random.default_rng(seed)
    if objective == "loss_at":
        if target is None:
            raise InputError("the loss_at objective needs target rows (--target TABLE with columns N, D)",
                             field="--target")
        N, D = (np.asarray(a, float) for a in target)
        mu = np.concatenate([np.log(np.asarray(loss(law, broadcast_draws(p), N[None, :], D[None, :])))
                             for law, p in dr.parts])
        d = extrapolation_distance(N, D, dr.data)
        m, v = dr.gp_terms(N, D)
        return mu + m + gaussian_draws(v, rng) + noise_draws(_discrepancy(dr, d).T, rng, likelihood=dr.likelihood,
                                                             nu=dr.nu)
    if target_compute is None:
        raise InputError(f"the {objective} objective needs a budget (--target-compute C)", field="--target-compute")
    C = np.array([float(target_compute)])
    out = {k: np.concatenate([np.asarray(compute_optimal(law, broadcast_draws(p), C[None, :])[k])
                              for law, p in dr.parts]) for k in ("N_opt", "D_opt", "loss")}
    if objective == "n_opt":
        return np.log(out["N_opt"])
    if objective == "d_opt":
        return np.log(out["D_opt"])
    if objective == "loss_opt":
        d = extrapolation_distance(out["N_opt"][:, 0], out["D_opt"][:, 0], dr.data)
        scale = np.zeros((dr.M, 1)) if dr.rate is None else (dr.rate * d)[:, None]
        m, v = dr.gp_terms(out["N_opt"], out["D_opt"])  # (M, 1): each draw's own optimum
        return np.log(out["loss"]) + m + gaussian_draws(v, rng) + noise_draws(scale, rng, likelihood=dr.likelihood,
                                                                               nu=dr.nu)
    raise InputError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}", field="--objective")


# --------------------------------------------------------------------------------------------
# candidates


def grid_candidates(N_obs: np.ndarray, D_obs: np.ndarray, *, widen: float = 3.0, points: int = 40,
                    max_compute: float | None = None, min_compute: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A log grid over N x D: the observed ranges widened by ``widen`` on each side, runs above
    ``max_compute`` (6ND) dropped. Returns the kept ``(N, D)``."""
    n = np.geomspace(np.min(N_obs) / widen, np.max(N_obs) * widen, points)
    d = np.geomspace(np.min(D_obs) / widen, np.max(D_obs) * widen, points)
    NN, DD = (a.ravel() for a in np.meshgrid(n, d))
    ok = np.ones(NN.shape, bool)
    if max_compute is not None:
        ok &= 6 * NN * DD <= max_compute * (1 + 1e-9)
    if min_compute is not None:
        ok &= 6 * NN * DD >= min_compute * (1 - 1e-9)
    return NN[ok], DD[ok]


def isoflop_candidates(budgets: Sequence[float], N_bounds: tuple[float, float], D_bounds: tuple[float, float],
                       points: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Runs along isoFLOP lines ``6ND = C``: ``points`` log-spaced N per budget, kept where N and D lie in bounds."""
    Ns, Ds = [], []
    for C in budgets:
        n = np.geomspace(*N_bounds, points)
        d = C / (6 * n)
        ok = (d >= D_bounds[0]) & (d <= D_bounds[1])
        Ns.append(n[ok])
        Ds.append(d[ok])
    return np.concatenate(Ns), np.concatenate(Ds)


# --------------------------------------------------------------------------------------------
# ranking and selection


@dataclass
class Ranking:
    """EIG of every candidate (unconditional), with bounds, the targeted EIG and the cost."""

    N: np.ndarray
    D: np.ndarray
    cost: np.ndarray
    eig: np.ndarray  # the value ranked: targeted EIG if an objective is targeted, else the full EIG
    full: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    sd_ratio: np.ndarray | None
    warnings: list[str]

    @property
    def eig_per_flop(self) -> np.ndarray:
        return self.eig / self.cost


def rank(dr: DesignDraws, N: np.ndarray, D: np.ndarray, cost: np.ndarray | None = None, *,
         phi: np.ndarray | None = None, bounds: int = 20) -> Ranking:
    """EIG of each candidate run alone, full and (with ``phi``) targeted, with the nested-MC and
    prior-contrastive bounds of the full EIG for the ``bounds`` best by EIG per FLOP (NaN for the rest:
    the bounds cost several times the estimate). Warns (``DrawsWarning``) where the estimate comes
    within :data:`HEADROOM` of ``log M``."""
    mu, s = predictive_params(dr, N, D)
    res = mutual_information(dr.lik, (mu, s), phi=phi, bounds=False)
    cost = 6.0 * np.asarray(N, float) * np.asarray(D, float) if cost is None else np.asarray(cost, float)
    ranked = res["targeted"] if phi is not None else res["eig"]
    res["lower"] = np.full(len(cost), np.nan)
    res["upper"] = np.full(len(cost), np.nan)
    if bounds:
        top = np.argsort(-ranked / cost)[:bounds]
        b = mutual_information(dr.lik, (mu[top], s[top]), bounds=True)
        res["lower"][top], res["upper"][top] = b["lower"], b["upper"]
    msgs = []
    near = res["eig"] > math.log(dr.M) - HEADROOM
    if near.any():
        msgs.append(f"{int(near.sum())} candidate(s) have EIG above log M - log 20 = {math.log(dr.M) - HEADROOM:.2f} "
                    f"nats with M = {dr.M} draws: too few draws to resolve what such a run would teach; refit "
                    "with more --draws")
    if not res["grid_ok"].all():
        msgs.append(f"{int((~res['grid_ok']).sum())} candidate(s) spread their predictions over more than "
                    f"{GRID_SIZES[-1]} noise widths; their EIG is approximate (coarser grid)")
    for m in msgs:
        warnings.warn(m, DrawsWarning, stacklevel=2)
    return Ranking(np.asarray(N, float), np.asarray(D, float), cost, ranked, res["eig"], res["lower"], res["upper"],
                   res.get("sd_ratio"), msgs)


@dataclass
class Selection:
    """A greedy batch: picks in order, each one's EIG given those before, the batch's joint EIG."""

    picks: list[int]
    eig: list[float]  # conditional EIG of each pick (targeted if an objective is targeted)
    sd_ratio: list[float | None]  # expected sd of the objective after the batch up to this pick / before
    spent: float
    joint_eig: float
    rule: str = "EIG per FLOP"  # the greedy rule whose batch this is: "EIG per FLOP" or "EIG"


def select(dr: DesignDraws, ranking: Ranking, *, budget: float, phi: np.ndarray | None = None,
           max_picks: int | None = None, scenarios: int = SCENARIOS, seed: int = 0) -> Selection:
    """A batch under ``budget`` FLOP, chosen greedily with the earlier picks' outcomes integrated out.

    Greedy by EIG per FLOP alone can spend a budget on many cheap runs whose information overlaps
    and leave no room for the one larger run that would tell more; greedy by EIG alone can do the
    reverse. Both batches are built and the one with the larger joint EIG is kept: for a monotone
    submodular gain under a knapsack budget, the better of the two is within a constant factor,
    (1 - 1/e) / 2, of the best batch (Leskovec et al. 2007, "cost-effective outbreak detection";
    Krause & Guestrin 2005), where either alone can be arbitrarily far from it. Both keep to
    ``max_picks`` runs (``design --top K``) where given.
    """
    per_flop = _greedy(dr, ranking, budget=budget, phi=phi, max_picks=max_picks, scenarios=scenarios, seed=seed,
                       per_flop=True)
    whole = _greedy(dr, ranking, budget=budget, phi=phi, max_picks=max_picks, scenarios=scenarios, seed=seed,
                    per_flop=False)
    return replace(whole, rule="EIG") if whole.joint_eig > per_flop.joint_eig else per_flop


def _greedy(dr: DesignDraws, ranking: Ranking, *, budget: float, phi: np.ndarray | None, max_picks: int | None,
            scenarios: int, seed: int, per_flop: bool) -> Selection:
    """Greedy batch under ``budget`` FLOP: repeatedly the candidate with the largest EIG (per FLOP
    with ``per_flop``) given the earlier picks' outcomes (integrated out), among those that still
    fit in the budget.

    Lazy evaluation: a candidate's conditional EIG can only fall as the batch grows, so its last
    value bounds it; only candidates whose bound could beat the best fresh value are re-evaluated.
    """
    cost = ranking.cost
    per = cost if per_flop else np.ones_like(cost)  # what a gain is divided by
    left = float(budget)
    # an EIG that could not be estimated (NaN: e.g. a posterior so wide that one draw takes all the
    # weight after an outcome) counts as no information rather than stopping the selection
    bound = np.nan_to_num(ranking.eig, nan=0.0) / per
    batch = Batch(dr.lik, dr.M, scenarios, seed)
    picks, eigs, ratios = [], [], []
    shrink = 1.0  # expected sd of the objective after the picks so far, over its sd before them
    while max_picks is None or len(picks) < max_picks:
        ok = (cost <= left * (1 + 1e-12)) & ~np.isin(np.arange(len(cost)), picks)
        if not ok.any():
            break
        if not picks:
            best = int(np.flatnonzero(ok)[np.argmax(bound[ok])])
            val = float(np.nan_to_num(ranking.eig[best], nan=0.0))
            ratio = None if ranking.sd_ratio is None else float(ranking.sd_ratio[best])
        else:
            fresh: dict[int, tuple[float, float | None]] = {}
            while True:  # lazy greedy: re-evaluate the best bounds until a fresh value beats every stale bound
                order = np.flatnonzero(ok)[np.argsort(-bound[ok])]
                best_v = max((v[0] / per[i] for i, v in fresh.items()), default=-np.inf)
                top = [int(i) for i in order[:8] if int(i) not in fresh and bound[i] > best_v]
                if not top:
                    break
                mu, s = predictive_params(dr, ranking.N[top], ranking.D[top])
                r = mutual_information(dr.lik, (mu, s), scenario_loglik=batch.scenario_loglik, phi=phi, bounds=False)
                vals = r["targeted"] if phi is not None else r["eig"]
                for j, i in enumerate(top):
                    v = float(vals[j])
                    fresh[i] = (max(v, 0.0) if np.isfinite(v) else 0.0,
                                None if phi is None else float(r["sd_ratio"][j]))
                    bound[i] = fresh[i][0] / per[i]
            if not fresh:  # every bound is zero: nothing left to learn
                break
            best = max(fresh, key=lambda i: fresh[i][0] / per[i])
            val, ratio = fresh[best]
        if val <= 0:
            break
        mu, s = predictive_params(dr, ranking.N[[best]], ranking.D[[best]])
        batch.add((mu[0], s[0]), best, val)
        picks.append(best)
        eigs.append(val)
        if ratio is not None:  # each pick's ratio is conditional on the earlier ones: they chain
            shrink *= ratio
        ratios.append(None if ratio is None else shrink)
        left -= float(cost[best])
    return Selection(picks, eigs, ratios, float(budget) - left, float(np.sum(eigs)))


def interval_width(phi: np.ndarray) -> float:
    """90% equal-tailed width of the first coordinate of ``phi`` draws."""
    q = np.quantile(np.asarray(phi)[:, 0], [0.05, 0.95])
    return float(q[1] - q[0])
