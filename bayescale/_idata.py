"""A posterior's groups as xarray Datasets, read and written without importing ArviZ.

Why: ``import arviz`` (0.23) imports matplotlib's pyplot and scipy.stats, about 0.9 s of the
start-up of every command on the 2-core machine, and only the figures need ArviZ. A
:class:`Posterior` offers the part of ``arviz.InferenceData`` the rest of bayescale reads
(``idata.posterior``, ``idata["constant_data"]``, ``idata.groups()``) and writes the same NetCDF
layout, one HDF5 group per InferenceData group, so ``arviz.from_netcdf`` opens bayescale's
files and :func:`read` opens ArviZ's. :func:`as_arviz` gives a real ``InferenceData`` where
an ArviZ function needs one.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

#: Groups whose variables carry ``chain`` and ``draw`` dimensions (ArviZ's names).
SAMPLE_GROUPS = ("posterior", "posterior_predictive", "log_likelihood", "sample_stats", "prior",
                 "prior_predictive", "sample_stats_prior")
#: The order ArviZ writes and lists groups in.
ORDER = (*SAMPLE_GROUPS, "observed_data", "constant_data")
ENGINE = "h5netcdf"  # ArviZ's default engine for NetCDF, so files round-trip


class Posterior:
    """Named groups of xarray Datasets: the subset of ``arviz.InferenceData`` bayescale uses."""

    __slots__ = ("_groups",)

    def __init__(self, **groups: xr.Dataset) -> None:
        ordered = sorted(groups, key=lambda g: ORDER.index(g) if g in ORDER else len(ORDER))
        object.__setattr__(self, "_groups", {g: groups[g] for g in ordered})

    def groups(self) -> list[str]:
        """The group names, in ArviZ's order."""
        return list(self._groups)

    def __getattr__(self, name: str) -> xr.Dataset:
        groups = object.__getattribute__(self, "_groups")
        if name in groups:
            return groups[name]
        raise AttributeError(f"this posterior has no group {name!r} (it has {', '.join(groups)})")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Posterior's groups are fixed; build a new one with the groups you want")

    def __getitem__(self, name: str) -> xr.Dataset:
        return self._groups[name]

    def __contains__(self, name: object) -> bool:
        return name in self._groups

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __repr__(self) -> str:
        parts = ", ".join(f"{g}: {', '.join(map(str, ds.data_vars))}" for g, ds in self._groups.items())
        return f"Posterior({parts})"

    def with_groups(self, **groups: xr.Dataset) -> Posterior:
        """A copy with ``groups`` added or replaced."""
        return Posterior(**{**self._groups, **groups})

    def to_netcdf(self, path: str | Path) -> str:
        """Write every group to ``path`` as ArviZ does (numeric variables zlib-compressed)."""
        mode = "w"
        for name, ds in self._groups.items():
            encoding = {v: {"zlib": True} for v, var in ds.variables.items()
                        if np.issubdtype(var.dtype, np.number) or var.dtype == bool}
            ds.to_netcdf(str(path), mode=mode, group=name, engine=ENGINE, encoding=encoding)
            mode = "a"
        return str(path)

    def to_arviz(self) -> Any:
        """The same groups as an ``arviz.InferenceData`` (imports ArviZ)."""
        import warnings

        from ._arviz import az

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return az.InferenceData(**self._groups)


def as_arviz(idata: Any) -> Any:
    """``idata`` as an ``arviz.InferenceData`` (unchanged if it is one already)."""
    return idata.to_arviz() if isinstance(idata, Posterior) else idata


def read(path: str | Path) -> Posterior:
    """Every group of a NetCDF file written by :meth:`Posterior.to_netcdf` or by ArviZ, loaded
    into memory (the file is closed again, so it can be replaced)."""
    import h5netcdf

    with h5netcdf.File(str(path), "r") as f:
        names = [g for g in f.groups]
    groups = {}
    for name in names:
        with xr.open_dataset(str(path), group=name, engine=ENGINE) as ds:
            groups[name] = ds.load()
    return Posterior(**groups)


def _dataset(arrays: Mapping[str, np.ndarray], *, sampled: bool, coords: Mapping[str, Any],
             dims: Mapping[str, list[str]], attrs: Mapping[str, Any]) -> xr.Dataset:
    data_vars, used = {}, {}
    for name, value in arrays.items():
        a = np.asarray(value)
        lead = ["chain", "draw"] if sampled else []
        rest = list(dims.get(name, []))
        extra = a.ndim - len(lead)
        rest += [f"{name}_dim_{i}" for i in range(len(rest), extra)]
        data_vars[name] = (lead + rest[:extra], a)
        for i, d in enumerate(lead + rest[:extra]):
            used[d] = a.shape[i]
    c = {d: np.arange(n) for d, n in used.items() if d not in coords}
    c.update({d: np.asarray(v) for d, v in coords.items() if d in used})
    return xr.Dataset(data_vars, coords=c, attrs=dict(attrs))


def from_arrays(groups: Mapping[str, Mapping[str, np.ndarray]], *, coords: Mapping[str, Any] | None = None,
                dims: Mapping[str, list[str]] | None = None, library: str = "numpyro") -> Posterior:
    """A :class:`Posterior` from ``{group: {variable: array}}``, as ``arviz.from_dict`` lays it out.

    Variables of the sample groups have shape ``(chains, draws, ...)``; ``dims`` names a
    variable's further dimensions (unnamed ones become ``NAME_dim_I``) and ``coords`` gives the
    coordinates of named dimensions (``chain`` and ``draw`` count from 0).
    """
    from . import __version__

    attrs = {"created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
             "inference_library": library, "creation_library": "bayescale",
             "creation_library_version": __version__}
    return Posterior(**{g: _dataset(v, sampled=g in SAMPLE_GROUPS, coords=coords or {}, dims=dims or {},
                                    attrs=attrs)
                        for g, v in groups.items() if v})
