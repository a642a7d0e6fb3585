"""NumPyro models of scaling laws, as plain functions.

One generic model, :func:`scaling_model`, serves every law of the family
(:data:`bayescale.laws.LAWS`); :func:`chinchilla`, :func:`kaplan` and :func:`shared` fix the
law. Observed data default to ``None`` so the same function gives the prior predictive, the
fit and the posterior predictive.

Parameterisation (why): the raw parameters of a power law are nearly collinear (raising
``alpha`` and ``log A`` together barely moves the curve over the data), which makes NUTS take
many more leapfrog steps. Each law is therefore sampled with log N and log D centred at pivots
taken from the data (their geometric means), and with each term's *value at the pivot* as the
amplitude parameter:

* chinchilla: ``log_A_pivot = log(A / N0^alpha)``, ``log_B_pivot = log(B / D0^beta)``, so
  ``L = E + exp(log_A_pivot - alpha n) + exp(log_B_pivot - beta d)`` with
  ``n = log N - log N0``, ``d = log D - log D0``.
* kaplan: ``log_N_term = (alpha_N/alpha_D) log(N_c/N0)``, ``log_D_term = log(D_c/D0)``, so
  ``L = E + [exp(log_N_term - (alpha_N/alpha_D) n) + exp(log_D_term - d)]^alpha_D``.
* shared: as chinchilla with ``beta = alpha``.

The natural parameters (E, A, B, alpha, beta or E, N_c, D_c, alpha_N, alpha_D) are recorded
as deterministic sites. The likelihood is on log loss: Student-t (robust, the default) or
Gaussian, with scale ``sigma`` (so sigma is a relative error: 0.01 is ~1% of the loss).

Default priors (weakly informative; each overridable by name, see :func:`parse_prior`):

==============  =================================  ============================================
site            default                            why
==============  =================================  ============================================
E               LogNormal(log(0.75 L_min), 0.5)    irreducible loss: 90% in 0.33-1.7 x L_min
alpha, beta     LogNormal(log 0.3, 0.6)            published exponents span ~0.05-0.8
alpha_N,        LogNormal(log 0.3, 0.6)            as above
alpha_D
log_A_pivot,    Normal(log(L_med / 4), 2)          each reducible term at the pivot: a fraction
log_B_pivot                                        of the loss, within a factor ~50 either way
log_N_term,     Normal(0, 3)                       bracket terms at the pivot (kaplan)
log_D_term
sigma           HalfNormal(0.1)                    relative noise on loss: 1-3% is typical
==============  =================================  ============================================

``L_min`` and ``L_med`` are the smallest and median observed losses; the data enter the priors
only through these scale anchors, recorded with the fit.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array

from . import _jax  # noqa: F401
from .errors import InputError
from .laws import LAWS, PARAM_NAMES, check_law

LIKELIHOODS = ("student_t", "gaussian")
SAMPLED_SITES = {
    "chinchilla": ("E", "alpha", "beta", "log_A_pivot", "log_B_pivot", "sigma"),
    "kaplan": ("E", "alpha_N", "alpha_D", "log_N_term", "log_D_term", "sigma"),
    "shared": ("E", "alpha", "log_A_pivot", "log_B_pivot", "sigma"),
}
POSITIVE_SITES = ("E", "alpha", "beta", "alpha_N", "alpha_D", "sigma")
REPORTED = {law: (*PARAM_NAMES[law], "sigma") for law in LAWS}
# distributions a prior may name: all numeric-argument families of numpyro
PRIOR_FAMILIES = (
    "Normal", "LogNormal", "HalfNormal", "HalfCauchy", "Cauchy", "StudentT", "Uniform", "Gamma",
    "InverseGamma", "Exponential", "TruncatedNormal", "Beta", "Laplace",
)


@dataclass(frozen=True)
class Anchors:
    """Data summaries the model needs: the pivots and the loss scale for the priors."""

    log_N0: float  # pivot for log N: mean log N of the data (geometric-mean N)
    log_D0: float  # pivot for log D
    loss_min: float  # smallest observed loss: scale for the prior on E
    loss_median: float  # median observed loss: scale for the amplitude priors

    @classmethod
    def from_data(cls, N: Any, D: Any, loss: Any) -> Anchors:
        """Anchors from arrays of N, D and loss."""
        N, D, loss = (np.asarray(x, dtype=float) for x in (N, D, loss))
        return cls(
            log_N0=float(np.mean(np.log(N))),
            log_D0=float(np.mean(np.log(D))),
            loss_min=float(np.min(loss)),
            loss_median=float(np.median(loss)),
        )


def default_prior_specs(law: str, anchors: Anchors) -> dict[str, str]:
    """Default priors of ``law`` as spec strings (what the user would write to override them)."""
    check_law(law)
    e = f"LogNormal({math.log(0.75 * anchors.loss_min):.6g}, 0.5)"
    amp = f"Normal({math.log(anchors.loss_median / 4):.6g}, 2.0)"
    expo = f"LogNormal({math.log(0.3):.6g}, 0.6)"
    if law == "chinchilla":
        specs = {"E": e, "alpha": expo, "beta": expo, "log_A_pivot": amp, "log_B_pivot": amp}
    elif law == "shared":
        specs = {"E": e, "alpha": expo, "log_A_pivot": amp, "log_B_pivot": amp}
    else:
        specs = {"E": e, "alpha_N": expo, "alpha_D": expo,
                 "log_N_term": "Normal(0, 3.0)", "log_D_term": "Normal(0, 3.0)"}
    specs["sigma"] = "HalfNormal(0.1)"
    return specs


def _parse_spec(spec: str, field: str) -> tuple[str, list[float], dict[str, float]]:
    """``"LogNormal(-1.2, 0.5)"`` -> ``("LogNormal", [-1.2, 0.5], {})``, parsed, never evaluated."""
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        raise InputError(f"could not parse {spec!r}; expected e.g. LogNormal(-1.2, 0.5)", field=field) from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise InputError(f"expected Family(args), e.g. LogNormal(-1.2, 0.5); got {spec!r}", field=field)
    name = node.func.id
    if name not in PRIOR_FAMILIES:
        raise InputError(f"unknown distribution {name!r}; expected one of {', '.join(PRIOR_FAMILIES)}",
                         field=field)

    def num(a: ast.expr) -> float:
        try:
            v = ast.literal_eval(a)
        except ValueError:
            v = None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"arguments must be finite numbers; got {ast.unparse(a)!r} in {spec!r}",
                             field=field)
        return float(v)

    return name, [num(a) for a in node.args], {k.arg: num(k.value) for k in node.keywords if k.arg}


def parse_prior(spec: str, *, site: str = "") -> dist.Distribution:
    """Build a distribution from text like ``"LogNormal(-1.2, 0.5)"``.

    Only the families in ``PRIOR_FAMILIES`` with numeric arguments are accepted (the text is
    parsed, never evaluated). Positive-valued sites (E, exponents, sigma) must get a prior
    whose support is positive.
    """
    field = f"prior {site}" if site else "prior"
    name, args, kwargs = _parse_spec(spec, field)
    try:
        d = getattr(dist, name)(*args, **kwargs, validate_args=True)
    except (TypeError, ValueError) as e:
        raise InputError(f"invalid {spec!r}: {e}", field=field) from None
    if site in POSITIVE_SITES:
        lower = getattr(d.support, "lower_bound", None)
        ok = d.support is dist.constraints.positive or (lower is not None and float(np.min(lower)) >= 0)
        if not ok:
            raise InputError(f"{site} must be positive: give a positive-valued prior "
                             f"(LogNormal, HalfNormal, Gamma, ...), not {spec!r}", field=field)
    return d


@dataclass(frozen=True)
class PriorForm:
    """The shape of one site's prior: its family and argument names, without the numbers.

    A model compiled for one set of forms takes the numbers as (traced) arrays, so a refit whose
    priors differ only in their numbers (data-anchored defaults on a new subset of runs) reuses
    the compiled sampler.
    """

    family: str
    n_args: int  # positional arguments
    kw_names: tuple[str, ...]  # keyword arguments, in the order of the values

    def build(self, values: Array) -> dist.Distribution:
        """The distribution with ``values`` (positional, then keyword) filled in."""
        args = [values[i] for i in range(self.n_args)]
        kwargs = {k: values[self.n_args + j] for j, k in enumerate(self.kw_names)}
        return getattr(dist, self.family)(*args, **kwargs)


def prior_forms(law: str, priors: Mapping[str, str]) -> tuple[dict[str, PriorForm], dict[str, np.ndarray]]:
    """Split validated prior specs into static forms and numeric values, per sampled site."""
    forms, values = {}, {}
    for site in SAMPLED_SITES[law]:
        parse_prior(priors[site], site=site)  # validate, with a message naming the site
        family, args, kwargs = _parse_spec(priors[site], f"prior {site}")
        forms[site] = PriorForm(family, len(args), tuple(kwargs))
        values[site] = np.asarray([*args, *kwargs.values()], dtype=float)
    return forms, values


def resolve_priors(law: str, anchors: Anchors, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Defaults for ``law`` updated by ``overrides`` (checked: names and specs)."""
    specs = default_prior_specs(law, anchors)
    for k, v in (overrides or {}).items():
        if k not in specs:
            raise InputError(f"unknown parameter {k!r} for the {law} law; priors can be set on "
                             f"{', '.join(specs)}", field="--prior")
        parse_prior(v, site=k)  # validate now, with a message naming the site
        specs[k] = v
    return specs


def law_overrides(law: str, overrides: Mapping[str, str], family: tuple[str, ...]) -> dict[str, str]:
    """The prior overrides of a fit of the law family that apply to ``law``.

    ``LAW.site`` names one law's site; a bare ``site`` applies to every law of ``family`` that has
    it (``alpha`` sets the Chinchilla and shared laws' exponent; ``E`` and ``sigma`` every law's).
    A bare name no law has, or a ``LAW.site`` of a law outside the family, is refused.
    """
    out: dict[str, str] = {}
    for name, spec in overrides.items():
        target, sep, site = name.partition(".")
        if sep:
            if target not in family:
                raise InputError(f"unknown law {target!r} in {name!r}; the family is {', '.join(family)}",
                                 field="--prior")
            if target == law:
                out[site] = spec
        elif any(name in SAMPLED_SITES[f] for f in family):
            if name in SAMPLED_SITES[law]:
                out.setdefault(name, spec)
        else:
            sites = sorted({s for f in family for s in SAMPLED_SITES[f]})
            raise InputError(f"no law of the family has a parameter {name!r}; priors can be set on "
                             f"{', '.join(sites)} (or LAW.NAME for one law)", field="--prior")
    return out


def log_mean(law: str, th: Mapping[str, Array], n: Array, d: Array) -> Array:
    """log of the law's predicted loss at centred log N, log D (``n``, ``d``), from sampled sites."""
    if law in ("chinchilla", "shared"):
        beta = th["alpha"] if law == "shared" else th["beta"]
        terms = jnp.stack(jnp.broadcast_arrays(
            jnp.log(th["E"]),
            th["log_A_pivot"] - th["alpha"] * n,
            th["log_B_pivot"] - beta * d,
        ))
        return jax_logsumexp(terms)
    r = th["alpha_N"] / th["alpha_D"]
    log_bracket = jnp.logaddexp(th["log_N_term"] - r * n, th["log_D_term"] - d)
    return jnp.logaddexp(jnp.log(th["E"]), th["alpha_D"] * log_bracket)


def jax_logsumexp(x: Array) -> Array:
    """logsumexp over the first axis (kept local: one less import path to trace)."""
    m = jnp.max(x, axis=0)
    return m + jnp.log(jnp.sum(jnp.exp(x - m), axis=0))


def natural_params(law: str, th: Mapping[str, Array], anchors_or_pivots: Any) -> dict[str, Array]:
    """Convert sampled (pivot-centred) parameters to the law's natural parameters."""
    log_N0, log_D0 = _pivots(anchors_or_pivots)
    if law in ("chinchilla", "shared"):
        beta = th["alpha"] if law == "shared" else th["beta"]
        out = {
            "E": th["E"],
            "A": jnp.exp(th["log_A_pivot"] + th["alpha"] * log_N0),
            "B": jnp.exp(th["log_B_pivot"] + beta * log_D0),
            "alpha": th["alpha"],
        }
        if law == "chinchilla":
            out["beta"] = th["beta"]
        return out
    r = th["alpha_N"] / th["alpha_D"]
    return {
        "E": th["E"],
        "N_c": jnp.exp(log_N0 + th["log_N_term"] / r),
        "D_c": jnp.exp(log_D0 + th["log_D_term"]),
        "alpha_N": th["alpha_N"],
        "alpha_D": th["alpha_D"],
    }


def _pivots(a: Any) -> tuple[Any, Any]:
    if isinstance(a, Anchors):
        return a.log_N0, a.log_D0
    return a[0], a[1]


def noise_log_prob(likelihood: str, nu: float, y: Array, mu: Array, sigma: Array) -> Array:
    """Log density of observed log loss ``y`` around the law's ``mu`` with scale ``sigma``."""
    return _noise(likelihood, nu, mu, sigma).log_prob(y)


def _noise(likelihood: str, nu: float, mu: Array, sigma: Array) -> dist.Distribution:
    if likelihood == "student_t":
        return dist.StudentT(nu, mu, sigma)
    if likelihood == "gaussian":
        return dist.Normal(mu, sigma)
    raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {', '.join(LIKELIHOODS)}")


# --------------------------------------------------------------------------------------------
# sampling coordinates
#
# The laws' posteriors are curved ridges: the data pin down the loss near the runs far better than
# how it splits between the irreducible E and the power-law terms, so E, the amplitudes and the
# exponents slide together along a banana that narrows at one end. NUTS with a dense mass matrix
# straightens linear correlations, not curved ones; on a Marin table the Kaplan law's chains
# stalled in the narrow end (R-hat 1.27, divergences). The models therefore sample in coordinates
# where that ridge is nearly straight, and put the priors (unchanged: on E, the exponents and
# the pivot amplitudes) on the original sites through the change of variables' Jacobian:
#
# * l0 = log L0, the log loss at the pivots, which the data fix tightly;
# * how L0 splits between E and the reducible terms, as logits (chinchilla, shared: z_A, z_B
#   against E; kaplan: z, the reducible share against E, and rho, the N share of the bracket);
# * log exponents and log sigma.
#
# Along the ridge log(exponent) + log(reducible share) is nearly constant (the data fix the local
# slope of the loss), which is linear in these coordinates. The posterior is the same; only its
# geometry for the sampler changes (tests check both against each other and by SBC).

SAMPLING_COORDS = {
    "chinchilla": ("l0", "z_A", "z_B", "log_alpha", "log_beta", "log_sigma"),
    "shared": ("l0", "z_A", "z_B", "log_alpha", "log_sigma"),
    "kaplan": ("l0", "z", "log_alpha_N", "log_alpha_D", "rho", "log_sigma"),
}


def from_sampling(law: str, u: Array) -> dict[str, Array]:
    """Sampling coordinates (last axis of ``u``) -> the law's sampled sites."""
    u = jnp.moveaxis(jnp.asarray(u), -1, 0)
    if law in ("chinchilla", "shared"):
        l0, z_a, z_b, log_alpha = u[0], u[1], u[2], u[3]
        zeros = jnp.zeros_like(l0)
        logf = jax.nn.log_softmax(jnp.stack([zeros, z_a, z_b]), axis=0)
        th = {"E": jnp.exp(l0 + logf[0]), "alpha": jnp.exp(log_alpha),
              "log_A_pivot": l0 + logf[1], "log_B_pivot": l0 + logf[2], "sigma": jnp.exp(u[-1])}
        if law == "chinchilla":
            th["beta"] = jnp.exp(u[4])
        return th
    l0, z, log_alpha_n, log_alpha_d, rho = u[0], u[1], u[2], u[3], u[4]
    alpha_d = jnp.exp(log_alpha_d)
    log_bracket = (l0 + jax.nn.log_sigmoid(z)) / alpha_d  # log of the bracket at the pivot
    return {"E": jnp.exp(l0 + jax.nn.log_sigmoid(-z)), "alpha_N": jnp.exp(log_alpha_n), "alpha_D": alpha_d,
            "log_N_term": log_bracket + jax.nn.log_sigmoid(rho), "log_D_term": log_bracket + jax.nn.log_sigmoid(-rho),
            "sigma": jnp.exp(u[-1])}


def to_sampling(law: str, th: Mapping[str, Array]) -> Array:
    """The law's sampled sites -> sampling coordinates (on the last axis); inverse of :func:`from_sampling`."""
    log_e = jnp.log(th["E"])
    if law in ("chinchilla", "shared"):
        la, lb = th["log_A_pivot"], th["log_B_pivot"]
        cols = [jax_logsumexp(jnp.stack(jnp.broadcast_arrays(log_e, la, lb))), la - log_e, lb - log_e,
                jnp.log(th["alpha"])]
        if law == "chinchilla":
            cols.append(jnp.log(th["beta"]))
    else:
        ln, ld = th["log_N_term"], th["log_D_term"]
        g0 = th["alpha_D"] * jnp.logaddexp(ln, ld)  # log reducible loss at the pivot
        cols = [jnp.logaddexp(log_e, g0), g0 - log_e, jnp.log(th["alpha_N"]), jnp.log(th["alpha_D"]), ln - ld]
    cols.append(jnp.log(th["sigma"]))
    return jnp.stack(jnp.broadcast_arrays(*cols), axis=-1)


def log_abs_det_jacobian(law: str, u: Array) -> Array:
    """``log |det d(sites)/du|`` of :func:`from_sampling`, in closed form.

    chinchilla and shared: ``(log E, log_A_pivot, log_B_pivot)`` from ``(l0, z_A, z_B)`` has
    determinant 1 (subtract the log E row from the other two: an identity block remains), and each
    site taken as the exponential of a coordinate adds that site's log. kaplan: the
    ``(log E, log_N_term, log_D_term)`` block against ``(l0, z, rho)`` has determinant
    ``-1/alpha_D`` (checked against autodiff in the tests), so ``alpha_D`` cancels.
    """
    th = from_sampling(law, u)
    out = jnp.log(th["E"]) + jnp.log(th["sigma"])
    if law == "kaplan":
        return out + jnp.log(th["alpha_N"])
    out = out + jnp.log(th["alpha"])
    return out + jnp.log(th["beta"]) if law == "chinchilla" else out


def prior_log_density(law: str, u: Array, forms: Mapping[str, PriorForm], prior_values: Mapping[str, Array]) -> Array:
    """Log prior density of sampling coordinates ``u``: the priors on the law's sites times the
    Jacobian of the map from ``u`` to those sites."""
    th = from_sampling(law, u)
    lp = log_abs_det_jacobian(law, u)
    for k in SAMPLED_SITES[law]:
        d = forms[k].build(prior_values[k])
        lp = lp + jnp.where(d.support(th[k]), d.log_prob(th[k]), -jnp.inf)
    return lp


def initial_point(law: str, forms: Mapping[str, PriorForm], prior_values: Mapping[str, Array], rng: Array,
                  spread: float = 1.0, pooling: Pooling | None = None) -> Array:
    """A chain's starting point in sampling coordinates: each site's prior median, mapped to
    sampling coordinates and jittered by ``U(-spread, spread)``; for a grouped model followed by
    the group coordinates: every group at the population value, each spread at half its prior
    scale (jittered likewise)."""
    sites = SAMPLED_SITES[law]
    keys = jax.random.split(rng, len(sites) + 2)
    med = {k: jnp.median(forms[k].build(prior_values[k]).sample(key, (201,)), axis=0)
           for k, key in zip(sites, keys[:-2], strict=True)}
    u = to_sampling(law, med)
    u = u + jax.random.uniform(keys[-2], u.shape, minval=-spread, maxval=spread)
    if pooling is None:
        return u
    pooled = pooling.pooled_names(law)
    log_tau = jnp.log(0.5 * jnp.asarray([TAU_SCALE[p] for p in pooled] * pooling.n_factors))
    h = jnp.concatenate([log_tau, jnp.zeros(pooling.dim(law) - log_tau.shape[0])])
    if _absolute(pooling):  # every group starts at the population's value
        for j, p in enumerate(pooled):
            if p in pooling.centred(0, law):
                idx = log_tau.shape[0] + j + len(pooled) * jnp.arange(pooling.levels[0])
                h = h.at[idx].set(u[GROUP_PARAMS[law].index(p)])
        sep = pooling.separate_names(law)
        start = pooling.dim(law) - pooling.n_groups * len(sep)
        for j, p in enumerate(sep):
            h = h.at[start + j + len(sep) * jnp.arange(pooling.n_groups)].set(u[GROUP_PARAMS[law].index(p)])
    return jnp.concatenate([u, h + jax.random.uniform(keys[-1], h.shape, minval=-spread, maxval=spread)])


# --------------------------------------------------------------------------------------------
# groups: one law per group, partially pooled
#
# A table whose runs fall in groups (datasets, evaluation sets, tokenizers) gets one law per
# group. Each coordinate of the law (GROUP_PARAMS, below) is, across groups, one of
#
# * ``shared``: one value for every group;
# * ``pooled``: per group, ``value_g = population value + tau * eps_g`` with ``eps_g ~ Normal(0, 1)``
#   (non-centred: the sampler moves eps, not value_g, so small groups and many groups do not
#   make a funnel) and the spread ``tau ~ HalfNormal(TAU_SCALE)`` learned from the groups;
# * ``separate``: per group, as pooled but with the spread fixed at about the width of the
#   default prior (SEPARATE_SCALE): groups borrow nothing from each other beyond the prior's
#   scale around a common location.
#
# Groups deviate in the sampling coordinates (SAMPLING_COORDS), not in E, A and B one by one:
# within a group the data fix the loss near the runs far better than how it splits between E
# and the reducible terms, so independent deviations of log E and log A put every group back on
# the curved ridge those coordinates straighten (tried: the Kaplan law with three Gadre groups
# reached R-hat 1.33). The coordinates, named for pooling:
#
# * ``L0``: the log loss at the pivot (N0, D0): where the group's curve sits;
# * ``A``, ``B`` (chinchilla, shared): the reducible terms at the pivot relative to E (logits);
#   ``E`` (kaplan): the reducible share of the loss at the pivot against E (logit), ``N_c``: the
#   bracket's N term against its D term (logit);
# * the exponents and ``sigma`` on their log scale.
#
# The population value has the law's usual priors, so an ungrouped fit is the one-group case
# with nothing varying.

GROUP_PARAMS = {
    "chinchilla": ("L0", "A", "B", "alpha", "beta", "sigma"),
    "shared": ("L0", "A", "B", "alpha", "sigma"),
    "kaplan": ("L0", "E", "alpha_N", "alpha_D", "N_c", "sigma"),
}  # in the order of SAMPLING_COORDS
POOLING_MODES = ("shared", "pooled", "separate")
#: HalfNormal scale of each pooled coordinate's spread across groups: evaluation sets' losses
#: differ by tens of percent, how they split between E and the reducible terms by more, exponents
#: by ~10-30% (published fits on different data), noise by ~2x
TAU_SCALE = {"L0": 0.5, "A": 1.0, "B": 1.0, "E": 1.0, "N_c": 1.0,
             "alpha": 0.3, "beta": 0.3, "alpha_N": 0.3, "alpha_D": 0.3, "sigma": 0.5}
#: spread of a separate coordinate across groups: about the width of its default prior
SEPARATE_SCALE = {"L0": 1.0, "A": 2.0, "B": 2.0, "E": 2.0, "N_c": 2.0,
                  "alpha": 0.6, "beta": 0.6, "alpha_N": 0.6, "alpha_D": 0.6, "sigma": 1.0}


@dataclass(frozen=True)
class Pooling:
    """How each law parameter varies across groups (static: part of the compiled program).

    ``modes`` maps parameter names (:data:`GROUP_PARAMS`, the union over the law family) to
    ``"shared"``, ``"pooled"`` or ``"separate"``; a name a law lacks is ignored for that law.
    ``cells`` gives, for each group (a *cell*), its level in each factor: a group named by one
    column is one factor whose levels are the groups (the default, also for ``--group
    dataset,eval_set``: every combination is a group, exchangeable with the others). With
    several factors (``FitConfig.group_factors``, Python API only) a pooled coordinate of a cell
    is the population value plus one effect per factor, each factor with its own spread, and a
    cell with no runs whose levels were seen (a known evaluation set on a new dataset) gets
    their effects. It is not the default because it did worse on Gadre et al.'s 24 groups
    (dataset x evaluation set, the held-out 1.4B and 6.9B models): additive effects alone
    scored a held-out log density of 86 against 136 for exchangeable groups; with each
    combination's own deviation added it scored 142 but mixed badly (R-hat 1.2, 429 s).
    """

    cells: tuple[tuple[int, ...], ...]  # per group: its level index in each factor
    levels: tuple[int, ...]  # number of levels per factor
    modes: tuple[tuple[str, str], ...]

    @property
    def n_groups(self) -> int:
        return len(self.cells)

    @property
    def n_factors(self) -> int:
        return len(self.levels)

    def mode(self, name: str) -> str:
        return dict(self.modes).get(name, "pooled")

    def pooled_names(self, law: str) -> list[str]:
        return [p for p in GROUP_PARAMS[law] if self.mode(p) == "pooled"]

    def separate_names(self, law: str) -> list[str]:
        return [p for p in GROUP_PARAMS[law] if self.mode(p) == "separate"]

    def centred(self, factor: int, law: str) -> tuple[str, ...]:
        """Coordinates of ``law`` sampled centred in ``factor`` (see :data:`CENTRED`)."""
        return tuple(p for p, k in CENTRED.get(law, {}).items() if self.levels[factor] >= k)

    def dim(self, law: str) -> int:
        """Number of group coordinates: a log spread per pooled parameter and factor, an effect
        per pooled parameter and level of each factor, a deviation per separate parameter and group."""
        n_pool = len(self.pooled_names(law))
        return n_pool * self.n_factors + n_pool * sum(self.levels) + self.n_groups * len(self.separate_names(law))


def one_factor(n_groups: int, modes: tuple[tuple[str, str], ...]) -> Pooling:
    """The pooling of groups named by one column."""
    return Pooling(tuple((g,) for g in range(n_groups)), (n_groups,), modes)


def resolve_pooling(cells: Any, family: tuple[str, ...], *, pool: tuple[str, ...] = (),
                    share: tuple[str, ...] = (), separate: tuple[str, ...] = ()) -> Pooling:
    """The pooling of a grouped fit: every parameter pooled (the default), except those named in
    ``share`` or ``separate`` (``all`` names every parameter); ``pool`` names are pooled even
    where ``all`` says otherwise. Names must belong to some law of ``family``. ``cells`` is the
    number of groups (one factor) or each group's level indices, one per factor."""
    known = [p for law in family for p in GROUP_PARAMS[law]]
    known = list(dict.fromkeys(known))
    modes = dict.fromkeys(known, "pooled")
    for mode, names, flag in (("shared", share, "--share"), ("separate", separate, "--separate"),
                              ("pooled", pool, "--pool")):
        for name in names:
            if name == "all":
                modes.update(dict.fromkeys(known, mode))
            elif name in modes:
                modes[name] = mode
            else:
                raise InputError(f"unknown parameter {name!r}; expected 'all' or some of {', '.join(known)}",
                                 field=flag)
    for name in pool:  # explicit names win over 'all'
        if name != "all":
            modes[name] = "pooled"
    if isinstance(cells, int):
        return one_factor(cells, tuple(modes.items()))
    cells = tuple(tuple(int(x) for x in c) for c in cells)
    levels = tuple(max(c[f] for c in cells) + 1 for f in range(len(cells[0])))
    return Pooling(cells, levels, tuple(modes.items()))


#: coordinates whose effects are sampled centred (the group's own value with a Normal(population,
#: spread) prior, see :func:`_absolute`; with crossed factors, offsets of that spread) in a factor
#: of at least the given number of levels: the loss at the pivot is pinned by any group's runs, and a
#: non-centred effect of a well-identified value ties its eps to its spread, a thin curved ridge
#: (24 Gadre groups as one factor, non-centred: 540 leapfrog steps per draw; centred: 135, at 500
#: warm-up draws). This holds with few groups too. Gadre's c4_val, the Chinchilla law, seeds 0-3
#: at the default settings, on its 3 training sets: non-centred gave max R-hat 1.55 (331
#: divergences: one chain stuck with every group 0.4 below the population), 1.021, 1.032 and
#: 1.035; centred offsets 1.008, 1.013, 1.046 and 1.005; centred values with the group block's own
#: mass (see sampler.CompiledNUTS) 1.005, 1.009, 1.010 and 1.006, bulk ESS >= 633, no
#: divergences. On 2 of the sets non-centred gave 1.019, 1.012, 1.005 and 1.034, centred offsets
#: 1.005-1.009. The shared law has the Chinchilla law's coordinates and follows it. For the Kaplan
#: law on 3 sets centred offsets were no better (non-centred 1.25 with 35 divergences, then
#: 1.011-1.013; centred 1.098, then 1.008-1.018), and on 5 simulated groups of 24 runs they
#: reached R-hat 1.27 where non-centred passes: it keeps the 8-level threshold (with the block
#: mass, non-centred: 1.003-1.008 on the 4 seeds). The other coordinates are weakly identified per
#: group and stay non-centred (centring the exponents too did not cut the steps; centring sigma
#: too added divergences).
#:
#: The shared law's one exponent is centred too from 16 groups up. It carries both terms' decay,
#: so it varies between groups more than either Chinchilla exponent (spread 0.19 on its log scale
#: on Gadre's 24 groups) and each group's runs pin it: non-centred, it was the worst-mixed
#: coordinate of the averaged 24-group fit (population alpha R-hat 1.033, bulk ESS 263). Fitted
#: alone on the 24 groups, seeds 0-2: centred, 31 leapfrog steps per draw instead of 62-63, bulk
#: ESS 436, 551, 400 against 423, 382, 296, 20-27 s against 27-28 s, the same held-out figures
#: (log score 111.0-111.2 both ways). On 3 groups (c4_val's training sets) it diverged on every
#: seed (69-215 divergent transitions, none non-centred), as a spread that 3 groups barely
#: identify makes a funnel of centred values; on 8 (one training set's evaluation sets, seeds
#: 0-2) it halved the steps too (47-62 against 115-126) but left 0, 2 and 2 divergent transitions.
CENTRED = {"chinchilla": {"L0": 2}, "shared": {"L0": 2, "alpha": 16}, "kaplan": {"L0": 8}}


def _split_group_coords(law: str, h: Array, pooling: Pooling) -> tuple[Array, list[Array], Array]:
    """``h`` -> log spreads ``(..., factors, n_pooled)``, per factor the raw effects
    ``(..., levels, n_pooled)``, and the separate coordinates ``(..., groups, n_separate)``."""
    n_pool, n_sep, F = len(pooling.pooled_names(law)), len(pooling.separate_names(law)), pooling.n_factors
    lead = h.shape[:-1]
    log_tau = h[..., : n_pool * F].reshape((*lead, F, n_pool))
    start, effects = n_pool * F, []
    for n_lev in pooling.levels:
        effects.append(h[..., start: start + n_lev * n_pool].reshape((*lead, n_lev, n_pool)))
        start += n_lev * n_pool
    return log_tau, effects, h[..., start:].reshape((*lead, pooling.n_groups, n_sep))


def _absolute(pooling: Pooling) -> bool:
    """Whether centred coordinates are sampled as the groups' own values (one factor), not as
    offsets from the population's. An offset of a value the data pin moves one-for-one against
    the population value: a correlation that only a dense mass matrix over the population and
    the groups together undoes, and the sampler keeps the groups' block diagonal (24 Gadre
    groups, Chinchilla law: offsets 255-290 leapfrog steps per draw, values 64-82)."""
    return pooling.n_factors == 1


def _centred_offset(law: str, pooling: Pooling, u: Array, p: str, raw: Array) -> Array:
    """A centred coordinate's offset from the population value, ``(..., levels)``, from its
    sampled column ``raw`` (the groups' own values under :func:`_absolute`, else the offsets)."""
    return raw - u[..., GROUP_PARAMS[law].index(p), None] if _absolute(pooling) else raw


def _separate_deviation(law: str, pooling: Pooling, u: Array, p: str, raw: Array) -> Array:
    """A separate coordinate's deviation from the population value in units of its scale
    (:data:`SEPARATE_SCALE`), ``(..., groups)``, from its sampled column ``raw``.

    With one factor, ``raw`` holds the groups' own values, as centred coordinates do (see
    :func:`_absolute`): each group's value is pinned by its own runs, and a deviation would move
    one-for-one against the population value. Sampled as deviations, 24 Gadre groups needed one
    dense mass matrix over the population and the groups (129 leapfrog steps per draw at about
    200 us each, bulk ESS 521); as values, the groups' diagonal block does (222 steps at about 45
    us, bulk ESS 1382; the same posterior)."""
    x = _centred_offset(law, pooling, u, p, raw)
    return x / SEPARATE_SCALE[p] if _absolute(pooling) else x


def group_prior_log_density(law: str, h: Array, pooling: Pooling, u: Array) -> Array:
    """Log prior of the group coordinates ``h``: HalfNormal spreads (sampled as log spreads,
    with their Jacobian), standard-normal effects (non-centred) or normal offsets of scale the
    spread (centred, :data:`CENTRED`), and normal deviations of separate parameters of scale
    :data:`SEPARATE_SCALE` (see :func:`_separate_deviation`)."""
    pooled = pooling.pooled_names(law)
    log_tau, effects, sep = _split_group_coords(law, h, pooling)
    scale = jnp.asarray([TAU_SCALE[p] for p in pooled])
    tau = jnp.exp(log_tau)
    lp = jnp.sum(-0.5 * (tau / scale) ** 2 - jnp.log(scale) + log_tau, axis=(-2, -1))  # HalfNormal + Jacobian
    for f, raw in enumerate(effects):
        for j, p in enumerate(pooled):
            if p in pooling.centred(f, law):
                t = tau[..., f, j]
                x = _centred_offset(law, pooling, u, p, raw[..., j])
                lp = lp + jnp.sum(-0.5 * (x / t[..., None]) ** 2, axis=-1) - raw.shape[-2] * jnp.log(t)
            else:
                lp = lp + jnp.sum(-0.5 * raw[..., j] ** 2, axis=-1)
    for j, p in enumerate(pooling.separate_names(law)):
        lp = lp + jnp.sum(-0.5 * _separate_deviation(law, pooling, u, p, sep[..., j]) ** 2, axis=-1)
    return lp


def level_effects(law: str, h: Array, pooling: Pooling, u: Array) -> list[Array]:
    """Per factor, each level's effect on every pooled coordinate, ``(..., levels, n_pooled)``."""
    log_tau, effects, _ = _split_group_coords(law, h, pooling)
    out = []
    for f, raw in enumerate(effects):
        cols = [_centred_offset(law, pooling, u, p, raw[..., j]) if p in pooling.centred(f, law)
                else jnp.exp(log_tau[..., f, j])[..., None] * raw[..., j]
                for j, p in enumerate(pooling.pooled_names(law))]
        out.append(jnp.stack(cols, axis=-1) if cols else raw)
    return out


def group_values(law: str, u: Array, dev: Mapping[str, Array], n_groups: int) -> dict[str, Array]:
    """Every group's sampled sites, shape ``(..., n_groups)``, from the population's sampling
    coordinates ``u`` (``(..., k)``) and each varying coordinate's deviation ``(..., n_groups)``."""
    u = jnp.asarray(u)
    cols = []
    for j, p in enumerate(GROUP_PARAMS[law]):
        base = jnp.broadcast_to(u[..., j, None], (*u.shape[:-1], n_groups))
        cols.append(base + dev[p] if p in dev else base)
    return from_sampling(law, jnp.stack(cols, axis=-1))


def group_sites(law: str, u: Array, h: Array, pooling: Pooling) -> tuple[dict, dict, list]:
    """Every group's sampled sites, the spreads (``tau_NAME``: ``(..., factors)``) and the level
    effects, from the population's coordinates ``u`` and the group coordinates ``h``."""
    pooled, separate = pooling.pooled_names(law), pooling.separate_names(law)
    log_tau, _, sep = _split_group_coords(law, h, pooling)
    effects = level_effects(law, h, pooling, u)
    cells = jnp.asarray(pooling.cells, dtype=int)  # (groups, factors)
    dev = {}
    for j, p in enumerate(pooled):
        dev[p] = sum(effects[f][..., cells[:, f], j] for f in range(pooling.n_factors))
    for j, p in enumerate(separate):
        dev[p] = SEPARATE_SCALE[p] * _separate_deviation(law, pooling, u, p, sep[..., j])
    spreads = {p: jnp.exp(log_tau[..., :, j]) for j, p in enumerate(pooled)}
    return group_values(law, u, dev, pooling.n_groups), spreads, effects


def law_model(
    log_N: Array,
    log_D: Array,
    log_loss: Array | None,
    mask: Array | None,
    group: Array | None,
    se: Array | None,
    pivots: Array,
    prior_values: Mapping[str, Array],
    *,
    law: str,
    forms: Mapping[str, PriorForm],
    likelihood: str = "student_t",
    nu: float = 4.0,
    pooling: Pooling | None = None,
) -> None:
    """The model with every number an argument: what the compiled sampler traces once.

    ``pivots`` is ``[log_N0, log_D0]``; ``prior_values`` holds each site's prior numbers in
    the order of its :class:`PriorForm`; ``mask`` (bool, per run) leaves runs out of the
    likelihood, so a table padded to a fixed size, or cut for forward validation, is fitted
    by the same compiled program. The sampler moves in :data:`SAMPLING_COORDS` (site ``u``);
    the law's sites and natural parameters are recorded as deterministic sites.

    With ``pooling`` (a grouped table; ``group`` holds each run's group index) the group
    coordinates (see :class:`Pooling`) are a second site ``h``; the population's sites keep their plain
    names, each group's are recorded as ``g_NAME`` (last axis: group) and the spreads as
    ``tau_NAME``. ``se`` (or None) is each run's measurement standard error of log loss, added
    in quadrature to the learned noise.
    """
    k = len(SAMPLING_COORDS[law])
    u = numpyro.sample("u", dist.ImproperUniform(dist.constraints.real_vector, (), (k,)))
    h = None
    if pooling is not None:  # a site of its own, so that the sampler can give it its own mass block
        h = numpyro.sample("h", dist.ImproperUniform(dist.constraints.real_vector, (), (pooling.dim(law),)))
    lp = prior_log_density(law, u, forms, prior_values)
    numpyro.factor("prior", lp if pooling is None else lp + group_prior_log_density(law, h, pooling, u))
    th = from_sampling(law, u)
    for name in SAMPLED_SITES[law]:
        numpyro.deterministic(name, th[name])
    for name, val in natural_params(law, th, pivots).items():
        if name not in th:
            numpyro.deterministic(name, val)
    if pooling is None:
        per_run = th
    else:
        tg, spreads, effects = group_sites(law, u, h, pooling)
        for name, val in {**tg, **natural_params(law, tg, pivots)}.items():
            numpyro.deterministic("g_" + name, val)
        for j, name in enumerate(pooling.pooled_names(law)):
            numpyro.deterministic("tau_" + name, spreads[name])  # (factors,)
            for f, eff in enumerate(effects):
                numpyro.deterministic(f"effect{f}_{name}", eff[..., j])  # (levels of factor f,)
        per_run = {name: val[group] for name, val in tg.items()}
    mu = log_mean(law, per_run, log_N - pivots[0], log_D - pivots[1])
    scale = per_run["sigma"] if se is None else jnp.sqrt(per_run["sigma"] ** 2 + se ** 2)
    with numpyro.plate("obs", log_N.shape[0]), numpyro.handlers.mask(mask=True if mask is None else mask):
        numpyro.sample("log_loss", _noise(likelihood, nu, mu, scale), obs=log_loss)


def scaling_model(
    log_N: Array,
    log_D: Array,
    log_loss: Array | None = None,
    *,
    law: str,
    anchors: Anchors,
    priors: Mapping[str, str],
    likelihood: str = "student_t",
    nu: float = 4.0,
) -> None:
    """NumPyro model: a scaling law with noise on log loss.

    Parameters
    ----------
    log_N, log_D
        Natural logs of parameters and tokens, one per run.
    log_loss
        Natural log of the observed losses, or ``None`` to sample from the model.
    law
        A law of :data:`bayescale.laws.LAWS`.
    anchors
        Pivots and loss scale (:class:`Anchors`).
    priors
        Spec strings for every sampled site (see :func:`resolve_priors`).
    likelihood
        ``"student_t"`` (robust, ``nu`` degrees of freedom) or ``"gaussian"``.
    nu
        Degrees of freedom of the Student-t likelihood.
    """
    forms, values = prior_forms(law, priors)
    law_model(jnp.asarray(log_N), jnp.asarray(log_D), log_loss, None, None, None,
              jnp.asarray([anchors.log_N0, anchors.log_D0]), {k: jnp.asarray(v) for k, v in values.items()},
              law=law, forms=forms, likelihood=likelihood, nu=nu)


def chinchilla(log_N: Array, log_D: Array, log_loss: Array | None = None, **kw: Any) -> None:
    """:func:`scaling_model` with the Chinchilla law."""
    scaling_model(log_N, log_D, log_loss, law="chinchilla", **kw)


def kaplan(log_N: Array, log_D: Array, log_loss: Array | None = None, **kw: Any) -> None:
    """:func:`scaling_model` with the Kaplan-with-E law."""
    scaling_model(log_N, log_D, log_loss, law="kaplan", **kw)


def shared(log_N: Array, log_D: Array, log_loss: Array | None = None, **kw: Any) -> None:
    """:func:`scaling_model` with the shared-exponent (Gadre et al. 2024) law."""
    scaling_model(log_N, log_D, log_loss, law="shared", **kw)
