"""Speed and accuracy of the EIG estimators: 1,000 candidates ranked, full and targeted.

Fits the 240 Epoch-kept Chinchilla rows (chinchilla law, 4 x 300 draws; or give a posterior .nc),
ranks 1,000 grid candidates by full EIG and by targeted EIG about log N*(5.88e23), timed after
compilation (best of 3), and measures the error of the default estimate against a 65,536-sample
reference on a subset of the candidates: plain Monte Carlo over (draw, outcome) pairs, ``y`` drawn
from the likelihood, ``log p(y)`` summed over all the posterior's draws (not the thinned ones the
estimator uses), minus the exact conditional entropy. The reference's own standard error is printed.

    python bench/design_speed.py [MODEL.nc]
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
from scipy import special

from bayescale import design as dz

TARGET_S = 2.0
TARGET_ERR = 0.02
REF_SAMPLES = 65_536
REF_CANDIDATES = 24


def _posterior():
    import bayescale as bs

    if len(sys.argv) > 1:
        return bs.load_posterior(sys.argv[1])
    runs = bs.load_runs("chinchilla", filter="kept_by_epoch == 1")
    return bs.fit(runs, bs.FitConfig(law="chinchilla", warmup=300, draws=300), quiet=True)


def reference_eig(dr_all: dz.DesignDraws, N: float, D: float, rng: np.random.Generator) -> tuple[float, float]:
    """EIG by 65,536 Monte Carlo samples against every posterior draw; returns (estimate, standard error)."""
    mu, s = (a[0] for a in dz.predictive_params(dr_all, np.array([N]), np.array([D])))
    M = len(mu)
    nu = dr_all.nu
    gauss = dr_all.likelihood == "gaussian"
    j = rng.integers(0, M, REF_SAMPLES)
    z = rng.standard_normal(REF_SAMPLES) if gauss else rng.standard_t(nu, REF_SAMPLES)
    y = mu[j] + s[j] * z

    def logf(zz: np.ndarray) -> np.ndarray:
        if gauss:
            return -0.5 * zz * zz - 0.5 * math.log(2 * math.pi)
        c = special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * math.log(nu * math.pi)
        return c - (nu + 1) / 2 * np.log1p(zz * zz / nu)

    logp = np.empty(REF_SAMPLES)
    for a in range(0, REF_SAMPLES, 2048):  # log p(y) = log mean_j f_j(y), in blocks
        yy = y[a : a + 2048, None]
        logp[a : a + 2048] = special.logsumexp(logf((yy - mu[None]) / s[None]) - np.log(s)[None], axis=1) - math.log(M)
    own = logf(z) - np.log(s[j])
    terms = own - logp
    return float(terms.mean()), float(terms.std(ddof=1) / math.sqrt(REF_SAMPLES))


def main() -> None:
    idata = _posterior()
    dr = dz.design_draws(idata)
    dr_all = dz.design_draws(idata, 10**9)
    N, D = dz.grid_candidates(dr.N_obs, dr.D_obs, points=40, max_compute=10 * dr.C_obs.max())
    pick = np.linspace(0, len(N) - 1, 1000).round().astype(int)
    N, D = N[pick], D[pick]
    phi = dz.objective_draws(dr, "n_opt", target_compute=5.88e23)
    dz.rank(dr, N, D, bounds=0)
    dz.rank(dr, N, D, phi=phi, bounds=0)  # compile both
    times = {}
    for name, kw in (("full", {}), ("targeted", {"phi": phi})):
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            r = dz.rank(dr, N, D, bounds=0, **kw)
            best = min(best, time.perf_counter() - t)
        times[name] = (best, r)
    print(f"posterior: {dr.total} draws, estimator uses {dr.M}; {len(N)} candidates; {dr.likelihood} noise")
    for name, (sec, _) in times.items():
        print(f"  rank {name:8s}: {sec:.2f} s after compilation (target < {TARGET_S} s; ratio {sec / TARGET_S:.2f})")
    # accuracy: the default estimate (M thinned draws, grid, quadrature) against the Monte Carlo reference
    rng = np.random.default_rng(0)
    full = times["full"][1].full
    sub = np.unique(np.linspace(0, len(N) - 1, REF_CANDIDATES).round().astype(int))
    sub = np.unique(np.concatenate([sub, np.argsort(-full)[:4]]))  # and the most informative ones
    errs, ses = [], []
    for i in sub:
        ref, se = reference_eig(dr_all, N[i], D[i], rng)
        errs.append(full[i] - ref)
        ses.append(se)
    errs = np.array(errs)
    print(f"  error vs a {REF_SAMPLES}-sample reference (all {dr_all.M} draws) at {len(sub)} candidates "
          f"(EIG {full[sub].min():.3f}-{full[sub].max():.3f} nats): max |err| {np.abs(errs).max():.4f}, "
          f"mean err {errs.mean():+.4f} nats (target <= {TARGET_ERR}; ratio {np.abs(errs).max() / TARGET_ERR:.2f}); "
          f"reference s.e. <= {max(ses):.4f}")


if __name__ == "__main__":
    main()
