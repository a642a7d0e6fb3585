"""Fit a scaling law by NUTS and keep everything later commands need in one InferenceData.

The returned :class:`bayescale._idata.Posterior` (the layout of an ``arviz.InferenceData``,
without importing ArviZ) has groups ``posterior`` (sampled sites and the natural parameters),
``sample_stats``, ``log_likelihood`` (for LOO; not saved, since :func:`with_log_likelihood`
recomputes it from the draws in a fraction of a second), ``prior``, ``observed_data`` and
``constant_data`` (N, D, C, loss per run). Its
``posterior.attrs["bayescale"]`` holds, as JSON, the law, pivots, priors, likelihood, data
source and filter, sampler options and library versions, so that ``optimal``, ``predict``,
``plot`` and ``design`` work from the NetCDF file alone.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pandas as pd

from . import (
    __version__,
    _jax,  # noqa: F401  (float64, compilation cache)
    convergence,
)
from ._idata import Posterior, from_arrays
from .errors import InputError
from .laws import LAWS, check_law
from .models import (
    LIKELIHOODS,
    REPORTED,
    SAMPLED_SITES,
    Anchors,
    Pooling,
    log_mean,
    natural_params,
    noise_log_prob,
    prior_forms,
    resolve_pooling,
    resolve_priors,
)
from .sampler import Draws, SamplerKey, WarmStart, bucket, compiled, pad, pad_runs
from .store import AVERAGED, META_KEY, SEP, law_view, laws_of, load_posterior, metadata, save_posterior

__all__ = ["FitConfig", "diagnostics", "fit", "load_posterior", "metadata", "save_posterior"]

#: fewer runs than this cannot pin down a 5-parameter law and its noise
MIN_RUNS = 6

RHAT_MAX = 1.01
ESS_MIN = 400


@dataclass(frozen=True)
class FitConfig:
    """Options of a fit; every field is recorded in the saved posterior."""

    law: str = AVERAGED  # "averaged" (the family, weighted) or one law: "chinchilla", "kaplan", "shared"
    chains: int = 4  # NUTS chains, run vectorised on one device
    warmup: int = 1000  # adaptation steps per chain
    draws: int = 1000  # kept draws per chain
    seed: int = 0  # PRNG seed: same seed, same numbers
    likelihood: str = "student_t"  # "student_t" (robust) or "gaussian", on log loss
    nu: float = 4.0  # Student-t degrees of freedom
    target_accept: float = 0.9  # NUTS target acceptance: higher means smaller steps
    max_tree_depth: int = 10  # NUTS tree-depth cap (2^10 leapfrog steps)
    dense_mass: bool = True  # full mass matrix: absorbs the E-amplitude correlation (~10x fewer steps)
    priors: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # overrides: (site, spec)
    prior_draws: int = 1000  # draws from the prior, kept for plots and prior-vs-posterior checks
    family: tuple[str, ...] = LAWS  # the laws an averaged fit weighs
    lfo_cuts: int = 3  # forward-validation cuts of an averaged fit (see bayescale.averaging)
    lfo_warmup: int = 200  # warm-up per chain of each forward-validation refit (warm-started)
    lfo_draws: int = 200  # draws per chain of each forward-validation refit
    psis: bool = True  # reuse the last exact refit by PSIS where its Pareto k allows
    # averaged fits: each law's misfit over (log N, log D) as a Gaussian process (bayescale.discrepancy)
    structured_discrepancy: bool = True
    pool: tuple[str, ...] = ()  # grouped tables: parameters pooled across groups (the default for all)
    share: tuple[str, ...] = ()  # ... one value for every group ('all': one law for all groups)
    separate: tuple[str, ...] = ()  # ... per group, with independent priors ('all': separate fits)
    # columns whose levels enter as crossed, additive effects (Python API only, not the default: see
    # bayescale.models.Pooling); empty: the groups are exchangeable, one effect per group
    group_factors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.law != AVERAGED:
            check_law(self.law)
        for law in self.family:
            check_law(law)
        if self.likelihood not in LIKELIHOODS:
            raise InputError(f"expected one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}",
                             field="--likelihood")
        for name in ("chains", "warmup", "draws"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"expected a positive integer, got {getattr(self, name)}", field=f"--{name}")
        if not self.nu > 0:
            raise InputError(f"expected > 0, got {self.nu}", field="--nu")


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


@dataclass
class LawFit:
    """One law fitted to a table: what the posterior file stores of it."""

    law: str
    anchors: Anchors
    priors: dict[str, str]
    samples: dict[str, np.ndarray]  # (chains, draws, ...) per site
    diverging: np.ndarray
    num_steps: np.ndarray
    log_lik: np.ndarray  # (chains, draws, runs)
    prior: dict[str, np.ndarray]  # (prior_draws,) per site
    seconds: float
    chain_method: str
    adapted: WarmStart | None = None  # where the chains ended: refits of similar data start there
    groups_: Groups | None = None  # a grouped fit: the groups and how parameters vary across them

    def groups(self, prefix: str = "") -> dict[str, dict[str, np.ndarray]]:
        """Its variables by InferenceData group, names prefixed (``"kaplan."`` in an averaged file)."""
        p = lambda d: {prefix + k: v for k, v in d.items()}  # noqa: E731
        return {
            "posterior": p(self.samples),
            "sample_stats": p({"diverging": self.diverging,
                               "n_steps": self.num_steps,  # arviz's name for numpyro's num_steps
                               "tree_depth": np.log2(self.num_steps).astype(int) + 1}),
            "log_likelihood": p({"log_loss": self.log_lik}),
            "prior": p({k: v[None] for k, v in self.prior.items()}),
        }


@dataclass(frozen=True)
class Groups:
    """The groups of a table and how a fit lets parameters vary across them."""

    names: tuple[str, ...]  # sorted group names; a run's index points here
    index: np.ndarray = field(compare=False)  # (runs,) int
    pooling: Pooling | None  # None: one group (an ungrouped fit)
    factors: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (column, its levels) per crossed factor

    @classmethod
    def of(cls, runs: pd.DataFrame, config: FitConfig, family: tuple[str, ...] | None = None) -> Groups:
        """The groups of ``runs`` (column ``group``): several make the fit hierarchical.

        With ``config.group_factors`` (the columns the groups were made of, ``--group
        dataset,eval_set``), each column is a factor with its own effects and spreads; otherwise
        the groups are one factor. Pooling names are checked against ``family`` (default: the
        fitted law alone)."""
        labels = runs["group"].astype(str).to_numpy() if "group" in runs else np.full(len(runs), "all")
        names, index = np.unique(labels, return_inverse=True)
        if len(names) < 2:
            if config.pool or config.share or config.separate:
                raise InputError("--pool, --share and --separate need a table with several groups "
                                 "(name the group column with --group)", field="--group")
            return cls(tuple(map(str, names)), index.astype(int), None)
        # a column with one level varies nothing: it is not a factor
        cols = [c for c in config.group_factors if c in runs and runs[c].astype(str).nunique() > 1]
        if cols:
            factors, codes = [], []
            first = np.unique(index, return_index=True)[1]  # a run of each group
            for c in cols:
                lev, code = np.unique(runs[c].astype(str).to_numpy(), return_inverse=True)
                factors.append((c, tuple(map(str, lev))))
                codes.append(code[first])
            cells: Any = np.stack(codes, axis=1)
        else:
            factors, cells = [("group", tuple(map(str, names)))], len(names)
        family = family or (config.family if config.law == AVERAGED else (config.law,))
        pooling = resolve_pooling(cells, family, pool=config.pool, share=config.share, separate=config.separate)
        return cls(tuple(map(str, names)), index.astype(int), pooling, tuple(factors))


def group_metadata(g: Groups) -> dict[str, Any]:
    """What the metadata records of a grouped fit's groups."""
    return {"pooling": dict(g.pooling.modes),
            "group_factors": [{"column": c, "levels": list(lev)} for c, lev in g.factors]}


def measurement_se(runs: pd.DataFrame) -> np.ndarray | None:
    """Each run's measurement standard error of log loss, where the table gives it: a ``loss_se``
    column (on the loss scale), or a 95% interval ``loss_lo95``/``loss_hi95``. None if neither."""
    y = runs["loss"].to_numpy(float)
    if "loss_se" in runs:
        se = pd.to_numeric(runs["loss_se"], errors="coerce").to_numpy(float) / y
    elif {"loss_lo95", "loss_hi95"} <= set(runs.columns):
        lo, hi = (pd.to_numeric(runs[c], errors="coerce").to_numpy(float) for c in ("loss_lo95", "loss_hi95"))
        with np.errstate(invalid="ignore", divide="ignore"):
            se = (np.log(hi) - np.log(lo)) / (2 * 1.959964)
    else:
        return None
    return np.where(np.isfinite(se) & (se >= 0), se, 0.0)


def fit_law(runs: pd.DataFrame, law: str, config: FitConfig, rng_key: Any, *, quiet: bool = True,
            family: tuple[str, ...] | None = None, progress: str | None = None,
            warm_start: WarmStart | None = None) -> LawFit:
    """Fit one law to a validated table by NUTS (the parts; :func:`fit` makes the file's InferenceData).

    A table with several groups gets one law per group, pooled as ``config`` says (:class:`Groups`).
    ``progress`` labels a progress line on stderr while it samples (None: no progress).
    ``warm_start`` starts the chains where an earlier fit of similar runs ended, with its
    adaptation (a design loop's refits; :class:`bayescale.sampler.WarmStart`).
    """
    N, D, y = (runs[c].to_numpy(float) for c in ("N", "D", "loss"))
    anchors = Anchors.from_data(N, D, y)
    priors = resolve_priors(law, anchors, dict(config.priors))
    grp = Groups.of(runs, config, family)
    se = measurement_se(runs)
    key_mcmc, key_prior = jax.random.split(rng_key)
    what = "" if grp.pooling is None else f" in {len(grp.names)} groups"
    _log(f"fitting the {law} law to {len(y)} runs{what}: {config.chains} chains x "
         f"({config.warmup} warm-up + {config.draws} draws), NUTS", quiet)
    t0 = time.perf_counter()
    draws = sample_law(law, np.log(N), np.log(D), np.log(y), anchors=anchors, priors=priors, config=config,
                       rng_key=key_mcmc, group=None if grp.pooling is None else grp.index,
                       pooling=grp.pooling, se=se, progress=progress, warm_start=warm_start)
    seconds = time.perf_counter() - t0
    log_lik = pointwise_log_lik(law, draws.samples, np.log(N), np.log(D), np.log(y), anchors=anchors,
                                likelihood=config.likelihood, nu=config.nu, group=grp.index, se=se)
    return LawFit(law, anchors, priors, draws.samples, draws.diverging, draws.num_steps, log_lik,
                  prior_draws(law, anchors, priors, config.prior_draws, key_prior), seconds, draws.chain_method,
                  draws.adapted, grp if grp.pooling is not None else None)


def build_idata(runs: pd.DataFrame, groups: dict[str, dict[str, np.ndarray]], meta: dict[str, Any],
                grouping: Groups | None = None, run_data: dict[str, np.ndarray] | None = None) -> Posterior:
    """The posterior file's InferenceData: the fitted groups, the runs, and the metadata.

    A grouped fit's per-group variables (``g_NAME``, possibly ``LAW.g_NAME``) get a ``group``
    dimension, its spreads (``tau_NAME``) a ``factor`` dimension and its level effects
    (``effectF_NAME``) a ``levelF`` dimension; every run records its group
    (``constant_data.group``) and its measurement standard error where it had one. ``run_data``
    adds further per-run variables to ``constant_data`` (an averaged fit's residuals).
    """
    group_names = None if grouping is None else grouping.names
    y = runs["loss"].to_numpy(float)
    run_vars = [k for k in groups["log_likelihood"]]
    const = {"N": runs["N"].to_numpy(float), "D": runs["D"].to_numpy(float),
             "C": runs["C"].to_numpy(float), "loss": y}
    coords = {"run": runs["run_id"].astype(str).to_numpy()}
    dims = {k: ["run"] for k in (*run_vars, "log_loss", "N", "D", "C", "loss", "group", "se")}
    if group_names is not None:
        const["group"] = runs["group"].astype(str).to_numpy()
        coords["group"] = np.asarray(group_names, dtype=str)
        coords["factor"] = np.asarray([c for c, _ in grouping.factors], dtype=str)
        for f, (_, lev) in enumerate(grouping.factors):
            coords[f"level{f}"] = np.asarray(lev, dtype=str)
        for v in groups["posterior"]:
            base = str(v).split(SEP)[-1]
            if base.startswith("g_"):
                dims[v] = ["group"]
            elif base.startswith("tau_"):
                dims[v] = ["factor"]
            elif base.startswith("effect"):
                dims[v] = [f"level{base[len('effect'):].split('_')[0]}"]
    se = measurement_se(runs)
    if se is not None:
        const["se"] = se
    for k, v in (run_data or {}).items():
        const[k] = np.asarray(v, float)
        dims[k] = ["run"]
    idata = from_arrays({**groups, "observed_data": {"log_loss": np.log(y)}, "constant_data": const},
                        coords=coords, dims=dims)
    idata.posterior.attrs[META_KEY] = json.dumps(meta)
    return idata


def _installed(dist: str) -> str | None:
    """An installed distribution's version, read without importing it (ArviZ imports pyplot)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _source_kind(source: str) -> str:
    """``directory``, ``example``, ``table`` or ``dataframe``: what kind of source a fit read."""
    from pathlib import Path

    from .runs import EXAMPLES

    if source.startswith("<"):
        return "dataframe"
    if Path(source).is_dir():
        return "directory"
    return "example" if source in EXAMPLES and not Path(source).exists() else "table"


def run_metadata(runs: pd.DataFrame, config: FitConfig, *, source: str | None, filter: str | None) -> dict[str, Any]:  # noqa: A002
    """Metadata every posterior file carries: the data's provenance, the options, the versions.

    ``data_sha256`` fingerprints the table that was fitted (its N, D, loss, C and group columns, in
    order), so that ``fit`` can tell a re-run of the same command, which may replace the file, from
    a fit of other data read from the same path, which must not.
    """
    import hashlib

    digest = hashlib.sha256()
    for col in ("N", "D", "loss", "C", "group"):
        if col not in runs:
            continue
        values = runs[col]
        raw = ("\0".join(map(str, values)).encode() if col == "group"
               else np.ascontiguousarray(values.to_numpy(dtype=np.float64)).tobytes())
        digest.update(f"{col}:{len(values)}:".encode() + raw)
    src = source if source is not None else runs.attrs.get("source", "<DataFrame>")
    meta: dict[str, Any] = {
        "law": config.law,
        "n_obs": int(len(runs)),
        "source": src,
        "source_kind": _source_kind(src),  # how titles name it: "runs/" for a directory, a table by its file
        "filter": filter if filter is not None else runs.attrs.get("filter"),
        "groups": sorted(map(str, runs["group"].unique())) if "group" in runs else ["all"],
        "data_sha256": digest.hexdigest(),
        "config": {k: (list(map(list, v)) if k == "priors" else (list(v) if isinstance(v, tuple) else v))
                   for k, v in asdict(config).items()},
        "compute": "C = 6ND (N non-embedding parameters, D tokens) unless the table gives C",
        "versions": {
            "bayescale": __version__, "numpyro": numpyro.__version__, "jax": jax.__version__,
            "arviz": _installed("arviz"), "python": sys.version.split()[0],
        },
    }
    if runs.attrs.get("group_columns"):
        meta["group_columns"] = list(runs.attrs["group_columns"])
    if "corpus_tokens" in runs and runs["corpus_tokens"].notna().any():
        meta["corpus_tokens"] = float(runs["corpus_tokens"].max())
    return meta


def law_metadata(f: LawFit) -> dict[str, Any]:
    """What the metadata records of one fitted law."""
    return {"anchors": asdict(f.anchors), "priors": f.priors, "seconds_sampling": f.seconds,
            "chain_method": f.chain_method}


def fit(
    runs: pd.DataFrame,
    config: FitConfig | None = None,
    *,
    quiet: bool = False,
    source: str | None = None,
    filter: str | None = None,  # noqa: A002
    progress: bool | None = None,
) -> Posterior:
    """Fit the law family, averaged (the default), or one law (``config.law``), by NUTS.

    Parameters
    ----------
    runs
        A validated table, as returned by :func:`bayescale.load_runs`.
    config
        Model and sampler options; defaults to :class:`FitConfig()` (the averaged family).
    quiet
        No progress or diagnostics on stderr.
    progress
        A progress line on stderr while each sampler runs (stage, warm-up or sampling, iterations,
        divergences). None (default): when stderr is a terminal and not ``quiet``, or as
        ``$BAYESCALE_PROGRESS`` (1/0) says; True/False force it on or off. The draws are the same
        either way.
    source, filter
        Recorded in the metadata (defaults: ``runs.attrs["source"]`` and ``runs.attrs["filter"]``,
        which :func:`bayescale.load_runs` sets).

    Returns
    -------
    Posterior
        Posterior, diagnostics and metadata; see :mod:`bayescale.store` for the layout.

    Examples
    --------
    >>> import bayescale as bs
    >>> runs = bs.load_runs("chinchilla", filter="kept_by_epoch == 1")
    >>> idata = bs.fit(runs, bs.FitConfig(law="chinchilla"))  # doctest: +SKIP
    """
    cfg = config or FitConfig()
    if len(runs) < MIN_RUNS:
        raise InputError(f"{len(runs)} runs are too few to fit a 5-parameter law; expected at least {MIN_RUNS}")
    from .sampler import progress_enabled, release_compiled

    release_compiled()  # a script fitting many tables in one process must not run out of memory mappings
    show = progress_enabled(quiet) if progress is None else bool(progress)
    if cfg.law == AVERAGED:
        from .averaging import fit_family

        return fit_family(runs, cfg, quiet=quiet, source=source, filter=filter, progress=show)
    idata, f = fit_one_law(runs, cfg, jax.random.PRNGKey(cfg.seed), quiet=quiet, source=source, filter=filter,
                           progress=f"{cfg.law} law" if show else None)
    report_diagnostics(idata, f.seconds, quiet)
    return idata


def fit_one_law(runs: pd.DataFrame, config: FitConfig, rng_key: Any, *, quiet: bool = True,
                source: str | None = None, filter: str | None = None,  # noqa: A002
                progress: str | None = None, warm_start: WarmStart | None = None,
                extra_meta: dict[str, Any] | None = None) -> tuple[Posterior, LawFit]:
    """One law (``config.law``) fitted and laid out as a posterior, with the :class:`LawFit` it
    came from (whose ``adapted`` a later refit can start from, see ``warm_start``)."""
    f = fit_law(runs, config.law, config, rng_key, quiet=quiet, progress=progress, warm_start=warm_start)
    meta = {**run_metadata(runs, config, source=source, filter=filter), **law_metadata(f), **(extra_meta or {})}
    if f.groups_ is not None:
        meta.update(group_metadata(f.groups_))
    return build_idata(runs, f.groups(), meta, f.groups_), f


def report_diagnostics(idata: Posterior, seconds: float, quiet: bool) -> None:
    """Say on stderr how sampling went, with the diagnostics' advice."""
    diag = diagnostics(idata)
    _log(f"done in {seconds:.1f} s; max R-hat {diag['max_r_hat']:.4f}, "
         f"min bulk ESS {diag['min_ess_bulk']:.0f}, min tail ESS {diag['min_ess_tail']:.0f}, "
         f"{diag['divergences']} divergences, max tree depth {diag['max_tree_depth']}", quiet)
    for w in diag["warnings"]:
        _log(f"warning: {w}", quiet)


def sample_law(
    law: str,
    log_N: np.ndarray,
    log_D: np.ndarray,
    log_loss: np.ndarray,
    *,
    anchors: Anchors,
    priors: dict[str, str],
    config: FitConfig,
    rng_key: Any,
    mask: np.ndarray | None = None,
    warm_start: WarmStart | None = None,
    group: np.ndarray | None = None,
    pooling: Pooling | None = None,
    se: np.ndarray | None = None,
    progress: str | None = None,
) -> Draws:
    """NUTS draws of ``law`` given runs (natural logs), with the compiled sampler of their size.

    ``mask`` (bool, one per run) leaves runs out of the likelihood: forward validation fits the
    cheaper runs of a table with the program compiled for the whole table. ``group`` (each run's
    group index) and ``pooling`` make it a grouped fit; ``se`` gives runs' measurement errors.
    ``progress`` (a stage label, e.g. "kaplan law, forward cut 2/3") shows a progress line on
    stderr, with a sampler compiled for it (same draws); None compiles and runs the plain one.
    """
    forms, values = prior_forms(law, priors)
    n = len(log_N)
    size = bucket(n)
    key = SamplerKey(law=law, forms=tuple(forms.items()), likelihood=config.likelihood, nu=float(config.nu),
                     size=size, chains=int(config.chains), warmup=int(config.warmup), draws=int(config.draws),
                     target_accept=float(config.target_accept), max_tree_depth=int(config.max_tree_depth),
                     dense_mass=bool(config.dense_mass), pooling=pooling, measurement=se is not None,
                     progress=progress is not None)
    m = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    # padding sits at the pivots with log loss 0: finite, and masked out of the likelihood
    args = (pad(log_N, size, anchors.log_N0), pad(log_D, size, anchors.log_D0), pad(log_loss, size, 0.0),
            np.concatenate([m, np.zeros(size - n, bool)]))
    from .sampler import ProgressBar

    bar = None if progress is None else ProgressBar(progress, chains=key.chains, warmup=key.warmup, draws=key.draws)
    return compiled(key).run(rng_key, *args, (anchors.log_N0, anchors.log_D0), values, warm_start,
                             group=None if pooling is None else pad(group, size, 0).astype(int),
                             se=None if se is None else pad(se, size, 0.0), progress=bar)


def pointwise_log_lik(
    law: str,
    samples: dict[str, np.ndarray],
    log_N: np.ndarray,
    log_D: np.ndarray,
    log_loss: np.ndarray,
    *,
    anchors: Anchors,
    likelihood: str,
    nu: float,
    group: np.ndarray | None = None,
    se: np.ndarray | None = None,
) -> np.ndarray:
    """Log likelihood of every run under every draw, shape ``(*draw_shape, runs)``.

    For a grouped posterior (``g_NAME`` sites) each run is scored under its ``group``'s law;
    ``se`` adds runs' measurement errors to the noise.
    """
    n = len(log_N)
    th, n_c, d_c = _padded_runs(law, samples, log_N, log_D, anchors, group)
    out = _log_lik(th, n_c, d_c, pad_runs(log_loss, n), None if se is None else pad_runs(se, n),
                   law=law, likelihood=likelihood, nu=float(nu))
    return np.asarray(out)[..., :n]


def with_log_likelihood(idata: Posterior) -> Posterior:
    """``idata`` with its ``log_likelihood`` group: every run's log likelihood under every draw
    (``log_loss``, or ``LAW.log_loss`` per law of an averaged fit), for LOO and LOO-PIT.

    Saved files leave the group out: it is most of a file's size (draws x runs numbers) and is
    recomputed here from the draws and the runs the file keeps, exactly as the fit computed it.
    """
    import xarray as xr

    if "log_likelihood" in idata.groups():
        return idata
    meta = metadata(idata)
    cd = idata.constant_data
    log_N, log_D, log_y = (np.log(np.asarray(cd[k].values, float)) for k in ("N", "D", "loss"))
    se = np.asarray(cd["se"].values, float) if "se" in cd else None
    cfg = meta["config"]
    out = {}
    for law in laws_of(idata):
        view = law_view(idata, law)
        post = view.posterior
        group = None
        if "group" in post.coords and "group" in cd:  # a grouped fit: each run under its group's law
            names = [str(g) for g in post.coords["group"].values]
            group = np.array([names.index(str(g)) for g in cd["group"].values])
        samples = {str(k): np.asarray(v.values) for k, v in post.data_vars.items()}
        ll = pointwise_log_lik(law, samples, log_N, log_D, log_y, anchors=Anchors(**metadata(view)["anchors"]),
                               likelihood=cfg["likelihood"], nu=float(cfg["nu"]), group=group, se=se)
        name = "log_loss" if meta["law"] != AVERAGED else f"{law}{SEP}log_loss"
        out[name] = (("chain", "draw", "run"), ll)
    ds = xr.Dataset(out, coords={"chain": post.coords["chain"].values, "draw": post.coords["draw"].values,
                                 "run": cd.coords["run"].values})
    return idata.with_groups(log_likelihood=ds)


def log_mean_draws(law: str, samples: dict[str, np.ndarray], log_N: np.ndarray, log_D: np.ndarray,
                   anchors: Anchors, group: np.ndarray | None = None) -> np.ndarray:
    """The law's log-mean loss under every draw at every run, shape ``(*draw_shape, runs)``."""
    th, n_c, d_c = _padded_runs(law, samples, log_N, log_D, anchors, group)
    return np.asarray(_log_mean(th, n_c, d_c, law=law))[..., :len(log_N)]


def _padded_runs(law: str, samples: dict[str, np.ndarray], log_N: np.ndarray, log_D: np.ndarray, anchors: Anchors,
                 group: np.ndarray | None) -> tuple[dict[str, jax.Array], np.ndarray, np.ndarray]:
    """The per-run sites and centred log N, log D, padded to the runs' bucket (see
    :func:`bayescale.sampler.pad_runs`): the jitted functions then compile once per bucket."""
    n = len(log_N)
    th = _per_run(law, samples, None if group is None else pad_runs(group, n))
    return th, pad_runs(np.asarray(log_N) - anchors.log_N0, n), pad_runs(np.asarray(log_D) - anchors.log_D0, n)


def _per_run(law: str, samples: dict[str, np.ndarray], group: np.ndarray | None) -> dict[str, jax.Array]:
    """The sites each run is scored under, broadcastable to ``(*draw_shape, runs)``."""
    if group is not None and "g_" + SAMPLED_SITES[law][0] in samples:
        idx = jnp.asarray(group, dtype=int)
        return {k: jnp.take(jnp.asarray(samples["g_" + k]), idx, axis=-1) for k in SAMPLED_SITES[law]}
    return {k: jnp.asarray(samples[k])[..., None] for k in SAMPLED_SITES[law]}


@partial(jax.jit, static_argnames=("law",))
def _log_mean(th: dict, n: jax.Array, d: jax.Array, *, law: str) -> jax.Array:
    return log_mean(law, th, n, d)


@partial(jax.jit, static_argnames=("law", "likelihood", "nu"))
def _log_lik(th: dict, n: jax.Array, d: jax.Array, y: jax.Array, se: jax.Array | None, *, law: str,
             likelihood: str, nu: float) -> jax.Array:
    scale = th["sigma"] if se is None else jnp.sqrt(th["sigma"] ** 2 + se ** 2)
    return noise_log_prob(likelihood, nu, y, _log_mean(th, n, d, law=law), scale)


def prior_draws(law: str, anchors: Anchors, priors: dict[str, str], n: int, key: Any) -> dict[str, np.ndarray]:
    """``n`` draws of every sampled site from its prior, plus the natural parameters.

    Sampled directly from each site's distribution (the priors are independent), which is what
    ``numpyro.infer.Predictive`` would do for these sites, in one small compiled program rather
    than tracing the model or sampling op by op.
    """
    forms, values = prior_forms(law, priors)
    out = _prior_draws(key, {k: jnp.asarray(v) for k, v in values.items()},
                       jnp.asarray([anchors.log_N0, anchors.log_D0]), law=law, forms=tuple(forms.items()), n=int(n))
    return {k: np.asarray(v) for k, v in out.items()}


@partial(jax.jit, static_argnames=("law", "forms", "n"))
def _prior_draws(key: jax.Array, values: dict, pivots: jax.Array, *, law: str, forms: tuple, n: int) -> dict:
    f = dict(forms)
    keys = jax.random.split(key, len(SAMPLED_SITES[law]))
    th = {name: f[name].build(values[name]).sample(k, (n,)) for name, k in zip(SAMPLED_SITES[law], keys, strict=True)}
    return {**th, **{k: v for k, v in natural_params(law, th, pivots).items() if k not in th}}


def diagnostics(idata: Posterior) -> dict[str, Any]:
    """R-hat, bulk and tail ESS, divergences and tree depth, with warnings and advice.

    For an averaged posterior the figures are the worst over the laws (divergences summed), and
    ``per_law`` gives each law's own.
    """
    if metadata(idata)["law"] != AVERAGED:
        return _law_diagnostics(idata)
    per_law = {law: _law_diagnostics(law_view(idata, law)) for law in laws_of(idata)}
    out = {
        "max_r_hat": max(d["max_r_hat"] for d in per_law.values()),
        "min_ess_bulk": min(d["min_ess_bulk"] for d in per_law.values()),
        "min_ess_tail": min(d["min_ess_tail"] for d in per_law.values()),
        "divergences": sum(d["divergences"] for d in per_law.values()),
        "draws": sum(d["draws"] for d in per_law.values()),
        "max_tree_depth": max(d["max_tree_depth"] for d in per_law.values()),
        "mean_leapfrog_steps": float(np.mean([d["mean_leapfrog_steps"] for d in per_law.values()])),
        "per_param": {f"{law}.{k}": v for law, d in per_law.items() for k, v in d["per_param"].items()},
        "warnings": [f"{law} law: {w}" for law, d in per_law.items() for w in d["warnings"]],
        "per_law": {law: {k: v for k, v in d.items() if k != "per_param"} for law, d in per_law.items()},
    }
    return out


#: a posterior worse than this is refused by the commands that use it (unless --allow-unconverged)
REFUSE_R_HAT = 1.05
REFUSE_DIVERGENT_SHARE = 0.01


def convergence_problem(diag: dict[str, Any]) -> str | None:
    """Why a posterior with these diagnostics should not be used, or None if it may be.

    Refused: max R-hat above :data:`REFUSE_R_HAT` (chains disagree: the draws are not from one
    posterior) or divergent transitions in more than :data:`REFUSE_DIVERGENT_SHARE` of the draws
    (the sampler missed part of it). An undefined R-hat (one chain) is not refused, only warned.
    An averaged posterior is refused if any of its laws is.
    """
    if "per_law" in diag:
        found = [f"{law} law: {p}" for law, d in diag["per_law"].items() if (p := convergence_problem(d))]
        return "; ".join(found) or None
    problems = []
    if np.isfinite(diag["max_r_hat"]) and diag["max_r_hat"] > REFUSE_R_HAT:
        problems.append(f"max R-hat {diag['max_r_hat']:.3f} > {REFUSE_R_HAT}")
    if diag["divergences"] > REFUSE_DIVERGENT_SHARE * diag["draws"]:
        problems.append(f"{diag['divergences']} divergent transitions in {diag['draws']} draws "
                        f"(> {REFUSE_DIVERGENT_SHARE:.0%})")
    return "; ".join(problems) or None


def _law_diagnostics(idata: Posterior) -> dict[str, Any]:
    law = metadata(idata)["law"]
    post = idata.posterior
    # a grouped fit: every group's sites and the spreads too (worst over groups)
    names = [n for n in (*SAMPLED_SITES[law], *(f"g_{k}" for k in SAMPLED_SITES[law])) if n in post]
    names += [str(v) for v in post.data_vars if str(v).startswith("tau_")]
    n_chains = post.sizes["chain"]
    per = {}
    for n in names:  # the worst over a grouped site's groups (and a spread's factors)
        x = np.asarray(post[n].values, float)
        per[n] = {"r_hat": float(np.max(convergence.per_element(convergence.rhat, x))),
                  "ess_bulk": float(np.min(convergence.per_element(convergence.ess_bulk, x))),
                  "ess_tail": float(np.min(convergence.per_element(convergence.ess_tail, x)))}
    ss = idata.sample_stats
    div = int(ss["diverging"].sum()) if "diverging" in ss else 0
    steps = ss["n_steps"].values  # arviz's name for numpyro's num_steps
    depth = int(ss["tree_depth"].max()) if "tree_depth" in ss else int(np.ceil(np.log2(np.max(steps) + 1)))
    cfg = metadata(idata)["config"]
    out = {
        "max_r_hat": max(v["r_hat"] for v in per.values()),
        "min_ess_bulk": min(v["ess_bulk"] for v in per.values()),
        "min_ess_tail": min(v["ess_tail"] for v in per.values()),
        "divergences": div,
        "draws": int(ss["diverging"].size) if "diverging" in ss else int(np.size(steps)),
        "max_tree_depth": depth,
        "mean_leapfrog_steps": float(np.mean(steps)),
        "per_param": per,
        "warnings": [],
    }
    w = out["warnings"]
    if n_chains < 2:
        w.append("R-hat needs at least 2 chains and is undefined here; run --chains 4 to check convergence")
    if out["max_r_hat"] > RHAT_MAX:
        worst = max(per, key=lambda k: per[k]["r_hat"])
        w.append(f"R-hat {out['max_r_hat']:.3f} > {RHAT_MAX} (worst: {worst}): chains disagree; "
                 "run more warm-up and draws (--warmup/--draws), or check for a multimodal posterior")
    if out["min_ess_bulk"] < ESS_MIN or out["min_ess_tail"] < ESS_MIN:
        w.append(f"effective sample size below {ESS_MIN} (bulk {out['min_ess_bulk']:.0f}, tail "
                 f"{out['min_ess_tail']:.0f}): intervals are noisy; run more draws (--draws)")
    if div:
        w.append(f"{div} divergent transitions: the posterior may be biased; raise --target-accept "
                 "(e.g. 0.95-0.99) or tighten priors on poorly identified parameters")
    if depth >= int(cfg.get("max_tree_depth", 10)):
        w.append(f"some transitions hit the maximum tree depth {depth}: sampling is inefficient; "
                 "the posterior is likely poorly identified by these data")
    return out


def reported_params(law: str) -> tuple[str, ...]:
    """Names reported for ``law`` (natural units), in display order."""
    return REPORTED[law]
