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
                  spread: float = 1.0) -> Array:
    """A chain's starting point in sampling coordinates: each site's prior median, mapped to
    sampling coordinates and jittered by ``U(-spread, spread)``."""
    sites = SAMPLED_SITES[law]
    keys = jax.random.split(rng, len(sites) + 1)
    med = {k: jnp.median(forms[k].build(prior_values[k]).sample(key, (201,)), axis=0)
           for k, key in zip(sites, keys[:-1], strict=True)}
    u = to_sampling(law, med)
    return u + jax.random.uniform(keys[-1], u.shape, minval=-spread, maxval=spread)


def law_model(
    log_N: Array,
    log_D: Array,
    log_loss: Array | None,
    mask: Array | None,
    pivots: Array,
    prior_values: Mapping[str, Array],
    *,
    law: str,
    forms: Mapping[str, PriorForm],
    likelihood: str = "student_t",
    nu: float = 4.0,
) -> None:
    """The model with every number an argument: what the compiled sampler traces once.

    ``pivots`` is ``[log_N0, log_D0]``; ``prior_values`` holds each site's prior numbers in
    the order of its :class:`PriorForm`; ``mask`` (bool, per run) leaves runs out of the
    likelihood, so a table padded to a fixed size, or cut for forward validation, is fitted
    by the same compiled program. The sampler moves in :data:`SAMPLING_COORDS` (site ``u``);
    the law's sites and natural parameters are recorded as deterministic sites.
    """
    k = len(SAMPLING_COORDS[law])
    u = numpyro.sample("u", dist.ImproperUniform(dist.constraints.real_vector, (), (k,)))
    numpyro.factor("prior", prior_log_density(law, u, forms, prior_values))
    th = from_sampling(law, u)
    for name in SAMPLED_SITES[law]:
        numpyro.deterministic(name, th[name])
    for name, v in natural_params(law, th, pivots).items():
        if name not in th:
            numpyro.deterministic(name, v)
    mu = log_mean(law, th, log_N - pivots[0], log_D - pivots[1])
    with numpyro.plate("obs", log_N.shape[0]), numpyro.handlers.mask(mask=True if mask is None else mask):
        numpyro.sample("log_loss", _noise(likelihood, nu, mu, th["sigma"]), obs=log_loss)


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
    law_model(jnp.asarray(log_N), jnp.asarray(log_D), log_loss, None,
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
