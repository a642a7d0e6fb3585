"""The posterior file: what a fit stores, its metadata, and how to read it back.

One NetCDF file (``arviz.from_netcdf`` opens it; bayescale reads it without ArviZ, see
:mod:`bayescale._idata`) holds one of two kinds of fit:

* **one law** (``bayescale fit --law NAME``): groups ``posterior`` (the law's sampled sites and
  natural parameters), ``sample_stats``, ``prior``, ``observed_data`` and ``constant_data`` (N,
  D, C, loss per run), as ArviZ names them. The pointwise log likelihood (``log_likelihood``)
  is not stored: it is draws x runs numbers, most of the file, and
  :func:`bayescale.inference.with_log_likelihood` recomputes it from the draws.
* **the law family, averaged** (``bayescale fit``, the default): the same groups, with every
  law's variables named ``LAW.NAME`` (``kaplan.alpha_N``, ``chinchilla.diverging``), plus
  ``posterior.discrepancy_rate``, the draws of the model-discrepancy rate, and per run each law's
  residual and robustness weight for its misfit process (``constant_data.LAW.gp_residual``,
  ``LAW.gp_weight``; :mod:`bayescale.discrepancy`). The weights, the forward-validation cuts and
  scores and each process's hyperparameters live in the metadata.

``posterior.attrs["bayescale"]`` holds the metadata as JSON: the law (or ``"averaged"``), data
source and filter, pivots, priors, sampler options and library versions, so that every later
command works from the file alone. :func:`law_view` turns one law of an averaged file into a
one-law InferenceData, so that code written for one law serves each law of the family.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from ._idata import Posterior, read
from .discrepancy import RESIDUAL, WEIGHT
from .errors import InputError

META_KEY = "bayescale"
AVERAGED = "averaged"
SEP = "."  # LAW.NAME in an averaged file


def metadata(idata: Posterior) -> dict[str, Any]:
    """The bayescale metadata stored with a posterior."""
    try:
        return json.loads(idata.posterior.attrs[META_KEY])
    except (KeyError, AttributeError, json.JSONDecodeError):
        raise InputError("not a bayescale posterior (no 'bayescale' metadata in the posterior group); "
                         "expected a file written by `bayescale fit`") from None


def is_averaged(idata: Posterior) -> bool:
    """Whether ``idata`` holds the averaged law family (else one law)."""
    return metadata(idata)["law"] == AVERAGED


def laws_of(idata: Posterior) -> list[str]:
    """The laws a posterior holds, in the order they were fitted."""
    meta = metadata(idata)
    return list(meta["laws"]) if meta["law"] == AVERAGED else [meta["law"]]


def weights_of(idata: Posterior) -> dict[str, float]:
    """Each law's weight (1 for a one-law fit)."""
    meta = metadata(idata)
    if meta["law"] != AVERAGED:
        return {meta["law"]: 1.0}
    return {law: float(v["weight"]) for law, v in meta["laws"].items()}


def law_view(idata: Posterior, law: str) -> Posterior:
    """One law of a posterior as a one-law InferenceData (``idata`` itself for a one-law fit).

    The view's variables carry the law's own names and its metadata is that of a one-law fit
    of the same data (law, priors, anchors and the shared fields), so diagnostics, summaries
    and figures written for one law work on it unchanged.
    """
    meta = metadata(idata)
    if meta["law"] != AVERAGED:
        if law != meta["law"]:
            raise InputError(f"this posterior holds the {meta['law']} law, not {law!r}", field="--law")
        return idata
    if law not in meta["laws"]:
        raise InputError(f"unknown law {law!r}; this posterior holds {', '.join(meta['laws'])}", field="--law")
    prefix = law + SEP
    groups = {}
    for name in idata.groups():
        ds = idata[name]
        mine = [v for v in ds.data_vars if str(v).startswith(prefix)]
        if name in ("observed_data", "constant_data"):  # the runs, and this law's own per-run data
            common = [v for v in ds.data_vars if SEP not in str(v)]
            groups[name] = ds[common + mine].rename({v: str(v)[len(prefix):] for v in mine})
        elif mine:
            groups[name] = ds[mine].rename({v: str(v)[len(prefix):] for v in mine})
    view_meta = {k: v for k, v in meta.items() if k not in ("laws", "averaging")}
    view_meta.update(meta["laws"][law])
    view_meta["law"] = law
    view_meta["averaged_from"] = True
    groups["posterior"] = groups["posterior"].copy()
    groups["posterior"].attrs = {META_KEY: json.dumps(view_meta)}
    return Posterior(**groups)


GROUP_PREFIX = "g_"  # a grouped fit's per-group variables: g_NAME, with a ``group`` dimension
NEW_GROUP = "new"  # the name that asks for a group with no runs (any name the fit did not see does too)


def groups_of(idata: Posterior) -> list[str]:
    """The groups of a grouped (hierarchical) posterior; empty for an ungrouped one."""
    post = idata.posterior
    return [str(g) for g in post.coords["group"].values] if "group" in post.coords else []


def group_view(idata: Posterior, group: str, *, seed: int = 0) -> Posterior:
    """One group of a grouped posterior as an ungrouped one (one law or the averaged family).

    For a group the fit saw, every law's sites are that group's draws and the runs are the
    group's own. For any other name (``new``), the sites are drawn from the population: each
    posterior draw's population value plus its spread times a fresh standard normal, per
    varying coordinate (seeded by ``seed``), so its intervals carry the spread between groups;
    its runs are all the fit's runs (what the population was learned from).
    """
    import numpy as np
    import xarray as xr

    names = groups_of(idata)
    if not names:
        return idata
    meta = metadata(idata)
    seen = group in names
    post = idata.posterior
    keep = {}
    for v in post.data_vars:
        prefix, _, base = str(v).rpartition(SEP)
        if base.startswith((GROUP_PREFIX, "tau_", "effect")):
            continue
        gname = (prefix + SEP if prefix else "") + GROUP_PREFIX + base
        if seen and gname in post:
            keep[str(v)] = post[gname].sel(group=group).drop_vars("group")
        else:
            keep[str(v)] = post[v]
    new_post = xr.Dataset(keep, attrs=post.attrs)
    if not seen:
        new_post = _population_draws(new_post, idata, meta, np.random.default_rng(seed), group)
    view_meta = {**meta, "group": group if seen else f"{group} (no runs: drawn from the population)"}
    new_post.attrs = {META_KEY: json.dumps(view_meta)}
    out = {"posterior": new_post}
    run_of = idata.constant_data["group"].values.astype(str) if "group" in idata.constant_data else None
    mine = (run_of == group) if (seen and run_of is not None) else None
    for name in idata.groups():
        if name == "posterior":
            continue
        ds = idata[name]
        if name == "log_likelihood" and not seen:
            continue
        if mine is not None and "run" in ds.dims:
            ds = ds.isel(run=np.flatnonzero(mine))
        drop = [v for v in ds.data_vars if str(v).rpartition(SEP)[2].startswith(GROUP_PREFIX)
                or (not seen and str(v).rpartition(SEP)[2] in (RESIDUAL, WEIGHT))]  # a new group has no residuals
        out[name] = ds.drop_vars(drop)
    return Posterior(**out)


def _population_draws(post: Any, idata: Posterior, meta: dict[str, Any], rng: Any, group: str) -> Any:
    """``post`` with every law's sites replaced by draws for a group with no runs.

    With crossed factors (``--group dataset,eval_set``) a name ``LEVEL/LEVEL`` whose levels the
    fit saw keeps those levels' effects; every unseen level's effect is drawn from its factor's
    spread (a standard normal times the spread, per posterior draw), and every separate
    parameter's deviation from the width of its prior.
    """
    import jax.numpy as jnp
    import numpy as np

    from .models import GROUP_PARAMS, SAMPLED_SITES, SEPARATE_SCALE, group_values, natural_params, to_sampling

    full = idata.posterior
    modes = meta.get("pooling", {})
    factors = meta.get("group_factors") or [{"column": "group", "levels": groups_of(idata)}]
    # crossed factors end with the combination's own deviation ("group"), never known for a new name
    named = len(factors) - (1 if len(factors) > 1 and factors[-1]["column"] == "group" else 0)
    parts = group.split("/") if named > 1 else [group]
    known = [f < named and len(parts) == named and parts[f] in fac["levels"] for f, fac in enumerate(factors)]
    laws = list(meta["laws"]) if meta["law"] == AVERAGED else [meta["law"]]
    for law in laws:
        pre = law + SEP if meta["law"] == AVERAGED else ""
        anchors = (meta["laws"][law] if meta["law"] == AVERAGED else meta)["anchors"]
        th = {k: np.asarray(full[pre + k].values) for k in SAMPLED_SITES[law]}
        u = np.asarray(to_sampling(law, th))
        lead = u.shape[:-1]
        dev = {}
        for p in GROUP_PARAMS[law]:
            mode = modes.get(p, "pooled")
            if mode == "pooled":
                tau = np.asarray(full[pre + "tau_" + p].values)  # (chain, draw, factor)
                d = np.zeros(lead)
                for f in range(len(factors)):
                    if known[f]:
                        d = d + full[f"{pre}effect{f}_{p}"].sel({f"level{f}": parts[f]}).values
                    else:
                        d = d + tau[..., f] * rng.standard_normal(lead)
                dev[p] = d[..., None]
            elif mode == "separate":
                dev[p] = (SEPARATE_SCALE[p] * rng.standard_normal(lead))[..., None]
        tg = {k: np.asarray(v)[..., 0] for k, v in group_values(law, u, {k: jnp.asarray(v) for k, v in dev.items()},
                                                                1).items()}
        nat = natural_params(law, tg, (anchors["log_N0"], anchors["log_D0"]))
        for k, v in {**tg, **nat}.items():
            if pre + k in post:
                post[pre + k] = (post[pre + k].dims, np.asarray(v))
    return post


#: Groups a file does not keep, because they are recomputed from what it keeps.
NOT_SAVED = ("log_likelihood",)


def save_posterior(idata: Posterior, path: str | os.PathLike[str]) -> Path:
    """Write the posterior to NetCDF atomically (temporary file + rename), without the groups
    that are recomputed from the rest (:data:`NOT_SAVED`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # a Posterior or an arviz.InferenceData made elsewhere: both name their groups the same way
        Posterior(**{g: idata[g] for g in idata.groups() if g not in NOT_SAVED}).to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_posterior(path: str | os.PathLike[str]) -> Posterior:
    """Open a posterior written by :func:`save_posterior`; refuse anything else clearly."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file; expected a posterior written by `bayescale fit`", file=str(p))
    if p.is_dir():
        raise InputError("is a directory; expected a .nc posterior written by `bayescale fit`", file=str(p))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = read(p)
    except Exception as e:  # netCDF4/h5py raise many types for a non-NetCDF file
        raise InputError(f"could not read as NetCDF ({type(e).__name__}); expected a .nc posterior "
                         "written by `bayescale fit`", file=str(p)) from None
    if "posterior" not in idata.groups():
        raise InputError("has no posterior group; expected a file written by `bayescale fit`", file=str(p))
    try:
        metadata(idata)
    except InputError as e:
        raise InputError(e.detail, file=str(p)) from None
    return idata
