"""Fit a scaling law by NUTS and keep everything later commands need in one InferenceData.

The returned :class:`arviz.InferenceData` has groups ``posterior`` (sampled sites and the
natural parameters), ``sample_stats``, ``log_likelihood`` (for LOO), ``prior``,
``observed_data`` and ``constant_data`` (N, D, C, loss per run). Its
``posterior.attrs["bayescale"]`` holds, as JSON, the law, pivots, priors, likelihood, data
source and filter, sampler options and library versions, so that ``optimal``, ``predict``,
``plot`` and ``design`` work from the NetCDF file alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pandas as pd

from . import (
    __version__,
    _jax,  # noqa: F401  (float64, compilation cache)
)
from ._arviz import az
from .errors import InputError
from .laws import check_law
from .models import (
    LIKELIHOODS,
    REPORTED,
    SAMPLED_SITES,
    Anchors,
    log_mean,
    natural_params,
    noise_log_prob,
    prior_forms,
    resolve_priors,
)
from .sampler import Draws, SamplerKey, bucket, compiled, pad

META_KEY = "bayescale"
RHAT_MAX = 1.01
ESS_MIN = 400


@dataclass(frozen=True)
class FitConfig:
    """Options of a fit; every field is recorded in the saved posterior."""

    law: str = "chinchilla"  # "chinchilla" or "kaplan"
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

    def __post_init__(self) -> None:
        check_law(self.law)
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


def fit(
    runs: pd.DataFrame,
    config: FitConfig | None = None,
    *,
    quiet: bool = False,
    source: str | None = None,
    filter: str | None = None,  # noqa: A002
) -> az.InferenceData:
    """Fit ``config.law`` to ``runs`` (columns N, D, loss) by NUTS.

    Parameters
    ----------
    runs
        A validated table, as returned by :func:`bayescale.load_runs`.
    config
        Sampler and model options; defaults to :class:`FitConfig()`.
    quiet
        No progress or diagnostics on stderr.
    source, filter
        Recorded in the metadata (defaults: ``runs.attrs["source"]`` and ``runs.attrs["filter"]``,
        which :func:`bayescale.load_runs` sets).

    Returns
    -------
    arviz.InferenceData
        Posterior, diagnostics and metadata; see the module docstring.

    Examples
    --------
    >>> import bayescale as bs
    >>> runs = bs.load_runs("chinchilla", filter="kept_by_epoch == 1")
    >>> idata = bs.fit(runs, bs.FitConfig(law="chinchilla"))  # doctest: +SKIP
    """
    cfg = config or FitConfig()
    N = runs["N"].to_numpy(float)
    D = runs["D"].to_numpy(float)
    y = runs["loss"].to_numpy(float)
    if len(y) < 6:
        raise InputError(f"{len(y)} runs are too few to fit a 5-parameter law; expected at least 6")
    anchors = Anchors.from_data(N, D, y)
    priors = resolve_priors(cfg.law, anchors, dict(cfg.priors))
    key_mcmc, key_prior = jax.random.split(jax.random.PRNGKey(cfg.seed))
    _log(f"fitting the {cfg.law} law to {len(y)} runs: {cfg.chains} chains x "
         f"({cfg.warmup} warm-up + {cfg.draws} draws), NUTS", quiet)
    t0 = time.perf_counter()
    draws = sample_law(cfg.law, np.log(N), np.log(D), np.log(y), anchors=anchors, priors=priors, config=cfg,
                       rng_key=key_mcmc)
    seconds_sampling = time.perf_counter() - t0
    samples, extra = draws.samples, {"diverging": draws.diverging, "num_steps": draws.num_steps}
    chain_method = draws.chain_method
    prior = prior_draws(cfg.law, anchors, priors, cfg.prior_draws, key_prior)
    loglik = pointwise_log_lik(cfg.law, samples, np.log(N), np.log(D), np.log(y), anchors=anchors,
                               likelihood=cfg.likelihood, nu=cfg.nu)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz notes about missing dims
        idata = az.from_dict(
            posterior=samples,
            sample_stats={
                "diverging": extra["diverging"],
                "n_steps": extra["num_steps"],  # arviz's name for numpyro's num_steps
                "tree_depth": np.log2(extra["num_steps"]).astype(int) + 1,
            },
            log_likelihood={"log_loss": loglik},
            prior={k: v[None] for k, v in prior.items()},
            observed_data={"log_loss": np.log(y)},
            constant_data={"N": N, "D": D, "C": runs["C"].to_numpy(float), "loss": y},
            coords={"run": runs["run_id"].astype(str).to_numpy()},
            dims={k: ["run"] for k in ("log_loss", "N", "D", "C", "loss")},
        )
    meta = {
        "law": cfg.law,
        "n_obs": int(len(y)),
        "source": source if source is not None else runs.attrs.get("source", "<DataFrame>"),
        "filter": filter if filter is not None else runs.attrs.get("filter"),
        "groups": sorted(map(str, runs["group"].unique())) if "group" in runs else ["all"],
        "anchors": asdict(anchors),
        "priors": priors,
        "config": {k: (list(map(list, v)) if k == "priors" else v) for k, v in asdict(cfg).items()},
        "compute": "C = 6ND (N non-embedding parameters, D tokens)",
        "seconds_sampling": seconds_sampling,
        "chain_method": chain_method,
        "versions": {
            "bayescale": __version__, "numpyro": numpyro.__version__, "jax": jax.__version__,
            "arviz": az.__version__, "python": sys.version.split()[0],
        },
    }
    idata.posterior.attrs[META_KEY] = json.dumps(meta)
    diag = diagnostics(idata)
    _log(f"sampled in {seconds_sampling:.1f} s; max R-hat {diag['max_r_hat']:.4f}, "
         f"min bulk ESS {diag['min_ess_bulk']:.0f}, min tail ESS {diag['min_ess_tail']:.0f}, "
         f"{diag['divergences']} divergences, max tree depth {diag['max_tree_depth']}", quiet)
    for w in diag["warnings"]:
        _log(f"warning: {w}", quiet)
    return idata


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
) -> Draws:
    """NUTS draws of ``law`` given runs (natural logs), with the compiled sampler of their size.

    ``mask`` (bool, one per run) leaves runs out of the likelihood: forward validation fits the
    cheaper runs of a table with the program compiled for the whole table.
    """
    forms, values = prior_forms(law, priors)
    n = len(log_N)
    size = bucket(n)
    key = SamplerKey(law=law, forms=tuple(forms.items()), likelihood=config.likelihood, nu=float(config.nu),
                     size=size, chains=int(config.chains), warmup=int(config.warmup), draws=int(config.draws),
                     target_accept=float(config.target_accept), max_tree_depth=int(config.max_tree_depth),
                     dense_mass=bool(config.dense_mass))
    m = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    # padding sits at the pivots with log loss 0: finite, and masked out of the likelihood
    args = (pad(log_N, size, anchors.log_N0), pad(log_D, size, anchors.log_D0), pad(log_loss, size, 0.0),
            np.concatenate([m, np.zeros(size - n, bool)]))
    return compiled(key).run(rng_key, *args, (anchors.log_N0, anchors.log_D0), values)


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
) -> np.ndarray:
    """Log likelihood of every run under every draw, shape ``(*draw_shape, runs)``."""
    th = {k: jnp.asarray(samples[k]) for k in SAMPLED_SITES[law]}
    return np.asarray(_log_lik(th, jnp.asarray(log_N) - anchors.log_N0, jnp.asarray(log_D) - anchors.log_D0,
                               jnp.asarray(log_loss), law=law, likelihood=likelihood, nu=float(nu)))


@partial(jax.jit, static_argnames=("law", "likelihood", "nu"))
def _log_lik(th: dict, n: jax.Array, d: jax.Array, y: jax.Array, *, law: str, likelihood: str, nu: float) -> jax.Array:
    th = {k: v[..., None] for k, v in th.items()}
    return noise_log_prob(likelihood, nu, y, log_mean(law, th, n, d), th["sigma"])


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


def metadata(idata: az.InferenceData) -> dict[str, Any]:
    """The bayescale metadata stored with a posterior."""
    try:
        return json.loads(idata.posterior.attrs[META_KEY])
    except (KeyError, AttributeError, json.JSONDecodeError):
        raise InputError("not a bayescale posterior (no 'bayescale' metadata in the posterior group); "
                         "expected a file written by `bayescale fit`") from None


def diagnostics(idata: az.InferenceData) -> dict[str, Any]:
    """R-hat, bulk and tail ESS, divergences and tree depth, with warnings and advice."""
    law = metadata(idata)["law"]
    names = list(SAMPLED_SITES[law])
    n_chains = idata.posterior.sizes["chain"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns that R-hat needs 2 chains; we say so below
        rhat = az.rhat(idata, var_names=names)
    ess_b = az.ess(idata, var_names=names, method="bulk")
    ess_t = az.ess(idata, var_names=names, method="tail")
    per = {n: {"r_hat": float(rhat[n]), "ess_bulk": float(ess_b[n]), "ess_tail": float(ess_t[n])}
           for n in names}
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


def reported_params(law: str) -> tuple[str, ...]:
    """Names reported for ``law`` (natural units), in display order."""
    return REPORTED[law]
