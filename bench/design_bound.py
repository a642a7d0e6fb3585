"""How much could any design save over random selection? A linearised bound on design_benefit's setting.

``bench/design_benefit.py`` asks targeted EIG to reach random selection's final 90% width of log
N*(1e24) with at most a third of random's FLOPs. This bench asks whether any choice of runs could,
even one that knows the truth. For each truth of that bench (the same draws, pool, start, budget
and batches), the posterior of the law's five parameters is linearised at the truth:

* each run's Fisher information about (log E, log A, log B, log alpha, log beta) for a log-loss
  observation under the fitted likelihood (Student-t with ``nu`` degrees of freedom:
  ``(nu + 1) / ((nu + 3) sigma^2)`` times the outer product of the log-loss gradient);
* the default priors (anchored on the 5 start runs, as the first fit is) as a Gaussian, by
  Gauss-Newton at the truth;
* the variance of log N*(1e24) is then ``g' M^-1 g`` with ``M`` the prior's and the runs'
  information summed and ``g`` the gradient of log N*.

Without noise in the picks' outcomes the information of a set of runs does not depend on what they
return, so in this approximation no adaptive strategy beats the best fixed set. Printed per
truth:

* the linearised widths of random's runs (exactly the picks ``lp.random_chooser`` makes there: they
  depend on the seed and costs only) and of the fixed log grid's, beside the MCMC figures of
  ``design_benefit.py`` (a check of the approximation);
* a lower bound on the FLOPs any set of runs needs to reach random's final width: the convex
  relaxation (each run bought in a fraction between 0 and 1) of the cheapest design whose
  variance is at most random's, by bisection on the budget;
* the FLOPs of a feasible set that gets there (greedy by variance removed per FLOP), an upper
  bound on the oracle's need;
* the narrowest width any design could reach with a third of random's FLOPs (relaxed).

``--replay`` does the same for ``bench/design_replay.py``'s width criterion: the 240 Epoch-kept
Chinchilla rows as the pool, the truth at the full pool's posterior median, the 6 cheapest rows
as the start, the target a width of 1.5x the full pool's (the bench's 10% median criterion is
not linear and is left out).

``--search`` asks the same of the default model (``--law averaged`` in ``design_replay.py``), where
no linearisation holds: the posterior of N* is a mixture of three laws, weighted by how each
forecasts runs it was not fitted on. It finds, by bisection over the number of cheapest rows, the
FLOPs with which cheapest-first meets design_replay's whole criterion (run by run, not batch by
batch); then it fits sets of runs that cost half of that (the issue's target for EIG) and reports
the narrowest 90% width any of them reaches: structured sets (the cheapest rows, then the largest
models or one run of each size, largest first, as the rest of the budget allows) and ``--seeds``
random ones (the cheapest K rows, K at random, then rows in random order while they fit).
``--local K`` then hill-climbs from the narrowest of them: K times, swap 1-3 of its rows for
others in random order while they fit, keeping a swap that narrows the width with the median still
within 10% (``--costly-swaps``: drop rows in proportion to their cost, so that a set holding
large models can move); the best set is refitted with another seed, since widths at 300 draws are noisy. A
search, not a bound: a set it did not try may do better. The reference is design_replay's (1000
warm-up and 1000 draws on the full pool); every subset is fitted at 300 and 300, as its loop refits.
``--scan K0 K1 STEP`` fits the cheapest K0, K0+STEP, ..., K1 rows with ``--scan-seeds`` seeds each
instead, and names the first count that most seeds pass: the bisection's figure, robust to the
fits' noise.

    python bench/design_bound.py              # 20 truths, about 30 minutes on a 2-core CPU
    python bench/design_bound.py --seeds 5 --budget-pct 10
    python bench/design_bound.py --replay     # about 4 minutes
    python bench/design_bound.py --search --seeds 30 --local 30   # about 13 minutes
    python bench/design_bound.py --search --scan 140 200 5        # about 7 minutes
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize

import bayescale as bs
from bayescale import loop as lp
from bayescale.inference import FitConfig
from bayescale.models import Anchors, _parse_spec, default_prior_specs

Z90 = 2 * 1.6448536269514722  # a Gaussian's 90% width in standard deviations


# --- the linearised model ----------------------------------------------------------------------

def phi_of(t: dict[str, float]) -> np.ndarray:
    """Chinchilla-law parameters -> (log E, log A, log B, log alpha, log beta)."""
    return np.log([t["E"], t["A"], t["B"], t["alpha"], t["beta"]])


def log_loss_gradient(phi: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """d log L(N, D) / d phi for every run, ``(runs, 5)``, with L = E + A N^-alpha + B D^-beta."""
    E, A, B, alpha, beta = np.exp(phi)
    tn, td = A * N ** -alpha, B * D ** -beta
    L = E + tn + td
    return np.stack([E / L, tn / L, td / L, -alpha * np.log(N) * tn / L, -beta * np.log(D) * td / L], axis=1)


def log_n_opt(phi: np.ndarray, C: float) -> float:
    """log N*(C) of the Chinchilla law (C = 6ND)."""
    _, _, _, alpha, beta = np.exp(phi)
    s = alpha + beta
    return float((phi[3] + phi[1] - phi[4] - phi[2]) / s + beta / s * math.log(C / 6))


def log_n_opt_gradient(phi: np.ndarray, C: float) -> np.ndarray:
    """d log N*(C) / d phi."""
    _, _, _, alpha, beta = np.exp(phi)
    s, k, lc = alpha + beta, phi[3] + phi[1] - phi[4] - phi[2], math.log(C / 6)
    return np.array([0.0, 1 / s, -1 / s,
                     1 / s - k * alpha / s**2 - lc * alpha * beta / s**2,
                     -1 / s - k * beta / s**2 + lc * alpha * beta / s**2])


def run_information(phi: np.ndarray, N: np.ndarray, D: np.ndarray, sigma: float, nu: float) -> np.ndarray:
    """Each run's Fisher information about phi, ``(runs, 5, 5)``, under Student-t(nu) noise on log loss."""
    j = log_loss_gradient(phi, N, D)
    return np.einsum("ij,ik->ijk", j, j) * (nu + 1) / ((nu + 3) * sigma**2)


def prior_information(phi: np.ndarray, anchors: Anchors) -> np.ndarray:
    """The default priors' information at phi (Gauss-Newton: the priors' residuals linearised).

    The priors are read from ``default_prior_specs``: LogNormal on E and the exponents (Normal in
    phi's logs) and Normal on the log amplitudes at the pivots, log A - alpha log N0 and log B -
    beta log D0."""
    specs = default_prior_specs("chinchilla", anchors)
    _, _, _, alpha, beta = np.exp(phi)
    rows = []  # (d residual / d phi, prior sd) per prior
    for site, grad in (("E", [1, 0, 0, 0, 0]), ("alpha", [0, 0, 0, 1, 0]), ("beta", [0, 0, 0, 0, 1]),
                       ("log_A_pivot", [0, 1, 0, -alpha * anchors.log_N0, 0]),
                       ("log_B_pivot", [0, 0, 1, 0, -beta * anchors.log_D0])):
        family, args, _ = _parse_spec(specs[site], site)
        if family not in ("LogNormal", "Normal"):
            raise SystemExit(f"the default prior of {site} is {specs[site]}; this bench linearises Normal and "
                             "LogNormal priors only")
        rows.append((np.asarray(grad, float), args[1]))
    return sum(np.outer(g, g) / sd**2 for g, sd in rows)


# --- designs -----------------------------------------------------------------------------------

def variance(M: np.ndarray, g: np.ndarray) -> float:
    return float(g @ np.linalg.solve(M, g))


def relaxed_min_variance(M0: np.ndarray, F: np.ndarray, cost: np.ndarray, g: np.ndarray, budget: float) -> float:
    """The least variance of g' phi over designs buying each run in a fraction in [0, 1] within
    ``budget``: a convex problem whose optimum no set of runs (fractions 0 or 1) can beat."""
    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.linalg.solve(M0 + np.einsum("i,ijk->jk", w, F), g)
        return float(g @ x), -np.einsum("j,ijk,k->i", x, F, x)

    w0 = np.full(len(cost), min(1.0, budget / float(cost.sum())))
    r = minimize(f, w0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * len(cost),
                 constraints=[{"type": "ineq", "fun": lambda w: budget - cost @ w, "jac": lambda w: -cost}],
                 options={"maxiter": 500, "ftol": 1e-15})
    return float(r.fun)


def least_budget(M0: np.ndarray, F: np.ndarray, cost: np.ndarray, g: np.ndarray, target: float,
                 hi: float, rel_tol: float = 2e-3) -> float:
    """A lower bound on the FLOPs any set of runs needs for variance <= ``target`` (inf above ``hi``)."""
    if relaxed_min_variance(M0, F, cost, g, hi) > target:
        return math.inf
    lo = 0.0
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if relaxed_min_variance(M0, F, cost, g, mid) <= target else (mid, hi)
    return lo  # the relaxation misses the target below lo: so does every set of runs


def greedy_budget(M0: np.ndarray, F: np.ndarray, cost: np.ndarray, g: np.ndarray, target: float) -> float:
    """FLOPs of a set of runs reaching variance <= ``target``: add the run removing the most variance
    per FLOP until there (inf if every run together does not)."""
    left, M, spent = np.ones(len(cost), bool), M0.copy(), 0.0
    while variance(M, g) > target:
        if not left.any():
            return math.inf
        idx = np.flatnonzero(left)
        v = np.array([variance(M + F[i], g) for i in idx])
        best = idx[int(np.argmax((variance(M, g) - v) / cost[idx]))]
        left[best], M, spent = False, M + F[best], spent + float(cost[best])
    return spent


def random_picks(seed: int, cost: np.ndarray, start: Sequence[int], budget: float, iterations: int,
                 batch: float | None = None) -> list[int]:
    """The runs ``lp.random_chooser(seed)`` buys in ``lp.replay`` with at most ``iterations`` batches
    of ``batch`` FLOPs (default ``budget / iterations``; what earlier batches left rolls over): they
    depend on costs only."""
    batch = budget / iterations if batch is None else batch
    choose, left = lp.random_chooser(seed), np.ones(len(cost), bool)
    left[list(start)] = False
    picks: list[int] = []
    spent = 0.0
    for it in range(iterations):
        idx = np.flatnonzero(left)
        rest = budget - spent
        if len(idx) == 0 or rest < cost[idx].min():
            break
        bb = max(min(rest, batch), rest / max(1, iterations - it))
        got = choose(None, None, None, cost[idx], bb, it) or choose(None, None, None, cost[idx], rest, it)
        if not got:
            break
        rows = idx[got]
        left[rows] = False
        picks += [int(r) for r in rows]
        spent += float(cost[rows].sum())
    return picks


# --- the two settings --------------------------------------------------------------------------

def simulated(a: argparse.Namespace) -> None:
    from design_benefit import C_TARGET, make_pool, truth_draws

    runs = bs.load_runs("chinchilla", filter="kept_by_epoch == 1")
    nu = FitConfig().nu
    truths = truth_draws(runs, a.seeds)
    NN, DD, cost, start, lattice = make_pool(runs, a.grid)
    budget = a.budget_pct / 100 * float(cost.sum())
    rest = np.setdiff1d(np.arange(len(cost)), start)
    print(f"design_benefit's setting: {a.grid} x {a.grid} pool, budget {budget:.3e} FLOP ({a.budget_pct:g}%) in "
          f"{a.iterations} batches, {a.seeds} truths; log N*({C_TARGET:.0e}), linearised at each truth")
    print("truth | width: start  random  grid | random's FLOP | any design needs, share of random's: "
          "lower bound  greedy | best width with a third")
    out = []
    for s, t in enumerate(truths):
        phi = phi_of(t)
        y = np.exp(np.log(t["E"] + t["A"] * NN ** -t["alpha"] + t["B"] * DD ** -t["beta"]))
        anchors = Anchors.from_data(NN[start], DD[start], y[start])
        F = run_information(phi, NN, DD, t["sigma"], nu)
        g = log_n_opt_gradient(phi, C_TARGET)
        M0 = prior_information(phi, anchors) + F[start].sum(0)
        pr = random_picks(1000 + s, cost, start, budget, a.iterations)
        v_rand, spent = variance(M0 + F[pr].sum(0), g), float(cost[pr].sum())
        grid, c = [], 0.0
        for i in lattice:  # the fixed plan, cheapest first, while the budget lasts
            if c + cost[i] > budget:
                break
            grid.append(i)
            c += cost[i]
        lb = least_budget(M0, F[rest], cost[rest], g, v_rand, budget)
        gr = greedy_budget(M0, F[rest], cost[rest], g, v_rand)
        third = relaxed_min_variance(M0, F[rest], cost[rest], g, spent / 3)
        v_grid = variance(M0 + F[grid].sum(0), g)
        row = (Z90 * math.sqrt(variance(M0, g)), Z90 * math.sqrt(v_rand), Z90 * math.sqrt(v_grid),
               spent, lb / spent, gr / spent, Z90 * math.sqrt(third))
        out.append(row)
        print(f"{s:5d} | {row[0]:12.3f} {row[1]:7.3f} {row[2]:5.3f} | {spent:13.3e} | {row[4]:24.3f} "
              f"{row[5]:7.3f} | {row[6]:8.3f}", flush=True)
    m = np.median(np.asarray(out), axis=0)
    lbs = [r[4] for r in out]
    print(f"median | {m[0]:11.3f} {m[1]:7.3f} {m[2]:5.3f} | {m[3]:13.3e} | {m[4]:24.3f} {m[5]:7.3f} | {m[6]:8.3f}")
    print(f"any design, even one that knows the truth, needs at least {min(lbs):.3f} of random's FLOPs at every truth "
          f"(median {m[4]:.3f}) to reach random's final width; the issue's target is 1/3 "
          f"({sum(x <= 1 / 3 for x in lbs)} of {len(lbs)} truths could meet it)")


def replay(a: argparse.Namespace) -> None:
    from design_replay import C_TARGET

    runs = bs.load_runs("chinchilla", filter="kept_by_epoch == 1")
    NN, DD = runs["N"].to_numpy(float), runs["D"].to_numpy(float)
    cost = 6.0 * NN * DD
    total = float(cost.sum())
    full = bs.fit(runs, FitConfig(law="chinchilla", warmup=1000, draws=1000), quiet=True)
    t = {k: float(np.median(full.posterior[k].values)) for k in ("E", "A", "B", "alpha", "beta", "sigma")}
    phi = phi_of(t)
    start = lp.oracle_start(runs, cost, a.init)
    y = runs["loss"].to_numpy(float)
    F = run_information(phi, NN, DD, t["sigma"], FitConfig().nu)
    g = log_n_opt_gradient(phi, C_TARGET)
    M0 = prior_information(phi, Anchors.from_data(NN[start], DD[start], y[start])) + F[start].sum(0)
    target = 1.5**2 * variance(M0 + F[np.setdiff1d(np.arange(len(y)), start)].sum(0), g)
    rest = np.setdiff1d(np.arange(len(y)), start)
    lb = least_budget(M0, F[rest], cost[rest], g, target, total)
    gr = greedy_budget(M0, F[rest], cost[rest], g, target)
    M, spent = M0.copy(), 0.0
    for i in np.argsort(cost, kind="stable"):
        if i in start:
            continue
        if variance(M, g) <= target:
            break
        M, spent = M + F[i], spent + float(cost[i])
    cheap = spent / total
    shares = []
    for s in range(a.seeds):
        picks = random_picks(s, cost, start, total, int(math.ceil(100 / a.batch_pct)), a.batch_pct / 100 * total)
        M, spent = M0.copy(), 0.0
        for i in picks:  # in the order bought: the criterion is checked run by run (a lower bound per batch)
            if variance(M, g) <= target:
                break
            M, spent = M + F[i], spent + float(cost[i])
        shares.append(spent / total)
    print(f"design_replay's width criterion (1.5x the full pool's, linearised; the full pool's own: "
          f"{Z90 * math.sqrt(target / 2.25):.3f}), share of the pool's FLOPs: any design at least {lb / total:.3f} "
          f"(greedy oracle {gr / total:.3f}); cheapest-first {cheap:.3f}; random {np.median(shares):.3f} "
          f"(median of {a.seeds}, {min(shares):.3f}-{max(shares):.3f})")


def search(a: argparse.Namespace) -> None:
    from dataclasses import replace

    from design_replay import C_TARGET, replace_cfg

    from bayescale.posterior import mixture, optimal_draws
    from bayescale.store import AVERAGED

    runs = bs.load_runs("chinchilla", filter="kept_by_epoch == 1").reset_index(drop=True)
    NN = runs["N"].to_numpy(float)
    cost = 6.0 * NN * runs["D"].to_numpy(float)
    total = float(cost.sum())
    order = np.argsort(cost, kind="stable")
    cfg = FitConfig(law=AVERAGED, warmup=300, draws=300)  # design_replay's averaged setting
    obj = lp.Objective("n_opt", C_TARGET)

    def summary(idx: np.ndarray, config: FitConfig = cfg) -> tuple[dict, Any]:
        idata = bs.fit(runs.iloc[np.sort(idx)].reset_index(drop=True), config, quiet=True)
        return lp.summarise(lp.design_step(idata, np.zeros(0), np.zeros(0), np.zeros(0), None, obj).phi), idata

    ref, ref_idata = summary(np.arange(len(runs)), replace_cfg(cfg, 1000))  # design_replay's reference
    limit = 1.5 * ref["width90"]

    def near(s: dict) -> bool:
        return abs(s["q50"] / ref["q50"] - 1) <= 0.10

    def meets(s: dict) -> bool:
        return near(s) and s["width90"] <= limit

    head = (f"full pool: N*({C_TARGET:.3g}) = {ref['q50']:.4g} [{ref['q05']:.4g}, {ref['q95']:.4g}], log width "
            f"{ref['width90']:.3f} (criterion: median within 10%, width <= {limit:.3f}); ")
    if a.scan:  # cheapest-first row by row, each count fitted with several seeds: how noisy is the bisection?
        k0, k1, step = a.scan
        first = None
        for k in range(k0, k1 + 1, step):
            fits = [summary(order[:k], replace(cfg, seed=seed))[0] for seed in range(a.scan_seeds)]
            n_met = sum(meets(s) for s in fits)
            if n_met * 2 > len(fits) and first is None:
                first = k  # where cheapest-first, which stops at the first count that meets it, stops
            print(f"  cheapest {k:>4} rows, {cost[order[:k]].sum() / total:.3f}: log widths "
                  + " ".join(f"{s['width90']:.3f}" for s in fits)
                  + ", median/full " + " ".join(f"{s['q50'] / ref['q50']:.3f}" for s in fits)
                  + f"; {n_met} of {len(fits)} seeds meet it", flush=True)
        print(head + (f"the first count that meets it with most seeds: {first} rows "
                      f"({cost[order[:first]].sum() / total:.3f} of the pool's FLOPs)" if first is not None
                      else "no count in the scan meets it with most seeds"), flush=True)
        return
    if a.cap_pct is None:
        lo, hi = a.init, len(runs)  # cheapest-first: the fewest cheapest rows that meet the criterion
        while hi - lo > 1:
            k = (lo + hi) // 2
            lo, hi = (lo, k) if meets(summary(order[:k])[0]) else (k, hi)
        cheap = float(cost[order[:hi]].sum())
        cap = cheap / 2
        print(head + f"cheapest-first meets it with {hi} rows, {cheap / total:.3f} of the pool's FLOPs; "
              f"sets at half that ({cap / total:.3f}):", flush=True)
    else:
        cap = a.cap_pct / 100 * total
        print(head + f"sets that cost at most {cap / total:.3f} of the pool's FLOPs:", flush=True)

    def fill(base: np.ndarray, rest: Sequence[int]) -> np.ndarray:
        idx, spent = list(base), float(cost[base].sum())
        for j in rest:
            if j not in idx and spent + cost[j] <= cap:
                idx.append(int(j))
                spent += float(cost[j])
        return np.asarray(idx)

    sets = []
    k_cap = int(np.searchsorted(np.cumsum(cost[order]), cap, side="right"))
    sets.append((f"cheapest {k_cap}", order[:k_cap]))
    for k in (k_cap // 2, 2 * k_cap // 3, 5 * k_cap // 6):
        rest = order[k:]
        sets.append((f"cheapest {k}, then largest models", fill(order[:k], rest[np.argsort(-NN[rest], kind="stable")])))
        sizes = sorted(np.unique(NN[rest]), reverse=True)
        per = [rest[NN[rest] == n][np.argmin(cost[rest[NN[rest] == n]])] for n in sizes]
        sets.append((f"cheapest {k}, then one run per size", fill(order[:k], per)))
    rng = np.random.default_rng(0)
    for s in range(a.seeds):
        k = int(rng.integers(k_cap // 3, k_cap + 1))
        sets.append((f"random {s} (cheapest {k}, then at random)", fill(order[:k], rng.permutation(order[k:]))))
    widths, hits, narrowest = [], 0, None
    for name, idx in sets:
        s, idata = summary(idx)
        widths.append(s["width90"])
        hits += meets(s)
        if s["width90"] <= min(widths):
            narrowest = (name, idx, s, idata)
        met = "  meets the criterion" if meets(s) else ""
        print(f"  {name:<40} {len(idx):>4} rows, {cost[idx].sum() / total:.3f}: "
              f"median/full {s['q50'] / ref['q50']:.3f}, log width {s['width90']:.3f}{met}", flush=True)
    print(f"narrowest log width with {cap / total:.3f} of the pool's FLOPs: {min(widths):.3f} (median "
          f"{np.median(widths):.3f} of {len(widths)} sets); the criterion asks <= {limit:.3f}; {hits} sets meet it")
    if a.local:  # hill-climb from the narrowest set: swap 1-3 of its rows for others that fit the budget
        name, idx, best, idata = narrowest
        rng = np.random.default_rng(1)
        tried = 0
        for it in range(a.local):
            size = min(int(rng.integers(1, 4)), len(idx) - 1)
            # --costly-swaps: drop rows in proportion to their cost, so a set full of large models can move
            drop = rng.choice(idx, size=size, replace=False, p=cost[idx] / cost[idx].sum() if a.costly_swaps else None)
            keep = np.setdiff1d(idx, drop)
            cand = fill(keep, rng.permutation(np.setdiff1d(np.arange(len(runs)), idx)))
            if len(cand) == len(keep):
                continue  # nothing else fits the budget
            tried += 1
            s, cand_idata = summary(cand)
            if s["width90"] < best["width90"] and near(s):
                idx, best, idata = cand, s, cand_idata
                print(f"  swap {it:>3}: {len(idx)} rows, {cost[idx].sum() / total:.3f}, median/full "
                      f"{s['q50'] / ref['q50']:.3f}, log width {s['width90']:.3f}", flush=True)
        again, _ = summary(idx, replace(cfg, seed=1))  # the best set refitted: how much of its edge is noise
        print(f"local search from it, {tried} swaps tried: narrowest log width {best['width90']:.3f} "
              f"({'meets' if meets(best) else 'does not meet'} the criterion); refitted with another seed "
              f"{again['width90']:.3f}, median/full {again['q50'] / ref['q50']:.3f}", flush=True)
        narrowest = (f"{name}, after the local search", idx, best, idata)
        k = int(np.argmin(np.isin(order, idx)))  # the cheapest k rows are all in the set
        others = np.setdiff1d(idx, order[:k])
        extra = sorted(zip(NN[others], runs["D"].to_numpy(float)[others], strict=True), reverse=True)
        print(f"  the set: the cheapest {k} rows and {len(extra)} others, the largest "
              + ", ".join(f"{n / 1e6:.0f}M x {d / 1e9:.2g}B" for n, d in extra[:8]), flush=True)
    for name, *_, idata in (("the full pool", None, None, ref_idata), narrowest):
        n_opt, at = optimal_draws(idata, C_TARGET)["N_opt"][:, 0], 0
        parts = []
        for law, _, draws in mixture(idata).parts:  # optimal_draws concatenates the laws in this order
            q = np.quantile(n_opt[at:at + len(draws)], [0.05, 0.5, 0.95])
            parts.append(f"{law} {len(draws) / len(n_opt):.2f}: {q[1]:.3g} [{q[0]:.3g}, {q[2]:.3g}]")
            at += len(draws)
        print(f"  N* by law (weight: median [90%]), {name}: " + "; ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="truths (or random seeds with --replay) (default 20)")
    ap.add_argument("--iterations", type=int, default=6, help="design_benefit's batches (default 6)")
    ap.add_argument("--budget-pct", type=float, default=3.0, help="design_benefit's budget, %% of the pool (default 3)")
    ap.add_argument("--grid", type=int, default=12, help="design_benefit's grid points per axis (default 12)")
    ap.add_argument("--replay", action="store_true", help="design_replay's setting instead")
    ap.add_argument("--search", action="store_true",
                    help="design_replay's averaged setting: sets at half cheapest-first's FLOPs "
                         "(--seeds random ones)")
    ap.add_argument("--cap-pct", type=float, default=None,
                    help="--search: sets that cost at most this %% of the pool's FLOPs (default: half of what "
                         "cheapest-first needs, found by bisection)")
    ap.add_argument("--local", type=int, default=0,
                    help="--search: then this many swaps of a local search from the narrowest set (default 0)")
    ap.add_argument("--costly-swaps", action="store_true",
                    help="--local: drop rows in proportion to their cost rather than uniformly")
    ap.add_argument("--scan", type=int, nargs=3, metavar=("K0", "K1", "STEP"), default=None,
                    help="--search: instead, fit the cheapest K0, K0+STEP, ..., K1 rows with --scan-seeds seeds each")
    ap.add_argument("--scan-seeds", type=int, default=3, help="--scan: seeds per count (default 3)")
    ap.add_argument("--init", type=int, default=6, help="--replay: the cheapest rows it starts from (default 6)")
    ap.add_argument("--batch-pct", type=float, default=3.0,
                    help="--replay: random's batches, %% of the pool (default 3)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    (search if a.search else replay if a.replay else simulated)(a)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
