"""Out-of-sample calibration: fit the cheaper runs of public studies, predict the expensive ones.

Run from the repository root (any Python with bayescale installed)::

    python bench/calibration.py                 # all tables, all methods (a few minutes)
    python bench/calibration.py --tables chinchilla --resamples 500
    python bench/calibration.py --json out.json # also write every number as JSON

Tables (``../shared/data`` beside the repository, or ``--data DIR``), N = non-embedding
parameters where the table gives it:

* ``chinchilla``: Epoch AI's reconstruction of the Chinchilla runs, the 240 rows Epoch keeps;
  fit C < 1e21 (217 runs), predict C >= 1e21 (23).
* ``gadre``: Gadre et al. 2024, loss on ``c4_val``, one fit per training set (c4_original, rpj,
  rw_original): fit the models below 1e9 parameters, predict the 1.4B and 6.9B ones (3 per set).
* ``marin``: the three Marin ladders of the Open-Athena isoFLOP table (comma, dclm, nemotron),
  C = the table's budget: fit budgets < 1e20, predict the 1.8e20 and 3e20 runs (30 per ladder).

Methods, each scored on every held-out run:

* ``default``: ``bayescale fit`` as shipped (the law family, weighted by forward validation, with
  its model discrepancy), predicting with observation noise;
* one row per law: that law's own posterior from the same fit (what ``fit --law NAME`` gives:
  no weights, no discrepancy);
* ``huber``: the classical Approach-3 point fit (Huber on log loss, L-BFGS) with a case
  bootstrap (``--resamples``) for the law, plus the full fit's residuals resampled as noise.

Scores per table (pooled over its sets) and over all held-out runs: median relative error of the
predictive median, the share of held-out losses inside the 50% and 90% central intervals, the
mean 90% width relative to the median, and the mean log predictive density of the held-out log
losses (``lpd/run``, the proper score: higher is better; the Huber baseline's with its residuals
smoothed by a Gaussian kernel). The acceptance rules of issue 8 are checked and printed.
Exit status 0 when everything ran, whatever the verdicts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
TABLES = ("chinchilla", "gadre", "marin")


def splits(data: Path, table: str) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``{set: (fit runs, held-out runs)}`` of a table, columns N, D, loss, C."""
    if table == "chinchilla":
        d = pd.read_csv(data / "chinchilla-epoch" / "chinchilla.csv")
        d = d[d.kept_by_epoch == 1][["N", "D", "loss", "C"]]
        return {"chinchilla": (d[d.C < 1e21], d[d.C >= 1e21])}
    if table == "gadre":
        g = pd.read_csv(data / "gadre2024-overtraining" / "models_loss.csv")
        out = {}
        for name, x in g.groupby("dataset"):
            x = pd.DataFrame({"N": x.N_params_no_embed.astype(float), "D": x.D_tokens.astype(float),
                              "loss": x.loss_c4_val.astype(float)})
            x["C"] = 6.0 * x.N * x.D
            out[f"gadre/{name}"] = (x[x.N < 1e9], x[x.N >= 1e9])
        return out
    if table == "marin":
        m = pd.read_csv(data / "isoflops-open-athena" / "isoflops_extract.csv")
        out = {}
        for ex, x in m[m.experiment.str.startswith("marin")].groupby("experiment"):
            x = pd.DataFrame({"N": x.params.astype(float), "D": x.tokens.astype(float),
                              "loss": x.loss.astype(float), "C": x.budget.astype(float)})
            out[f"marin/{ex.split('__')[1]}"] = (x[x.C < 1e20], x[x.C >= 1e20])
        return out
    raise ValueError(f"unknown table {table!r}")


def scores(draws: np.ndarray, y: np.ndarray, lpd: np.ndarray) -> dict[str, np.ndarray]:
    """Per held-out run: relative error of the median, inside the 50% / 90% interval, 90% width,
    and the log predictive density ``lpd`` of its log loss (given)."""
    q = np.quantile(draws, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    return {"err": np.abs(q[2] / y - 1) * 100, "in50": (y >= q[1]) & (y <= q[3]),
            "in90": (y >= q[0]) & (y <= q[4]), "width": (q[4] - q[0]) / q[2] * 100, "lpd": np.asarray(lpd, float)}


def huber_draws(fit: pd.DataFrame, test: pd.DataFrame, resamples: int, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Predictive draws of the classical fit (bootstrap laws plus resampled full-fit residuals),
    and the held-out runs' log predictive density under it, the residuals smoothed by a Gaussian
    kernel of Silverman's bandwidth (the resampled residuals alone have no density)."""
    from bayescale.baselines import bootstrap, huber_fit

    N, D, y = (fit[c].to_numpy(float) for c in ("N", "D", "loss"))
    full = huber_fit(N, D, y)
    boot = bootstrap(N, D, y, n_resamples=resamples, full_fit=full)
    resid = np.log(y) - np.log(full["E"] + full["A"] / N ** full["alpha"] + full["B"] / D ** full["beta"])
    Nt, Dt = test.N.to_numpy(float), test.D.to_numpy(float)
    col = {k: boot[k][:, None] for k in ("E", "A", "B", "alpha", "beta")}
    mu = np.log(col["E"] + col["A"] / Nt ** col["alpha"] + col["B"] / Dt ** col["beta"])
    ok = np.all(np.isfinite(mu), axis=1)
    rng = np.random.default_rng(seed)
    from scipy.special import logsumexp

    h = 1.06 * np.std(resid, ddof=1) * resid.size ** -0.2
    z = (np.log(test.loss.to_numpy(float))[None, :, None] - mu[ok][:, :, None] - resid[None, None, :]) / h
    lk = -0.5 * z**2 - np.log(h) - 0.5 * np.log(2 * np.pi)
    lpd = logsumexp(lk, axis=(0, 2)) - np.log(lk.shape[0] * lk.shape[2])
    return np.exp(mu[ok] + rng.choice(resid, size=mu[ok].shape)), lpd


def run(data: Path, tables: list[str], resamples: int, seed: int) -> dict[str, Any]:
    import bayescale as bs
    from bayescale.posterior import log_predictive_density, predict_draws
    from bayescale.store import law_view, laws_of, weights_of

    per_set: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    info: dict[str, Any] = {}
    for table in tables:
        for name, (fit, test) in splits(data, table).items():
            t0 = time.perf_counter()
            runs = bs.load_runs(fit.reset_index(drop=True))
            idata = bs.fit(runs, bs.FitConfig(seed=seed), quiet=True)
            seconds = time.perf_counter() - t0
            y = test.loss.to_numpy(float)
            N, D, C = (test[c].to_numpy(float) for c in ("N", "D", "C"))
            res = {"default": scores(predict_draws(idata, N, D, C=C, seed=seed), y,
                                     log_predictive_density(idata, N, D, y, C=C))}
            for law in laws_of(idata):
                view = law_view(idata, law)
                res[law] = scores(predict_draws(view, N, D, seed=seed), y, log_predictive_density(view, N, D, y))
            hd, hl = huber_draws(fit, test, resamples, seed)
            res["huber"] = scores(hd, y, hl)
            per_set[name] = res
            diag = bs.diagnostics(idata)
            meta = bs.store.metadata(idata)
            info[name] = {"n_fit": len(fit), "n_test": len(test), "seconds": round(seconds, 1),
                          "weights": {k: round(v, 3) for k, v in weights_of(idata).items()},
                          "rate_per_decade": round(meta["averaging"]["discrepancy"]["rate_mean"], 4),
                          "cuts": meta["averaging"]["cuts"],
                          "max_r_hat": {k: round(v["max_r_hat"], 4) for k, v in diag["per_law"].items()},
                          "divergences": {k: v["divergences"] for k, v in diag["per_law"].items()}}
            print(f"{name}: {len(fit)} runs fitted, {len(test)} held out, {seconds:.0f} s; weights "
                  + ", ".join(f"{k} {v:.2f}" for k, v in info[name]["weights"].items())
                  + f"; discrepancy {100 * info[name]['rate_per_decade']:.1f}%/decade; max R-hat "
                  + ", ".join(f"{k} {v:.3f}" for k, v in info[name]["max_r_hat"].items())
                  + "; divergences " + ", ".join(f"{k} {v}" for k, v in info[name]["divergences"].items()),
                  file=sys.stderr, flush=True)
    return {"sets": per_set, "info": info}


def pool(per_set: dict[str, dict[str, dict[str, np.ndarray]]], names: list[str]) -> dict[str, dict[str, float]]:
    """Scores of each method pooled over the sets ``names``."""
    methods = per_set[names[0]].keys()
    out = {}
    for m in methods:
        cat = {k: np.concatenate([per_set[n][m][k] for n in names]) for k in ("err", "in50", "in90", "width", "lpd")}
        out[m] = {"median_error_pct": float(np.median(cat["err"])), "cover50": float(np.mean(cat["in50"])),
                  "cover90": float(np.mean(cat["in90"])), "width90_pct": float(np.mean(cat["width"])),
                  "lpd_mean": float(np.mean(cat["lpd"])), "n": int(cat["err"].size)}
    return out


def verdicts(tables: dict[str, dict[str, dict[str, float]]],
             pooled: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Issue 8's acceptance rules, each with the measured figure."""
    out = []
    for t, s in tables.items():
        d = s["default"]
        singles = {m: v for m, v in s.items() if m not in ("default", "huber")}
        best = min(v["median_error_pct"] for v in singles.values())
        covering = [v["width90_pct"] for m, v in s.items() if m != "default" and v["cover90"] >= 0.85]
        out.append({"rule": f"{t}: 90% coverage >= 0.85", "value": d["cover90"], "ok": d["cover90"] >= 0.85})
        out.append({"rule": f"{t}: median error within 0.2 points of the best single law ({best:.2f}%)",
                    "value": d["median_error_pct"], "ok": d["median_error_pct"] <= best + 0.2})
        if covering:
            lim = 1.5 * min(covering)
            out.append({"rule": f"{t}: mean 90% width <= 1.5 x narrowest other method covering >= 85% "
                        f"({min(covering):.2f}% -> {lim:.2f}%)", "value": d["width90_pct"],
                        "ok": d["width90_pct"] <= lim})
        else:
            out.append({"rule": f"{t}: mean 90% width (no other method covers >= 85%: no bound)",
                        "value": d["width90_pct"], "ok": True})
    d = pooled["default"]
    out.append({"rule": "pooled: 90% coverage <= 0.97", "value": d["cover90"], "ok": d["cover90"] <= 0.97})
    out.append({"rule": "pooled: 50% coverage in [0.35, 0.70]", "value": d["cover50"],
                "ok": 0.35 <= d["cover50"] <= 0.70})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"public tables (default {DEFAULT_DATA})")
    ap.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the Huber baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"calibration: no data folder {args.data} (expected ../shared/data; give --data)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = run(args.data, args.tables, args.resamples, args.seed)
    groups = {t: [n for n in res["sets"] if n.split("/")[0] == t] for t in args.tables}
    tables = {t: pool(res["sets"], names) for t, names in groups.items()}
    per_set = {n: pool(res["sets"], [n]) for n in res["sets"]}
    pooled = pool(res["sets"], list(res["sets"]))
    print(f"{'table':12s} {'method':11s} {'n':>4s} {'med.err%':>9s} {'cover50':>8s} {'cover90':>8s} {'width90%':>9s} "
          f"{'lpd/run':>8s}")
    for label, block in [*tables.items(), ("ALL", pooled)]:
        for m, v in block.items():
            print(f"{label:12s} {m:11s} {v['n']:4d} {v['median_error_pct']:9.2f} {v['cover50']:8.2f} "
                  f"{v['cover90']:8.2f} {v['width90_pct']:9.2f} {v['lpd_mean']:8.3f}")
    print("\nper set (default):")
    for n, block in per_set.items():
        v = block["default"]
        print(f"  {n:20s} n={v['n']:3d} err {v['median_error_pct']:.2f}% cover50 {v['cover50']:.2f} "
              f"cover90 {v['cover90']:.2f} width90 {v['width90_pct']:.2f}% lpd/run {v['lpd_mean']:.3f}")
    print("\nacceptance (issue 8):")
    vs = verdicts(tables, pooled)
    for v in vs:
        print(f"  [{'ok' if v['ok'] else 'NO'}] {v['rule']}: {v['value']:.3f}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"tables": tables, "per_set": per_set, "pooled": pooled,
                                         "info": res["info"], "verdicts": vs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
