"""Law averaging: cuts, distances, predictive densities, stacking, the averaged posterior file."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats

import bayescale as bs
from bayescale import averaging as av

from .conftest import TRUE_CHINCHILLA, simulate


def test_budget_levels_group_isoflop_slices():
    C = np.array([1e18, 1.05e18, 3e18, 2.9e18, 1e19, 1e19, 1.1e19])
    assert av.budget_levels(C).tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_cut_points_fall_between_levels_with_enough_runs_below():
    C = np.repeat([1e18, 3e18, 1e19, 3e19, 1e20, 3e20], 8)  # six isoFLOP slices of 8 runs
    cuts = av.cut_points(C, av.LFOConfig(cuts=3, first=0.5, last=0.8, min_runs=10))
    assert cuts == [1e19 * 3, 1e20, 3e20]
    for c in cuts:
        below = np.sum(C < c)
        assert below >= 10 and np.sum(C >= c) > 0 and c in C  # a cut starts a level: slices stay whole
    # too few runs below any level: no forward validation
    assert av.cut_points(np.repeat([1e18, 1e19], 4)) == []
    assert av.cut_points(np.full(30, 1e19)) == []


def test_extrapolation_distance():
    ref = av.DataRange.of(np.array([1e7, 1e9]), np.array([1e9, 1e11]))
    d = av.extrapolation_distance(np.array([1e8, 1e10, 1e8, 1e6]), np.array([1e10, 1e11, 1e12, 1e10]), ref)
    # inside; N a decade above; D a decade above (6ND = 6e20, the largest C: no excess there); N a decade below
    assert_allclose(d, [0.0, 1.0, 1.0, 1.0], atol=1e-12)
    # C as a table records it counts: a run at 10x the largest recorded budget is a decade out
    refc = av.DataRange.of(np.array([1e8, 1e8]), np.array([1e10, 1e10]), C=np.array([1e18, 1e19]))
    assert_allclose(av.extrapolation_distance(np.array([1e8]), np.array([1e10]), refc, C=np.array([1e20])), [1.0])


def test_pointwise_density_matches_closed_forms():
    rng = np.random.default_rng(0)
    y = rng.normal(size=5)
    mu = rng.normal(size=(1, 5))
    sigma = np.array([0.3])
    scale = np.array([0.0, 0.1, 0.5, 1.0, 20.0])
    # noise and discrepancy combine into one Gaussian, or one Student-t, of scale sqrt(sigma^2 + scale^2)
    got = av.pointwise_log_density(y, mu, sigma, scale, likelihood="gaussian", nu=4.0)
    want = stats.norm.logpdf(y, mu[0], np.sqrt(sigma[0] ** 2 + scale**2))
    assert_allclose(got, want, rtol=1e-10)
    got = av.pointwise_log_density(y, mu, sigma, scale, likelihood="student_t", nu=4.0)
    assert_allclose(got, stats.t.logpdf(y, 4.0, mu[0], np.sqrt(sigma[0] ** 2 + scale**2)), rtol=1e-10)
    # no discrepancy: the Student-t density itself; several draws average in probability
    mu2 = rng.normal(size=(3, 5))
    sig2 = np.array([0.2, 0.3, 0.5])
    got = av.pointwise_log_density(y, mu2, sig2, np.zeros(5), likelihood="student_t", nu=4.0)
    want = np.log(np.mean(stats.t.pdf(y, 4.0, mu2, sig2[:, None]), axis=0))
    assert_allclose(got, want, rtol=1e-10)
    # several scales at once give the rows of the single calls
    many = av.pointwise_log_density(y, mu2, sig2, np.stack([scale, 2 * scale]), likelihood="student_t", nu=4.0)
    one = av.pointwise_log_density(y, mu2, sig2, 2 * scale, likelihood="student_t", nu=4.0)
    assert many.shape == (2, 5)
    assert_allclose(many[1], one, rtol=1e-12)
    # importance weights: all weight on one draw gives that draw's density
    lw = np.log(np.array([1e-300, 1.0, 1e-300]))
    got = av.pointwise_log_density(y, mu2, sig2, np.zeros(5), likelihood="gaussian", nu=4.0, log_weights=lw)
    assert_allclose(got, stats.norm.logpdf(y, mu2[1], sig2[1]), rtol=1e-10)


def test_stacking_recovers_mixture_weights_and_the_dirichlet_prior_shrinks():
    rng = np.random.default_rng(1)
    n = 4000
    comp = rng.random(n) < 0.3
    y = np.where(comp, rng.normal(-2, 1, n), rng.normal(2, 1, n))
    lpd = np.stack([stats.norm.logpdf(y, -2, 1), stats.norm.logpdf(y, 2, 1)])
    w, _ = av.stacking_weights(lpd)
    assert_allclose(w, [0.3, 0.7], atol=0.02)
    # one clearly better model takes (almost) all the weight without a prior
    lpd2 = np.stack([stats.norm.logpdf(y, 2, 1), stats.norm.logpdf(y, 2, 3)])
    w2, _ = av.stacking_weights(lpd2[:, ~comp])
    assert w2[0] > 0.95
    # little evidence (points weighted to count as one observation) and a Dirichlet(2) prior: near equal
    w3, _ = av.stacking_weights(lpd2[:, ~comp][:, :50], point_weights=np.full(50, 1 / 50), alpha=2.0)
    assert 0.5 < w3[0] < 0.75


def test_rate_posterior_is_the_prior_without_evidence_and_moves_with_it():
    grid = av.RATE_GRID
    prior = av.rate_posterior(np.zeros((len(grid), 0)))
    assert_allclose(prior.sum(), 1.0)
    # half-normal(0.05): mean 0.05 * sqrt(2/pi) = 0.0399 (discretised on the grid)
    assert abs(grid @ prior - 0.05 * math.sqrt(2 / math.pi)) < 0.004
    # evidence for a 10%-per-decade error at a decade: forward errors of sd 0.1
    rng = np.random.default_rng(2)
    y = rng.normal(0, 0.1, 30)
    lpd = np.stack([av.pointwise_log_density(y, np.zeros((1, 30)), np.array([0.01]), np.full(30, t),
                                             likelihood="gaussian", nu=4.0) for t in grid])
    post = av.rate_posterior(lpd)
    assert 0.075 < grid @ post < 0.13


def test_mixture_counts():
    n = av.mixture_counts([0.324, 0.289, 0.387], 4000)
    assert n.sum() == 4000 and np.all(np.abs(n - np.array([0.324, 0.289, 0.387]) * 4000) <= 1)
    assert av.mixture_counts([1.0, 0.0], 7).tolist() == [7, 0]


@pytest.fixture(scope="module")
def small_family(tmp_path_factory):
    """An averaged fit of 80 simulated Chinchilla-law runs, saved and reloaded."""
    runs = bs.load_runs(simulate("chinchilla", TRUE_CHINCHILLA, 80, 0.01, 11))
    idata = bs.fit(runs, bs.FitConfig(chains=2, warmup=300, draws=300), quiet=True)
    path = tmp_path_factory.mktemp("avg") / "family.nc"
    bs.save_posterior(idata, path)
    return bs.load_posterior(path), runs


@pytest.mark.slow
def test_averaged_file_layout_and_law_views(small_family):
    from bayescale.inference import with_log_likelihood
    from bayescale.store import law_view, laws_of, metadata, weights_of

    idata, runs = small_family
    assert "log_likelihood" not in idata.groups()  # not stored: recomputed from the draws
    idata = with_log_likelihood(idata)
    meta = metadata(idata)
    assert meta["law"] == "averaged" and laws_of(idata) == ["chinchilla", "kaplan", "shared"]
    post = idata.posterior
    assert {"chinchilla.alpha", "kaplan.alpha_N", "shared.alpha", "discrepancy_rate"} <= set(post.data_vars)
    assert {"chinchilla.log_loss", "kaplan.log_loss"} <= set(idata.log_likelihood.data_vars)
    assert sum(weights_of(idata).values()) == pytest.approx(1.0)
    view = law_view(idata, "kaplan")
    assert metadata(view)["law"] == "kaplan" and "alpha_N" in view.posterior
    np.testing.assert_array_equal(view.posterior["alpha_N"].values, post["kaplan.alpha_N"].values)
    assert view.log_likelihood["log_loss"].shape[-1] == len(runs)
    # one-law code works on the view: diagnostics, parameters
    assert bs.diagnostics(view)["max_r_hat"] < 1.05
    d = bs.diagnostics(idata)
    assert set(d["per_law"]) == {"chinchilla", "kaplan", "shared"}
    assert d["max_r_hat"] == max(v["max_r_hat"] for v in d["per_law"].values())
    with pytest.raises(bs.InputError, match="name the law"):
        bs.param_draws(idata)
    assert set(bs.param_draws(idata, law="shared")) == {"E", "A", "B", "alpha", "sigma"}


@pytest.mark.slow
def test_mixture_draws_follow_the_weights(small_family):
    from bayescale.posterior import exponents, mixture
    from bayescale.store import weights_of

    idata, _ = small_family
    mix = mixture(idata)
    w = weights_of(idata)
    S = mix.size
    for law, _, idx in mix.parts:
        assert abs(len(idx) / S - w[law]) <= 1 / S
    # the shared law's a is exactly 1/2: the mixture holds that share of draws at 0.5
    a = exponents(idata)["a"]
    assert np.mean(a == 0.5) == pytest.approx(w["shared"], abs=2 / S)


@pytest.mark.slow
def test_predictions_widen_beyond_the_runs_and_not_inside(small_family):
    """Inside the runs the mixture (laws, each with its misfit process) is as sharp as the data
    allow and holds the true law; two decades beyond the largest run it is several times wider and
    still holds it. The misspecified law (Kaplan, on Chinchilla-law runs) gets a process with a
    real amplitude; the true law's finds no misfit."""
    from bayescale.posterior import predict_draws
    from bayescale.store import metadata

    idata, runs = small_family
    N, D = np.array([1e8, 1e12]), np.array([2e9, 2e13])  # inside the runs; two decades beyond the largest
    t = TRUE_CHINCHILLA
    truth = np.log(t["E"] + t["A"] / N ** t["alpha"] + t["B"] / D ** t["beta"])
    mix = np.log(predict_draws(idata, N, D, noise=False))
    lo, hi = np.quantile(mix, [0.05, 0.95], axis=0)
    width = hi - lo
    assert np.all((lo < truth) & (truth < hi))
    assert width[0] < 0.02  # noise 1%: the law's mean is known to well under that inside
    assert width[1] > 3 * width[0]
    gps = {law: v["discrepancy_gp"] for law, v in metadata(idata)["laws"].items()}
    assert gps["kaplan"]["amplitude"] > 0.01
    assert gps["chinchilla"]["amplitude"] < 0.003


@pytest.mark.slow
def test_forward_validation_refits_and_psis(small_family):
    from bayescale.store import metadata

    idata, runs = small_family
    meta = metadata(idata)
    cuts = meta["averaging"]["cuts"]
    C = runs["C"].to_numpy()
    for v in meta["laws"].values():
        rows = v["lfo"]
        assert rows[0]["method"] == "exact" and rows[0]["pareto_k"] is None  # the first cut is always refitted
        for r, c in zip(rows, cuts, strict=True):
            assert r["n_fit"] == int(np.sum(C < c)) and r["n_scored"] == int(np.sum(C >= c))
            if r["method"] == "psis":
                assert r["pareto_k"] <= av.PARETO_K_MAX
            elif r["pareto_k"] is not None:
                assert r["pareto_k"] > av.PARETO_K_MAX  # PSIS was tried and refused


@pytest.mark.slow
def test_log_predictive_density_is_a_density_centred_on_the_predictions(small_family):
    """Beyond the runs, the averaged posterior's predictive density of log loss integrates to 1,
    peaks where the predictive draws' median lies, and scores a loss at that median far above one
    10% off (the density the calibration bench ranks methods by)."""
    from bayescale.posterior import log_predictive_density, predict_draws

    idata, runs = small_family
    N, D = np.array([4e10, 1e9]), np.array([2e12, 5e10])  # one far beyond the runs, one inside
    med = np.median(predict_draws(idata, N, D, seed=0), axis=0)
    grid = np.log(med)[None, :] + np.linspace(-0.3, 0.3, 3001)[:, None]
    dens = np.exp(np.stack([log_predictive_density(idata, N, D, np.exp(g)) for g in grid]))  # (grid, 2)
    mass = np.sum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid, axis=0), axis=0)  # trapezoid rule
    np.testing.assert_allclose(mass, 1.0, atol=0.01)
    cdf = np.cumsum(dens, axis=0) / dens.sum(axis=0)
    median_from_density = np.exp(grid[np.argmax(cdf >= 0.5, axis=0), [0, 1]])
    np.testing.assert_allclose(median_from_density, med, rtol=0.002)
    at, off = log_predictive_density(idata, N, D, med), log_predictive_density(idata, N, D, med * 1.1)
    assert np.all(at > off + 1.0)
    with pytest.raises(bs.InputError, match="2 losses for 1"):
        log_predictive_density(idata, N[:1], D[:1], med)


@pytest.mark.slow
def test_forward_folds_on_a_worker_thread_are_the_same_folds():
    """``fit_family`` fits the cuts' misfit processes on a worker thread while the next cut samples:
    the folds must be those of the plain, sequential path, bit for bit (threads change when the
    numpy work runs, never its numbers)."""
    from concurrent.futures import ThreadPoolExecutor

    import jax

    runs = bs.load_runs(simulate("chinchilla", TRUE_CHINCHILLA, 60, 0.01, 3))
    cfg = bs.FitConfig(chains=2, warmup=150, draws=150, lfo_warmup=100, lfo_draws=100)
    key = jax.random.PRNGKey(4)
    cuts, plain = av.forward_folds(runs, "kaplan", cfg, key)
    with ThreadPoolExecutor(max_workers=1) as pool:
        cuts2, threaded = av.forward_folds(runs, "kaplan", cfg, key, executor=pool)
    assert cuts == cuts2 and len(plain) == len(threaded) >= 2
    for a, b in zip(plain, threaded, strict=True):
        assert (a.cut, a.n_fit, a.method) == (b.cut, b.n_fit, b.method)
        np.testing.assert_array_equal(a.future, b.future)
        np.testing.assert_array_equal(a.mu, b.mu)
        np.testing.assert_array_equal(a.sigma, b.sigma)
        assert np.ptp(a.sigma) > 0  # the process's variance differs run to run: it was applied
