"""Leave-one-group-out validation: how well a fit predicts a group it has never seen.

PSIS-LOO scores how well a posterior predicts one more run of the groups it already has. What
partial pooling is for is the next dataset, evaluation set or tokenizer: a group with no runs.
Leaving a whole group out moves the posterior too far for importance sampling to be trusted
(its Pareto k is almost always above 0.7), so each group is refitted out exactly:

* the law is refitted to every run outside group ``g``, with the sampler compiled for the whole
  table (``g``'s runs are masked out of the likelihood) and the priors anchored on the runs kept,
  as a user who had only those runs would have them;
* ``g``'s runs are then scored under ``g``'s own parameters in that refit. Having no runs, those
  parameters are drawn from what the model says of an unseen group: the population distribution
  for pooled parameters, the common value for shared ones, and the prior for separate ones (a
  separate fit knows nothing of a new group). An ungrouped fit (one law for all) scores them
  under its one law;
* the score is the joint log predictive density of the group's runs,
  ``log mean_s prod_i p(y_i | theta_s)``: the runs of one group share its parameters, so their
  errors are not independent, and the joint density counts that (the sum of per-run densities
  would not).

``elpd_logo`` sums the groups' scores; its standard error, and that of the difference between
two fits, come from the spread of the per-group scores (``sqrt(G var)``), as for LOO.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import fields, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from .errors import InputError

#: refits are cheaper than the file's fit: a log density needs far fewer draws than the tails of
#: N*(C), and the posterior moves little when one group of several is left out
REFIT_WARMUP = 500
REFIT_DRAWS = 250


def group_labels(models: dict[str, Any]) -> np.ndarray:
    """Each run's group, from the first grouped posterior among ``models`` (all were fitted to the
    same runs in the same order: :func:`bayescale.plot_cli.compare_models` checks)."""
    for idata in models.values():
        cd = idata.constant_data
        if "group" in cd and len(np.unique(np.asarray(cd["group"].values).astype(str))) > 1:
            return np.array([str(g) for g in np.asarray(cd["group"].values)])
    raise InputError("--by-group needs groups: at least one posterior must be fitted with --group COL "
                     "(the groups to leave out)", field="--by-group")


def _config(meta: dict[str, Any]) -> Any:
    from .inference import FitConfig

    known = {f.name for f in fields(FitConfig)}
    raw = {k: v for k, v in meta["config"].items() if k in known}
    raw["priors"] = tuple(tuple(p) for p in raw.get("priors", ()))
    return FitConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def leave_one_group_out(idata: Any, labels: np.ndarray, *, warmup: int = REFIT_WARMUP, draws: int = REFIT_DRAWS,
                        seed: int = 0, label: str | None = None, quiet: bool = True) -> dict[str, Any]:
    """Leave-one-group-out scores of a one-law posterior (an averaged file's laws one at a time:
    :func:`bayescale.store.law_view`).

    Parameters
    ----------
    idata
        A posterior of one law, grouped or not.
    labels
        Each run's group (for an ungrouped posterior, the groups to leave out come from here).
    warmup, draws
        Per chain, for every refit (the file's number of chains).
    label
        Names the posterior in progress lines on stderr (unless ``quiet``).

    Returns
    -------
    dict
        ``elpd_logo`` (summed over groups), ``per_group`` ``{group: joint log density of its runs}``,
        ``n_runs`` per group, ``max_r_hat`` and ``divergences`` over all refits, ``seconds``.
    """
    import jax

    from .convergence import rhat
    from .inference import Groups, pointwise_log_lik, sample_law
    from .models import Anchors, law_overrides, resolve_priors
    from .store import AVERAGED, metadata

    meta = metadata(idata)
    law = meta["law"]
    if law == AVERAGED:
        raise InputError("leave_one_group_out takes one law; pass each law of an averaged posterior "
                         "(store.law_view)", field="law")
    base = _config(meta)
    family = tuple(base.family) if base.law == AVERAGED else (law,)
    cfg = replace(base, law=law, warmup=int(warmup), draws=int(draws))
    overrides = law_overrides(law, dict(base.priors), family) if base.law == AVERAGED else dict(base.priors)
    cd = idata.constant_data
    N, D, y = (np.asarray(cd[k].values, float) for k in ("N", "D", "loss"))
    se = np.asarray(cd["se"].values, float) if "se" in cd else None
    labels = np.array([str(g) for g in np.asarray(labels)])
    if labels.shape != y.shape:
        raise InputError(f"{labels.size} group labels for {y.size} runs", field="--by-group")
    grouped = "group" in idata.posterior.coords
    if grouped:
        runs = pd.DataFrame({"N": N, "D": D, "loss": y, "group": np.asarray(cd["group"].values).astype(str)})
        grp = Groups.of(runs, replace(cfg, law=base.law), family)
        gi, pooling = grp.index, grp.pooling
    else:
        gi, pooling = None, None
    lN, lD, ly = np.log(N), np.log(D), np.log(y)
    names = sorted({str(g) for g in labels})
    key = jax.random.PRNGKey(seed)
    per_group: dict[str, float] = {}
    n_runs: dict[str, int] = {}
    r_hats, divergences = [], 0
    t0 = time.perf_counter()
    for k, g in enumerate(names):
        out = labels == g
        keep = ~out
        if not quiet:
            print(f"  {label or law}: leaving out group {g} ({out.sum()} runs), refitting {keep.sum()}",
                  file=sys.stderr, flush=True)
        anchors = Anchors.from_data(N[keep], D[keep], y[keep])
        priors = resolve_priors(law, anchors, overrides)
        dr = sample_law(law, lN, lD, ly, anchors=anchors, priors=priors, config=cfg,
                        rng_key=jax.random.fold_in(key, k), mask=keep, group=gi, pooling=pooling, se=se)
        flat = {s: v.reshape(-1, *v.shape[2:]) for s, v in dr.samples.items()}
        ll = pointwise_log_lik(law, flat, lN[out], lD[out], ly[out], anchors=anchors, likelihood=cfg.likelihood,
                               nu=cfg.nu, group=None if gi is None else gi[out], se=None if se is None else se[out])
        joint = ll.reshape(ll.shape[0], -1).sum(axis=1)
        per_group[g] = float(logsumexp(joint) - math.log(joint.size))
        n_runs[g] = int(out.sum())
        divergences += int(np.sum(dr.diverging))
        r_hats += [rhat(np.asarray(v)) for s, v in dr.samples.items() if np.asarray(v).ndim == 2]
    return {"elpd_logo": float(sum(per_group.values())), "per_group": per_group, "n_runs": n_runs,
            "max_r_hat": float(np.nanmax(r_hats)) if r_hats else float("nan"), "divergences": divergences,
            "seconds": time.perf_counter() - t0}


def compare_by_group(models: dict[str, Any], *, warmup: int = REFIT_WARMUP, draws: int = REFIT_DRAWS,
                     seed: int = 0, quiet: bool = True) -> dict[str, Any]:
    """Rank one-law posteriors of the same runs by leave-one-group-out.

    ``models`` maps names to one-law posteriors (an averaged file expanded into its laws, as
    ``compare`` does). Returns ``groups``, and ``table``: one row per model, best first, with
    ``elpd_logo``, ``se``, ``elpd_diff`` and ``dse`` (from the per-group scores), ``per_group``,
    ``max_r_hat`` and ``divergences`` of its refits.
    """
    from .store import metadata

    labels = group_labels(models)
    res = {name: leave_one_group_out(idata, labels, warmup=warmup, draws=draws, seed=seed, label=name, quiet=quiet)
           for name, idata in models.items()}
    groups = sorted({str(g) for g in labels})
    G = len(groups)
    vec = {name: np.array([r["per_group"][g] for g in groups]) for name, r in res.items()}
    order = sorted(res, key=lambda n: -res[n]["elpd_logo"])
    best = vec[order[0]]
    rows = []
    for rank, name in enumerate(order):
        v, r = vec[name], res[name]
        rows.append({"model": name, "law": metadata(models[name])["law"], "rank": rank,
                     "elpd_logo": r["elpd_logo"], "se": float(math.sqrt(G * np.var(v, ddof=1))) if G > 1 else None,
                     "elpd_diff": float(best.sum() - v.sum()),
                     "dse": float(math.sqrt(G * np.var(best - v, ddof=1))) if G > 1 else None,
                     "per_group": r["per_group"], "n_runs": r["n_runs"], "max_r_hat": r["max_r_hat"],
                     "divergences": r["divergences"], "seconds": r["seconds"]})
    return {"groups": groups, "table": rows,
            "method": "exact refits without each group; the group's runs scored jointly under the parameters the "
                      f"model gives an unseen group ({warmup} warm-up + {draws} draws per chain per refit)"}
