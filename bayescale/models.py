"""NumPyro models of scaling laws, as plain functions.

One generic model, :func:`scaling_model`, serves both laws; :func:`chinchilla` and
:func:`kaplan` fix the law. Observed data default to ``None`` so the same function gives the
prior predictive, the fit and the posterior predictive.

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

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array

from . import _jax  # noqa: F401
from .errors import InputError
from .laws import check_law

LIKELIHOODS = ("student_t", "gaussian")
SAMPLED_SITES = {
    "chinchilla": ("E", "alpha", "beta", "log_A_pivot", "log_B_pivot", "sigma"),
    "kaplan": ("E", "alpha_N", "alpha_D", "log_N_term", "log_D_term", "sigma"),
}
POSITIVE_SITES = ("E", "alpha", "beta", "alpha_N", "alpha_D", "sigma")
REPORTED = {
    "chinchilla": ("E", "A", "B", "alpha", "beta", "sigma"),
    "kaplan": ("E", "N_c", "D_c", "alpha_N", "alpha_D", "sigma"),
}
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
    else:
        specs = {"E": e, "alpha_N": expo, "alpha_D": expo,
                 "log_N_term": "Normal(0, 3.0)", "log_D_term": "Normal(0, 3.0)"}
    specs["sigma"] = "HalfNormal(0.1)"
    return specs


def parse_prior(spec: str, *, site: str = "") -> dist.Distribution:
    """Build a distribution from text like ``"LogNormal(-1.2, 0.5)"``.

    Only the families in ``PRIOR_FAMILIES`` with numeric arguments are accepted (the text is
    parsed, never evaluated). Positive-valued sites (E, exponents, sigma) must get a prior
    whose support is positive.
    """
    field = f"prior {site}" if site else "prior"
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

    args = [num(a) for a in node.args]
    kwargs = {k.arg: num(k.value) for k in node.keywords if k.arg}
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


def _log_mean(law: str, th: Mapping[str, Array], n: Array, d: Array) -> Array:
    """log of the law's predicted loss at centred log N, log D (``n``, ``d``)."""
    if law == "chinchilla":
        terms = jnp.stack([
            jnp.broadcast_to(jnp.log(th["E"]), jnp.shape(n)),
            th["log_A_pivot"] - th["alpha"] * n,
            th["log_B_pivot"] - th["beta"] * d,
        ])
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
    if law == "chinchilla":
        return {
            "E": th["E"],
            "A": jnp.exp(th["log_A_pivot"] + th["alpha"] * log_N0),
            "B": jnp.exp(th["log_B_pivot"] + th["beta"] * log_D0),
            "alpha": th["alpha"],
            "beta": th["beta"],
        }
    r = th["alpha_N"] / th["alpha_D"]
    return {
        "E": th["E"],
        "N_c": jnp.exp(log_N0 + th["log_N_term"] / r),
        "D_c": jnp.exp(log_D0 + th["log_D_term"]),
        "alpha_N": th["alpha_N"],
        "alpha_D": th["alpha_D"],
    }


def _pivots(a: Any) -> tuple[float, float]:
    if isinstance(a, Anchors):
        return a.log_N0, a.log_D0
    return float(a[0]), float(a[1])


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
        ``"chinchilla"`` or ``"kaplan"``.
    anchors
        Pivots and loss scale (:class:`Anchors`).
    priors
        Spec strings for every sampled site (see :func:`resolve_priors`).
    likelihood
        ``"student_t"`` (robust, ``nu`` degrees of freedom) or ``"gaussian"``.
    nu
        Degrees of freedom of the Student-t likelihood.
    """
    th = {name: numpyro.sample(name, parse_prior(priors[name], site=name))
          for name in SAMPLED_SITES[law]}
    for k, v in natural_params(law, th, anchors).items():
        if k not in th:
            numpyro.deterministic(k, v)
    n = log_N - anchors.log_N0
    d = log_D - anchors.log_D0
    mu = _log_mean(law, th, n, d)
    if likelihood == "student_t":
        noise = dist.StudentT(nu, mu, th["sigma"])
    elif likelihood == "gaussian":
        noise = dist.Normal(mu, th["sigma"])
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {', '.join(LIKELIHOODS)}")
    with numpyro.plate("obs", log_N.shape[0]):
        numpyro.sample("log_loss", noise, obs=log_loss)


def chinchilla(log_N: Array, log_D: Array, log_loss: Array | None = None, **kw: Any) -> None:
    """:func:`scaling_model` with the Chinchilla law."""
    scaling_model(log_N, log_D, log_loss, law="chinchilla", **kw)


def kaplan(log_N: Array, log_D: Array, log_loss: Array | None = None, **kw: Any) -> None:
    """:func:`scaling_model` with the Kaplan-with-E law."""
    scaling_model(log_N, log_D, log_loss, law="kaplan", **kw)
