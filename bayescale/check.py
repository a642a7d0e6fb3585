"""Simulation-based calibration (Talts et al. 2018): does the fitting machinery recover what it
simulated, with intervals that mean what they say?

For each law of a posterior, at the runs' own (N, D) and with the fit's own priors and
likelihood: draw parameters from the prior, simulate losses, refit, and record where the true
value falls among the refit's posterior draws (its rank) for every parameter and for
``log N*(C)``. If inference is right, ranks are uniform: each rank histogram is tested against
uniform (chi-square), and the share of replicates whose truth lies in the central 90% interval
should be near 0.9. A skewed or peaked histogram points at a biased or over/under-confident
posterior; divergent refits are counted.

Replicates are fitted in batches, one chain each, every batch by one compiled program (a
replicate per XLA CPU device, see :mod:`bayescale.sampler`). The law's truth is the model the
fit assumes, so this checks the sampler, priors and parameterisation, not whether the law is
right for the data (``bench/calibration.py`` checks that).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from . import _jax  # noqa: F401
from .laws import OPTIMAL_N, PARAM_NAMES
from .models import Anchors, prior_forms

#: refit settings per replicate: one chain, this warm-up and these draws, thinned to RANK_DRAWS
SBC_WARMUP = 300
SBC_DRAWS = 400
RANK_DRAWS = 99  # ranks take RANK_DRAWS + 1 values; bins of the histogram split them evenly
BINS = 10
P_MIN = 0.01  # a histogram with chi-square p below this is flagged as not uniform
COVER_RANGE = (0.85, 0.95)  # acceptable share of truths inside the 90% interval, for a verdict


@dataclass
class LawCheck:
    """SBC of one law: ranks per quantity (replicates,) and the verdict's figures."""

    law: str
    ranks: dict[str, np.ndarray]
    inside90: dict[str, np.ndarray]  # per replicate: truth in the central 90% interval
    divergent: np.ndarray  # divergent transitions per replicate
    seconds: float

    def summary(self) -> dict[str, Any]:
        """Per quantity: chi-square statistic and p of uniform ranks, 90% coverage; and a verdict."""
        from scipy.stats import chisquare

        out: dict[str, Any] = {"replicates": int(len(self.divergent)), "quantities": {}}
        ok = True
        for name, r in self.ranks.items():
            counts = np.histogram(r, bins=BINS, range=(0, RANK_DRAWS + 1))[0]
            stat, p = chisquare(counts)
            cover = float(np.mean(self.inside90[name]))
            good = p > P_MIN and COVER_RANGE[0] <= cover <= COVER_RANGE[1]
            ok &= good
            out["quantities"][name] = {"chi2": float(stat), "p": float(p), "coverage90": cover,
                                       "counts": counts.tolist(), "ok": bool(good)}
        out["replicates_with_divergences"] = int(np.sum(self.divergent > 0))
        out["verdict"] = "calibrated" if ok else "check"
        out["seconds"] = round(self.seconds, 1)
        return out


def sbc_law(
    law: str,
    N: np.ndarray,
    D: np.ndarray,
    anchors: Anchors,
    priors: dict[str, str],
    *,
    replicates: int,
    compute: float,
    likelihood: str = "student_t",
    nu: float = 4.0,
    seed: int = 0,
    progress: Any = None,
    fit_priors: dict[str, str] | None = None,
) -> LawCheck:
    """SBC of ``law`` at the design ``(N, D)`` with these priors (see the module docstring).

    ``fit_priors`` (default: ``priors``) are the priors the refits use; giving others than the
    simulation's shows what a miscalibrated posterior looks like (the tests do).
    """
    from .averaging import noise_draws
    from .inference import FitConfig, log_mean_draws, prior_draws
    from .sampler import SamplerKey, bucket, compiled, pad

    t0 = time.perf_counter()
    devices = max(1, min(jax.local_device_count(), 8))
    forms, values = prior_forms(law, fit_priors or priors)
    cfg = FitConfig(law=law, likelihood=likelihood, nu=nu)
    n = len(N)
    size = bucket(n)
    key = SamplerKey(law=law, forms=tuple(forms.items()), likelihood=likelihood, nu=float(nu), size=size,
                     chains=devices, warmup=SBC_WARMUP, draws=SBC_DRAWS, target_accept=cfg.target_accept,
                     max_tree_depth=cfg.max_tree_depth, dense_mass=cfg.dense_mass, batched=True)
    sampler = compiled(key)
    rng = np.random.default_rng(seed)
    truth = prior_draws(law, anchors, priors, replicates, jax.random.PRNGKey(seed))
    names = [*PARAM_NAMES[law], "sigma"]
    log_nopt = np.log(np.asarray(OPTIMAL_N[law]({k: truth[k] for k in PARAM_NAMES[law]}, compute)))
    # simulated log losses: the law's mean at the design, plus the likelihood's noise
    mu = log_mean_draws(law, truth, np.log(N), np.log(D), anchors)
    y = mu + noise_draws(np.broadcast_to(truth["sigma"][:, None], mu.shape), rng, likelihood=likelihood, nu=nu)
    thin = np.linspace(0, SBC_DRAWS - 1, RANK_DRAWS).round().astype(int)
    ranks = {k: np.zeros(replicates, int) for k in [*names, "log_N_opt"]}
    inside = {k: np.zeros(replicates, bool) for k in ranks}
    divergent = np.zeros(replicates, int)
    lN = pad(np.log(N), size, anchors.log_N0)
    lD = pad(np.log(D), size, anchors.log_D0)
    mask = np.concatenate([np.ones(n, bool), np.zeros(size - n, bool)])
    for start in range(0, replicates, devices):
        idx = np.arange(start, min(start + devices, replicates))
        rows = np.resize(idx, devices)  # the last batch is topped up with repeats (discarded)
        ly = np.stack([pad(y[i], size, 0.0) for i in rows])
        draws = sampler.run(jax.random.PRNGKey(seed * 100003 + start), np.broadcast_to(lN, (devices, size)),
                            np.broadcast_to(lD, (devices, size)), ly, np.broadcast_to(mask, (devices, size)),
                            (anchors.log_N0, anchors.log_D0), values)
        post = {k: draws.samples[k] for k in names}
        post["log_N_opt"] = np.log(np.asarray(OPTIMAL_N[law]({k: draws.samples[k] for k in PARAM_NAMES[law]},
                                                              compute)))
        for j, i in enumerate(idx):
            true = {k: truth[k][i] for k in names}
            true["log_N_opt"] = log_nopt[i]
            for k in ranks:
                x = np.asarray(post[k][j], float)
                ranks[k][i] = int(np.sum(x[thin] < true[k]))
                lo, hi = np.quantile(x, [0.05, 0.95])
                inside[k][i] = lo <= true[k] <= hi
            divergent[i] = int(draws.diverging[j].sum())
        if progress is not None:
            progress(law, int(idx[-1]) + 1, replicates)
    return LawCheck(law, ranks, inside, divergent, time.perf_counter() - t0)


def sbc(idata: Any, *, replicates: int = 200, compute: float | None = None, laws: list[str] | None = None,
        seed: int = 0, progress: Any = None) -> dict[str, LawCheck]:
    """SBC of every law of a posterior (or of ``laws``), at its runs and with its priors.

    ``compute`` is the budget of the ``log N*(C)`` check; default 100 times the largest run's.
    """
    from .errors import InputError
    from .store import law_view, laws_of, metadata

    meta = metadata(idata)
    cd = idata.constant_data
    N, D, C = (np.asarray(cd[k].values, float) for k in ("N", "D", "C"))
    C_target = float(compute) if compute is not None else 100.0 * float(C.max())
    todo = laws or laws_of(idata)
    for law in todo:
        if law not in laws_of(idata):
            raise InputError(f"this posterior holds {', '.join(laws_of(idata))}, not {law!r}", field="--law")
    out = {}
    for law in todo:
        m = metadata(law_view(idata, law))
        out[law] = sbc_law(law, N, D, Anchors(**m["anchors"]), m["priors"], replicates=replicates, compute=C_target,
                           likelihood=meta["config"]["likelihood"], nu=meta["config"]["nu"], seed=seed,
                           progress=progress)
    return out


def plot_ranks(checks: dict[str, LawCheck]) -> Any:
    """Rank histograms, a row per law and a panel per quantity, with the band a uniform histogram
    stays inside 99% of the time (per bin, binomial)."""
    from scipy.stats import binom

    from .plots import OKABE_ITO, _figure

    rows = list(checks.values())
    ncol = max(len(c.ranks) for c in rows)
    fig, axes = _figure(len(rows), ncol, width=2.1 * ncol + 0.6, height=1.9 * len(rows) + 0.8)
    for i, c in enumerate(rows):
        summ = c.summary()
        R = summ["replicates"]
        lo, hi = binom.ppf([0.005, 0.995], R, 1.0 / BINS)
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(c.ranks):
                ax.set_visible(False)
                continue
            name = list(c.ranks)[j]
            q = summ["quantities"][name]
            ax.axhspan(lo, hi, color="0.85", lw=0, gid="uniform99")
            ax.axhline(R / BINS, color="0.5", lw=0.8)
            ax.bar(np.arange(BINS) + 0.5, q["counts"], width=0.9,
                   color=OKABE_ITO["blue"] if q["ok"] else OKABE_ITO["vermillion"], gid="ranks")
            ax.set_xlim(0, BINS)
            ax.set_xticks([])
            ax.tick_params(labelsize=7)
            ax.set_title(f"{c.law}: {name}\np={q['p']:.2f}, 90% cover {q['coverage90']:.2f}", fontsize=8)
    fig.suptitle("Simulation-based calibration: rank of the truth among posterior draws "
                 "(grey: 99% band of a uniform histogram)", fontsize=10)
    return fig
