"""The posterior file: what a fit stores, its metadata, and how to read it back.

One NetCDF file (``arviz.from_netcdf`` opens it) holds one of two kinds of fit:

* **one law** (``bayescale fit --law NAME``): groups ``posterior`` (the law's sampled sites and
  natural parameters), ``sample_stats``, ``log_likelihood``, ``prior``, ``observed_data`` and
  ``constant_data`` (N, D, C, loss per run), as ArviZ names them.
* **the law family, averaged** (``bayescale fit``, the default): the same groups, with every
  law's variables named ``LAW.NAME`` (``kaplan.alpha_N``, ``chinchilla.diverging``), plus
  ``posterior.discrepancy_rate``, the draws of the model-discrepancy rate. The weights, the
  forward-validation cuts and scores live in the metadata.

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

from ._arviz import az
from .errors import InputError

META_KEY = "bayescale"
AVERAGED = "averaged"
SEP = "."  # LAW.NAME in an averaged file


def metadata(idata: az.InferenceData) -> dict[str, Any]:
    """The bayescale metadata stored with a posterior."""
    try:
        return json.loads(idata.posterior.attrs[META_KEY])
    except (KeyError, AttributeError, json.JSONDecodeError):
        raise InputError("not a bayescale posterior (no 'bayescale' metadata in the posterior group); "
                         "expected a file written by `bayescale fit`") from None


def is_averaged(idata: az.InferenceData) -> bool:
    """Whether ``idata`` holds the averaged law family (else one law)."""
    return metadata(idata)["law"] == AVERAGED


def laws_of(idata: az.InferenceData) -> list[str]:
    """The laws a posterior holds, in the order they were fitted."""
    meta = metadata(idata)
    return list(meta["laws"]) if meta["law"] == AVERAGED else [meta["law"]]


def weights_of(idata: az.InferenceData) -> dict[str, float]:
    """Each law's weight (1 for a one-law fit)."""
    meta = metadata(idata)
    if meta["law"] != AVERAGED:
        return {meta["law"]: 1.0}
    return {law: float(v["weight"]) for law, v in meta["laws"].items()}


def law_view(idata: az.InferenceData, law: str) -> az.InferenceData:
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
        if mine:
            groups[name] = ds[mine].rename({v: str(v)[len(prefix):] for v in mine})
        elif name in ("observed_data", "constant_data"):
            groups[name] = ds
    view_meta = {k: v for k, v in meta.items() if k not in ("laws", "averaging")}
    view_meta.update(meta["laws"][law])
    view_meta["law"] = law
    view_meta["averaged_from"] = True
    groups["posterior"] = groups["posterior"].copy()
    groups["posterior"].attrs = {META_KEY: json.dumps(view_meta)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return az.InferenceData(**groups)


def save_posterior(idata: az.InferenceData, path: str | os.PathLike[str]) -> Path:
    """Write the posterior to NetCDF atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        idata.to_netcdf(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_posterior(path: str | os.PathLike[str]) -> az.InferenceData:
    """Open a posterior written by :func:`save_posterior`; refuse anything else clearly."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file; expected a posterior written by `bayescale fit`", file=str(p))
    if p.is_dir():
        raise InputError("is a directory; expected a .nc posterior written by `bayescale fit`", file=str(p))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = az.from_netcdf(str(p))
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
