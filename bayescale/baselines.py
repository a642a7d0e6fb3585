"""Classical baselines: the point fit and bootstrap a practitioner would run instead of bayescale.

This is Hoffmann et al. (2022) Approach 3, as specified in their appendix D.2 and as re-run by
Besiroglu et al. (2024, Epoch AI): fit the Chinchilla law

    L(N, D) = E + A / N**alpha + B / D**beta

in log space, ``log L ~ logsumexp(a - alpha log N, b - beta log D, e)`` with ``A = exp(a)``,
``B = exp(b)``, ``E = exp(e)``, by minimising the sum of Huber losses (``delta = 1e-3``) of the
log-loss residuals with L-BFGS from a grid of starting points, keeping the best optimum.
Uncertainty comes from a nonparametric bootstrap over runs (rows resampled with replacement,
each resample refitted).

The objective and its gradient are written by hand in vectorised numpy (about 0.1 ms per
evaluation on a few hundred runs); scipy's L-BFGS-B drives the optimisation. Two details make
it a fair, not a straw-man, baseline: the intercepts are centred at mean log N and log D inside
the optimiser (about 40 instead of 70 evaluations per fit), and OpenBLAS is held to one thread
around the loops (scipy's L-BFGS-B otherwise spends most of its time waking BLAS threads for
5-vectors: ~7x slower on a 2-core machine). Pure numpy/scipy, no I/O, no JAX.

Grids of starting points (``grid=``)
------------------------------------
``"hoffmann"``
    Hoffmann et al.'s grid: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
    a, b in {0, 5, ..., 25}: 5 * 5 * 5 * 6 * 6 = 4500 starts. With ``n_best=None`` L-BFGS runs
    from every one of them, exactly as in the paper (about a minute); with the default
    ``n_best=24`` only the 24 best-ranked starts are optimised (see below).
``"small"`` (default)
    alpha, beta in {0.25, 0.5, 1}, e in {-1, 0, 1}, a, b in {0, 5, 10}: 243 starts, plus the
    published Chinchilla estimate (Hoffmann et al., unrounded) as one more start. The starts
    are first ranked by their objective value (one vectorised evaluation of all of them) and
    L-BFGS is run from the best ``n_best`` (default 24) only; on the Chinchilla data this finds
    the same optimum as the Hoffmann grid (objective equal to 1e-12 relative), in about 1 s.
an array of shape (k, 5)
    Your own starts, columns (a, b, e, alpha, beta); all of them are optimised.

Bootstrap warm starts
---------------------
Each resample is refitted with L-BFGS from the full-data optimum plus ``extra_starts``
(default 1) further starts, taken in this order: Hoffmann et al.'s published estimate (the
single start Epoch AI used for every resample), then the next-best *distinct* local optima of
the full-data grid search. The best of those fits is kept. On the 240 Chinchilla rows the other
local optima (alpha or beta pinned near 1, objective ten times larger) never won in 200
resamples, so more starts only cost time; the second start is insurance. Resampling with
replacement is implemented as integer case weights (the multiplicity of each row), which gives
exactly the same objective as copying rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize

__all__ = ["HOFFMANN_START", "bootstrap", "huber_fit", "huber_objective", "start_grid"]

#: Hoffmann et al. (2022) unrounded Approach-3 estimate, as (a, b, e, alpha, beta).
HOFFMANN_START = np.array([6.0073404, 6.0179186, 0.5267228, 0.33917084, 0.2849083])

_BOUNDS = [(None, None)] * 3 + [(0.0, None)] * 2  # exponents stay non-negative
_OPTIONS = {"maxiter": 2000, "maxfun": 4000, "ftol": 1e-12, "gtol": 1e-8, "maxcor": 10}

ArrayLike = Sequence[float] | np.ndarray


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run the block with OpenBLAS limited to one thread in this thread, where possible.

    scipy's L-BFGS-B calls BLAS on 5-vectors and 5 x m matrices; a multi-threaded OpenBLAS
    spends far more time waking its threads than computing (measured: 12 ms instead of 86 ms
    per fit on a loaded 2-core machine). ``openblas_set_num_threads_local`` only affects the
    calling thread and is restored on exit. Silently does nothing where unavailable
    (non-Linux, another BLAS).
    """
    libs: list[tuple[Any, int]] = []
    try:
        with open("/proc/self/maps") as fh:
            paths = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and "/" in ln}
        for path in sorted(paths):
            fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
            if fn is not None:
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.c_int]
                libs.append((fn, fn(1)))
    except Exception:  # noqa: BLE001 - a speed tweak must never break a fit
        pass
    try:
        yield
    finally:
        for fn, prev in libs:
            with contextlib.suppress(Exception):
                fn(max(int(prev), 1))


def start_grid(grid: Literal["small", "hoffmann"] | np.ndarray = "small") -> np.ndarray:
    """Starting points for the grid search.

    Parameters
    ----------
    grid : {"small", "hoffmann"} or ndarray of shape (k, 5)
        Named grid (see the module docstring) or explicit starts with columns
        (a, b, e, alpha, beta).

    Returns
    -------
    ndarray of shape (k, 5)
        Starts, columns (a, b, e, alpha, beta). The named ``"small"`` grid also contains the
        published Hoffmann et al. estimate as its last row.
    """
    if isinstance(grid, str):
        if grid == "hoffmann":
            ab = np.arange(0.0, 26.0, 5.0)
            es = np.arange(-1.0, 1.01, 0.5)
            ex = np.arange(0.0, 2.01, 0.5)
        elif grid == "small":
            ab = np.array([0.0, 5.0, 10.0])
            es = np.array([-1.0, 0.0, 1.0])
            ex = np.array([0.25, 0.5, 1.0])
        else:
            raise ValueError(f"grid must be 'small', 'hoffmann' or an array, not {grid!r}")
        pts = np.array(list(itertools.product(ab, ab, es, ex, ex)), dtype=float)
        if grid == "small":
            pts = np.vstack([pts, HOFFMANN_START])
        return pts
    pts = np.atleast_2d(np.asarray(grid, dtype=float))
    if pts.shape[1] != 5 or not np.all(np.isfinite(pts)):
        raise ValueError(
            "explicit starts must be a finite array of shape (k, 5): a, b, e, alpha, beta"
        )
    return pts


def _prepare(
    N: ArrayLike, D: ArrayLike, loss: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    N, D, loss = (np.asarray(v, dtype=float).ravel() for v in (N, D, loss))
    if not (N.shape == D.shape == loss.shape):
        raise ValueError(
            f"N, D and loss must have the same length, got {N.size}, {D.size}, {loss.size}"
        )
    if N.size < 5:
        raise ValueError(f"need at least 5 runs to fit 5 parameters, got {N.size}")
    for name, v in (("N", N), ("D", D), ("loss", loss)):
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise ValueError(f"{name} must be finite and positive")
    return np.log(N), np.log(D), np.log(loss)


def _obj_grad(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, y: np.ndarray,
              delta: float, w: np.ndarray | None) -> tuple[float, np.ndarray]:
    """Sum of Huber losses of the log residuals and its analytic gradient w.r.t. theta.

    ``theta = (a, b, e, alpha, beta)`` with ``logN``/``logD`` as given (raw or centred).
    """
    a, b, e, alpha, beta = theta
    t1 = a - alpha * logN
    t2 = b - beta * logD
    m = np.maximum(np.maximum(t1, t2), e)
    x1 = np.exp(t1 - m)
    x2 = np.exp(t2 - m)
    x3 = np.exp(e - m)
    s = x1 + x2 + x3
    r = m + np.log(s) - y
    dh = np.clip(r, -delta, delta)  # Huber'(r)
    wdh = dh if w is None else w * dh
    f = wdh @ (r - 0.5 * dh)  # Huber(r) = Huber'(r) * (r - Huber'(r) / 2), both branches
    g = wdh / s  # times the softmax weights x_k / s gives d/d(term k)
    g1 = g * x1
    g2 = g * x2
    return float(f), np.array([g1.sum(), g2.sum(), g @ x3, -(g1 @ logN), -(g2 @ logD)])


def _objective_batch(thetas: np.ndarray, logN: np.ndarray, logD: np.ndarray, y: np.ndarray,
                     delta: float) -> np.ndarray:
    """Objective at many parameter vectors at once (rows of ``thetas``)."""
    a, b, e, alpha, beta = (thetas[:, i : i + 1] for i in range(5))
    t = np.stack([a - alpha * logN, b - beta * logD, np.broadcast_to(e, (len(thetas), len(y)))])
    m = t.max(axis=0)
    r = m + np.log(np.exp(t - m).sum(axis=0)) - y
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum(axis=1)


def huber_objective(theta: ArrayLike, N: ArrayLike, D: ArrayLike, loss: ArrayLike, *,
                    delta: float = 1e-3) -> float:
    """Hoffmann et al.'s objective: sum of Huber losses of log-loss residuals.

    Parameters
    ----------
    theta : array_like of shape (5,)
        (a, b, e, alpha, beta) with A = exp(a), B = exp(b), E = exp(e).
    N, D, loss : array_like
        Parameters, tokens and final loss of each run.
    delta : float, default 1e-3
        Huber threshold on the log-loss residual.

    Returns
    -------
    float
        ``sum_i Huber_delta(logsumexp(a - alpha log N_i, b - beta log D_i, e) - log L_i)``.
    """
    logN, logD, y = _prepare(N, D, loss)
    return _obj_grad(np.asarray(theta, dtype=float), logN, logD, y, delta, None)[0]


def _lbfgs(theta0: np.ndarray, logN: np.ndarray, logD: np.ndarray, y: np.ndarray, delta: float,
           w: np.ndarray | None) -> tuple[np.ndarray, float, bool]:
    """One L-BFGS-B run from ``theta0`` (raw (a, b, e, alpha, beta)); returns raw optimum.

    Internally the intercepts are centred at the mean log N and log D,
    ``a' = a - alpha * mean(log N)`` (likewise b'), which removes most of the a-alpha and b-beta
    correlation: about 40 instead of 70 evaluations per fit, and tighter convergence. The
    objective (~1e-3 in size) is also scaled by 1/delta so that L-BFGS-B's absolute tolerances
    and line search behave. Neither changes the minimiser.
    """
    cN, cD = float(logN.mean()), float(logD.mean())
    lN, lD = logN - cN, logD - cD
    scale = 1.0 / delta

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = _obj_grad(z, lN, lD, y, delta, w)
        return f * scale, g * scale

    z0 = np.array(theta0, dtype=float)
    z0[3:] = np.maximum(z0[3:], 0.0)
    z0[0] -= z0[3] * cN
    z0[1] -= z0[4] * cD
    with np.errstate(over="ignore", invalid="ignore"):  # wild line-search trials are rejected
        res = minimize(fun, z0, jac=True, method="L-BFGS-B", bounds=_BOUNDS, options=_OPTIONS)
    x = np.array(res.x, dtype=float)
    x[0] += x[3] * cN
    x[1] += x[4] * cD
    return x, float(res.fun) / scale, bool(res.success)


def _summary(theta: np.ndarray, objective: float) -> dict[str, float]:
    a_, b_, e_, alpha, beta = (float(v) for v in theta)
    tot = alpha + beta
    return {
        "E": float(np.exp(e_)), "A": float(np.exp(a_)), "B": float(np.exp(b_)),
        "alpha": alpha, "beta": beta,
        "a": beta / tot if tot > 0 else float("nan"),
        "b": alpha / tot if tot > 0 else float("nan"),
        "log_A": a_, "log_B": b_, "log_E": e_,
        "objective": objective,
    }


def _grid_search(logN: np.ndarray, logD: np.ndarray, y: np.ndarray, delta: float,
                 grid: Literal["small", "hoffmann"] | np.ndarray,
                 n_best: int | None) -> list[tuple[float, np.ndarray, bool]]:
    starts = start_grid(grid)
    if n_best is not None and n_best < len(starts):
        f0 = _objective_batch(starts, logN, logD, y, delta)
        f0 = np.where(np.isfinite(f0), f0, np.inf)
        starts = starts[np.argsort(f0, kind="stable")[:n_best]]
    out = []
    with _single_threaded_blas():
        for s in starts:
            x, f, ok = _lbfgs(s, logN, logD, y, delta, None)
            if np.isfinite(f):
                out.append((f, x, ok))
    if not out:
        raise RuntimeError("no start of the grid search reached a finite objective")
    out.sort(key=lambda t: t[0])
    return out


def huber_fit(N: ArrayLike, D: ArrayLike, loss: ArrayLike, *, delta: float = 1e-3,
              grid: Literal["small", "hoffmann"] | np.ndarray = "small",
              n_best: int | None = 24) -> dict[str, Any]:
    """Hoffmann et al. Approach-3 point fit: Huber loss on log residuals, L-BFGS, grid of starts.

    Parameters
    ----------
    N, D, loss : array_like of shape (n,)
        Parameter count, training tokens and final loss of each run (all positive, finite).
    delta : float, default 1e-3
        Huber threshold on the log-loss residual (Hoffmann et al. use 1e-3).
    grid : {"small", "hoffmann"} or ndarray of shape (k, 5), default "small"
        Starting points; see the module docstring. ``"hoffmann"`` is the paper's 4500-point
        grid.
    n_best : int or None, default 24
        Run L-BFGS only from the ``n_best`` starts with the lowest objective value (all of them
        are evaluated once, vectorised). ``None`` runs L-BFGS from every start, as Hoffmann et
        al. do. Ignored for explicit arrays of starts (all are optimised).

    Returns
    -------
    dict
        ``E, A, B, alpha, beta`` (the law), ``a = beta/(alpha+beta)`` and
        ``b = alpha/(alpha+beta)`` (compute-optimal exponents, see Notes),
        ``log_A, log_B, log_E``, ``objective`` (the minimum, sum of Huber losses),
        ``success`` (L-BFGS-B's flag for the best start), ``n_starts`` and ``theta``
        (ndarray (a, b, e, alpha, beta)), ``local_optima`` (ndarray (k, 5), distinct optima
        found, best first; used to warm-start :func:`bootstrap`).

    Notes
    -----
    Under C = 6ND the compute-optimal allocation is N* ∝ C^(beta/(alpha+beta)) and
    D* ∝ C^(alpha/(alpha+beta)); ``a`` and ``b`` follow that convention (Hoffmann et al.'s
    Table 2), so on the Chinchilla data ``a ≈ 0.51``.

    Examples
    --------
    >>> fit = huber_fit(df.N, df.D, df.loss)        # doctest: +SKIP
    >>> round(fit["alpha"], 3), round(fit["beta"], 3)  # doctest: +SKIP
    (0.347, 0.367)
    """
    logN, logD, y = _prepare(N, D, loss)
    if not (np.isfinite(delta) and delta > 0):
        raise ValueError("delta must be positive")
    explicit = not isinstance(grid, str)
    results = _grid_search(logN, logD, y, delta, grid, None if explicit else n_best)
    f, x, ok = results[0]
    out: dict[str, Any] = _summary(x, f)
    out["success"] = ok
    out["n_starts"] = len(results)
    out["theta"] = x.copy()
    out["local_optima"] = _distinct([r[1] for r in results])
    return out


def _distinct(thetas: list[np.ndarray], tol: float = 1e-2) -> np.ndarray:
    """Keep the first of each cluster of nearby optima (input sorted best first)."""
    kept: list[np.ndarray] = []
    for t in thetas:
        if all(np.max(np.abs(t - k)) > tol for k in kept):
            kept.append(t)
    return np.array(kept)


def bootstrap(N: ArrayLike, D: ArrayLike, loss: ArrayLike, *, n_resamples: int = 4000,
              seed: int = 42, delta: float = 1e-3,
              grid: Literal["small", "hoffmann"] | np.ndarray = "small",
              extra_starts: int = 1,
              full_fit: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Nonparametric bootstrap of :func:`huber_fit`: resample runs with replacement, refit.

    Parameters
    ----------
    N, D, loss : array_like of shape (n,)
        The runs, as for :func:`huber_fit`.
    n_resamples : int, default 4000
        Number of bootstrap resamples (Epoch AI use 4000).
    seed : int, default 42
        Seed of ``numpy.random.default_rng``; same seed, same resamples, same numbers.
    delta : float, default 1e-3
        Huber threshold.
    grid : {"small", "hoffmann"} or ndarray, default "small"
        Grid used for the full-data fit (only when ``full_fit`` is not given).
    extra_starts : int, default 1
        Besides the full-data optimum, each resample is also started from this many further
        points: Hoffmann et al.'s published estimate, then further distinct local optima of the
        full-data grid search (fewer if fewer exist). Cost grows linearly with the count.
    full_fit : dict, optional
        A :func:`huber_fit` result for the same data, to skip refitting it.

    Returns
    -------
    dict of str to ndarray of shape (n_resamples,)
        ``E, A, B, alpha, beta``, ``a = beta/(alpha+beta)``, ``b = alpha/(alpha+beta)``,
        ``objective`` (per-resample minimum) and ``success`` (bool, L-BFGS-B converged for the
        kept start).

    Notes
    -----
    Resampling is done with multinomial case weights (``counts[i]`` copies of row ``i``),
    which is identical to refitting on the resampled rows. Summaries such as standard errors
    (``np.std(out["alpha"], ddof=1)``) and percentile intervals
    (``np.percentile(out["a"], [5, 95])``) are left to the caller.
    """
    logN, logD, y = _prepare(N, D, loss)
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    if full_fit is None:
        full_fit = huber_fit(N, D, loss, delta=delta, grid=grid)
    optima = np.atleast_2d(full_fit["local_optima"])
    starts = np.vstack([optima[:1], HOFFMANN_START, optima[1:]])[: 1 + max(0, int(extra_starts))]
    rng = np.random.default_rng(seed)
    n = y.size
    keys = ("E", "A", "B", "alpha", "beta", "a", "b", "objective")
    out = {k: np.empty(n_resamples) for k in keys}
    success = np.zeros(n_resamples, dtype=bool)
    with _single_threaded_blas():
        for i in range(n_resamples):
            w = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
            best: tuple[float, np.ndarray, bool] | None = None
            for s in starts:
                x, f, ok = _lbfgs(s, logN, logD, y, delta, w)
                if np.isfinite(f) and (best is None or f < best[0]):
                    best = (f, x, ok)
            if best is None:
                for k in keys:
                    out[k][i] = np.nan
                continue
            summ = _summary(best[1], best[0])
            for k in keys:
                out[k][i] = summ[k]
            success[i] = best[2]
    res: dict[str, np.ndarray] = dict(out)
    res["success"] = success
    return res
