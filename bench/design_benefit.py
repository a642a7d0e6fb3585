"""Benefit of the design on simulated truth: how many FLOPs to pin down log N*(1e24)?

Truths are posterior draws of the Chinchilla law fitted to the 240 Epoch-kept Chinchilla rows
(one draw per seed; its noise is that draw's sigma, Student-t with 4 degrees of freedom, as the
fit assumes). The pool is a log grid over the rows' N and D ranges; losses come from the truth.
Every strategy starts from the same 5 cheapest grid runs and gets the same FLOP budget, spent in
the same number of batches:

- targeted EIG per FLOP about log N*(1e24) (``bayescale.loop``'s design);
- random grid runs;
- a fixed log grid: a coarse sub-lattice of the pool, bought cheapest first (a non-adaptive plan).

Printed: each strategy's final 90% width of log N*(1e24) (median over seeds), the width after
each batch (the curves), and the FLOPs EIG needs to reach the others' final width, as a share of
theirs (target <= 1/3).

    python bench/design_benefit.py --quick       # a few minutes on a 2-core CPU
    python bench/design_benefit.py --seeds 20    # the issue's setting (much longer)
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

import bayescale as bs
from bayescale import loop as lp
from bayescale.inference import FitConfig
from bayescale.laws import loss

C_TARGET = 1e24
NAMES = ("EIG", "random", "log grid")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="truths (posterior draws) (default 5; the issue asks 20)")
    ap.add_argument("--iterations", type=int, default=6, help="batches per strategy (default 6)")
    ap.add_argument("--budget-pct", type=float, default=3.0,
                    help="FLOP budget as a percentage of the pool's total cost (default 3)")
    ap.add_argument("--grid", type=int, default=12, help="pool: grid points per axis (default 12)")
    ap.add_argument("--warmup", type=int, default=400, help="warm-up of each first fit (default 400)")
    ap.add_argument("--draws", type=int, default=400, help="draws per chain (default 400)")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 4 batches, 300 warm-up and draws")
    a = ap.parse_args()
    if a.quick:
        a.seeds, a.iterations, a.warmup, a.draws = 2, 4, 300, 300

    runs = bs.load_runs("chinchilla", filter="kept_by_epoch == 1")
    t0 = time.perf_counter()
    truths = truth_draws(runs, a.seeds)
    print(f"truths: draws of the Chinchilla-law posterior of {len(runs)} rows ({time.perf_counter() - t0:.0f} s)")

    NN, DD, cost, start, lattice = make_pool(runs, a.grid)
    budget = a.budget_pct / 100 * float(cost.sum())
    batch = budget / a.iterations
    obj = lp.Objective("n_opt", C_TARGET)
    cfg = FitConfig(law="chinchilla", warmup=a.warmup, draws=a.draws)
    print(f"pool: {a.grid} x {a.grid} log grid, {cost.sum():.3e} FLOP in all; budget {budget:.3e} FLOP "
          f"({a.budget_pct:g}%) in {a.iterations} batches; start: the 5 cheapest runs")

    curves: dict[str, list[list[tuple[float, float]]]] = {k: [] for k in NAMES}
    for s, truth in enumerate(truths):
        r = np.random.default_rng(100 + s)
        noise = truth["sigma"] * r.standard_t(4.0, size=len(NN))
        y = np.asarray(loss("chinchilla", truth, NN, DD)) * np.exp(noise)
        table = pd.DataFrame({"N": NN, "D": DD, "C": cost, "loss": y, "run_id": [f"g{i}" for i in range(len(NN))]})
        choosers = {"EIG": lp.eig_chooser(obj, seed=s), "random": lp.random_chooser(1000 + s),
                    "log grid": fixed_chooser(lattice, table)}
        for name, ch in choosers.items():
            t = time.perf_counter()
            res = lp.replay(table, cost, start, budget, obj, lp.Fitter(cfg), chooser=ch, batch_budget=batch,
                            allow_unconverged=True, max_iterations=a.iterations)
            curves[name].append([(st.spent, st.objective["width90"]) for st in res.steps])
            print(f"  truth {s} (alpha {truth['alpha']:.3f}, beta {truth['beta']:.3f}) {name:<9}: final width "
                  f"{res.steps[-1].objective['width90']:.3f} after {res.spent:.3e} FLOP "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)

    print("\ncurves (median over truths): 90% width of log N*(1e24) after each batch, FLOP spent")
    for name in NAMES:
        k = min(len(c) for c in curves[name])
        pts = [(np.median([c[i][0] for c in curves[name]]), np.median([c[i][1] for c in curves[name]]))
               for i in range(k)]
        print(f"  {name:<9} " + "  ".join(f"{w:.3f}@{f:.2e}" for f, w in pts))
    final = {name: [c[-1][1] for c in curves[name]] for name in NAMES}
    print("final width (median): " + ", ".join(f"{k} {np.median(v):.3f}" for k, v in final.items()))
    for other in NAMES[1:]:
        shares = []
        for c_eig, c_oth in zip(curves["EIG"], curves[other], strict=True):
            need = flops_to_reach(c_eig, c_oth[-1][1])
            shares.append(need / c_oth[-1][0] if c_oth[-1][0] > 0 else math.nan)
        print(f"EIG FLOPs to reach {other}'s final width / {other}'s FLOPs: median "
              f"{np.median(shares):.3f} (per truth: {', '.join(f'{x:.3f}' for x in shares)}; inf: never within "
              "the budget; target <= 1/3)")


def truth_draws(runs: pd.DataFrame, seeds: int) -> list[dict[str, float]]:
    """One posterior draw of the Chinchilla law, fitted to ``runs``, per seed (the simulated truths)."""
    post = bs.fit(runs, FitConfig(law="chinchilla", warmup=500, draws=500), quiet=True)
    names = ("E", "A", "B", "alpha", "beta", "sigma")
    draws = {k: np.asarray(post.posterior[k].values).ravel() for k in names}
    picks = np.random.default_rng(0).choice(len(draws["E"]), size=seeds, replace=False)
    return [{k: float(v[j]) for k, v in draws.items()} for j in picks]


def make_pool(runs: pd.DataFrame, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], list[int]]:
    """The candidate pool (a ``grid`` x ``grid`` log grid over the rows' N and D ranges): N, D, cost,
    the start (the 5 cheapest) and the fixed plan's runs in the order it buys them."""
    n = np.geomspace(runs["N"].min(), runs["N"].max(), grid)
    d = np.geomspace(runs["D"].min(), runs["D"].max(), grid)
    NN, DD = (x.ravel() for x in np.meshgrid(n, d, indexing="ij"))
    cost = 6.0 * NN * DD
    start = lp.oracle_start(pd.DataFrame({"N": NN}), cost, 5)
    lattice = [int(i) for i in np.argsort(cost, kind="stable")
               if (i // grid) % 3 == 1 and (i % grid) % 3 == 1 and i not in start]
    return NN, DD, cost, start, lattice


def flops_to_reach(curve: list[tuple[float, float]], width: float) -> float:
    """FLOPs at the first refit whose width is at most ``width`` (inf if none)."""
    return next((f for f, w in curve if w <= width), math.inf)


def fixed_chooser(order: list[int], table: pd.DataFrame) -> lp.Chooser:
    """Runs of a fixed plan in its order (cheapest first), as many as fit in each batch."""

    def choose(idata, N, D, cost, budget, it):
        left, out = budget, []
        for i in order:
            hit = np.flatnonzero((N == table["N"].iloc[i]) & (D == table["D"].iloc[i]))
            if len(hit) and cost[hit[0]] <= left:
                out.append(int(hit[0]))
                left -= cost[hit[0]]
            elif len(hit):
                break
        return out
    return choose



if __name__ == "__main__":
    main()
