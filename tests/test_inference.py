"""NUTS fits: the Chinchilla acceptance numbers, parameter recovery, determinism, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bayescale as bs
from bayescale.inference import metadata
from bayescale.posterior import exponents, param_draws

from .conftest import EPOCH, TRUE_CHINCHILLA, TRUE_KAPLAN, simulate


@pytest.mark.slow
def test_chinchilla_medians_within_one_epoch_se(chinchilla_fit):
    idata, _ = chinchilla_fit
    draws = param_draws(idata)
    for name, (value, se) in EPOCH.items():
        med = float(np.median(draws[name]))
        assert abs(med - value) <= se, (name, med, value, se)


@pytest.mark.slow
def test_chinchilla_share_a_interval_contains_epoch_and_excludes_hoffmann(chinchilla_fit):
    idata, _ = chinchilla_fit
    a = exponents(idata)["a"]
    lo, hi = np.quantile(a, [0.05, 0.95])
    assert lo <= 0.513 <= hi
    assert hi < 0.4565 or lo > 0.4565  # Hoffmann et al.'s Approach-3 share is excluded
    # width comparable with Epoch's bootstrap (SE 0.020 -> 90% width ~0.066): within a factor 3
    assert 0.066 / 3 < hi - lo < 0.066 * 3


@pytest.mark.slow
def test_chinchilla_diagnostics_clean(chinchilla_fit):
    d = bs.diagnostics(chinchilla_fit[0])
    assert d["max_r_hat"] <= 1.01
    assert d["divergences"] == 0
    assert d["min_ess_bulk"] >= 400
    assert d["warnings"] == []


def test_saved_posterior_carries_metadata(chinchilla_fit):
    from bayescale._arviz import az

    _, path = chinchilla_fit
    idata = az.from_netcdf(str(path))  # plain ArviZ opens it
    meta = json.loads(idata.posterior.attrs["bayescale"])
    assert meta["law"] == "chinchilla" and meta["n_obs"] == 240
    assert meta["source"] == "chinchilla" and meta["filter"] == "kept_by_epoch == 1"
    assert meta["source_kind"] == "example"
    assert set(meta["anchors"]) == {"log_N0", "log_D0", "loss_min", "loss_median"}
    assert set(meta["priors"]) == {"E", "alpha", "beta", "log_A_pivot", "log_B_pivot", "sigma"}
    assert {"bayescale", "numpyro", "jax", "arviz"} <= set(meta["versions"])
    assert {"posterior", "prior", "observed_data", "constant_data"} <= set(idata.groups())
    assert "log_likelihood" not in idata.groups()  # recomputed from the draws, not stored
    assert idata.constant_data["N"].shape == (240,)


CASES = [  # (law, truth, n, noise, seed)
    ("chinchilla", TRUE_CHINCHILLA, 30, 0.03, 1),
    ("chinchilla", TRUE_CHINCHILLA, 300, 0.01, 2),
    ("kaplan", TRUE_KAPLAN, 100, 0.02, 3),
    ("kaplan", TRUE_KAPLAN, 300, 0.01, 4),
]


@pytest.mark.slow
@pytest.mark.parametrize("law,truth,n,noise,seed", CASES, ids=[f"{c[0]}-n{c[2]}-noise{c[3]}" for c in CASES])
def test_parameter_recovery(law, truth, n, noise, seed):
    runs = bs.load_runs(simulate(law, truth, n, noise, seed))
    # small samples leave the posterior wide; the diagnostics' own advice is a higher target_accept
    cfg = bs.FitConfig(law=law, chains=4, warmup=500, draws=500, seed=seed, likelihood="gaussian",
                       target_accept=0.95 if n <= 100 else 0.9)
    idata = bs.fit(runs, cfg, quiet=True)
    d = bs.diagnostics(idata)
    assert d["divergences"] == 0 and d["max_r_hat"] <= 1.02
    draws = param_draws(idata)
    truth = {**truth, "sigma": noise}
    # Every parameter inside its 99% marginal interval, and the true vector inside the joint
    # credible region. Marginal 90% intervals alone would fail by design: six of them miss at
    # least once on ~half of all datasets, and E, A and B are strongly correlated at small n.
    # The joint region is ranked by Mahalanobis distance in log space (all parameters are > 0),
    # using the draws' own distances, so it needs no Gaussian approximation.
    for name, value in truth.items():
        lo99, hi99 = np.quantile(draws[name], [0.005, 0.995])
        assert lo99 <= value <= hi99, (name, lo99, value, hi99)
    X = np.log(np.column_stack([draws[k] for k in truth]))
    prec = np.linalg.inv(np.cov(X, rowvar=False))
    centred = X - X.mean(0)
    d2_draws = np.einsum("ij,jk,ik->i", centred, prec, centred)
    diff = np.log(np.array(list(truth.values()))) - X.mean(0)
    rank = float(np.mean(d2_draws < diff @ prec @ diff))
    # 90% joint region from 100 points up. At n=30 the truth sits at rank 0.91: E is weakly
    # identified and its prior (median 0.75 x min loss) pulls it low, so 95% is asserted there.
    assert rank <= (0.90 if n >= 100 else 0.95), rank


def test_same_seed_same_numbers():
    runs = bs.load_runs(simulate("chinchilla", TRUE_CHINCHILLA, 40, 0.02, 7))
    cfg = bs.FitConfig(law="chinchilla", chains=2, warmup=200, draws=200, seed=11)
    a = param_draws(bs.fit(runs, cfg, quiet=True))
    b = param_draws(bs.fit(runs, cfg, quiet=True))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = param_draws(bs.fit(runs, bs.FitConfig(law="chinchilla", chains=2, warmup=200, draws=200, seed=12),
                           quiet=True))
    assert not np.array_equal(a["alpha"], c["alpha"])


@pytest.mark.slow
def test_same_seed_same_averaged_fit():
    from bayescale.store import metadata

    runs = bs.load_runs(simulate("chinchilla", TRUE_CHINCHILLA, 40, 0.02, 7))
    cfg = bs.FitConfig(chains=2, warmup=150, draws=150, seed=3)
    a, b = (bs.fit(runs, cfg, quiet=True) for _ in range(2))
    assert metadata(a)["laws"]["kaplan"]["weight"] == metadata(b)["laws"]["kaplan"]["weight"]
    np.testing.assert_array_equal(a.posterior["discrepancy_rate"].values, b.posterior["discrepancy_rate"].values)
    np.testing.assert_array_equal(a.posterior["shared.alpha"].values, b.posterior["shared.alpha"].values)


def test_prior_override_is_used_and_recorded():
    runs = bs.load_runs(simulate("chinchilla", TRUE_CHINCHILLA, 40, 0.02, 8))
    cfg = bs.FitConfig(law="chinchilla", chains=2, warmup=200, draws=200, priors=(("alpha", "LogNormal(-1.0, 0.01)"),))
    idata = bs.fit(runs, cfg, quiet=True)
    assert metadata(idata)["priors"]["alpha"] == "LogNormal(-1.0, 0.01)"
    # a very tight prior at exp(-1) = 0.368 dominates 40 points
    assert abs(float(np.median(param_draws(idata)["alpha"])) - np.exp(-1.0)) < 0.01


@pytest.mark.slow
def test_prior_overrides_of_an_averaged_fit_go_to_the_laws_that_have_the_site():
    from bayescale.store import law_view

    runs = bs.load_runs(simulate("chinchilla", TRUE_CHINCHILLA, 40, 0.02, 8))
    pri = (("alpha", "LogNormal(-1.0, 0.01)"), ("kaplan.alpha_D", "LogNormal(-1.5, 0.02)"))
    idata = bs.fit(runs, bs.FitConfig(chains=2, warmup=150, draws=150, priors=pri), quiet=True)
    meta = metadata(idata)["laws"]
    assert meta["chinchilla"]["priors"]["alpha"] == meta["shared"]["priors"]["alpha"] == "LogNormal(-1.0, 0.01)"
    assert meta["kaplan"]["priors"]["alpha_D"] == "LogNormal(-1.5, 0.02)"
    assert abs(float(np.median(law_view(idata, "shared").posterior["alpha"])) - np.exp(-1.0)) < 0.01
    with pytest.raises(bs.InputError, match="no law of the family"):
        bs.fit(runs, bs.FitConfig(priors=(("gamma", "LogNormal(0, 1)"),)), quiet=True)
    with pytest.raises(bs.InputError, match="unknown parameter 'alpha' for the kaplan law"):
        bs.fit(runs, bs.FitConfig(priors=(("kaplan.alpha", "LogNormal(0, 1)"),)), quiet=True)


@pytest.mark.slow
def test_diagnostics_warn_on_short_chains():
    runs = bs.load_runs(simulate("chinchilla", TRUE_CHINCHILLA, 40, 0.02, 9))
    idata = bs.fit(runs, bs.FitConfig(law="chinchilla", chains=2, warmup=30, draws=30), quiet=True)
    w = bs.diagnostics(idata)["warnings"]
    assert any("effective sample size" in x for x in w)


@pytest.mark.slow
@pytest.mark.parametrize("law", ["chinchilla", "kaplan", "shared"])
def test_every_law_converges_on_a_real_table_that_used_to_stall(law):
    """The Marin comma ladder below 1e20 FLOP (tests/data/README.md): the Kaplan law's chains
    stalled there (R-hat 1.27, 9 divergences) before the sampling coordinates of models.py."""
    from pathlib import Path

    runs = bs.load_runs(Path(__file__).parent / "data" / "marin_comma_below_1e20.csv")
    d = bs.diagnostics(bs.fit(runs, bs.FitConfig(law=law), quiet=True))
    assert d["max_r_hat"] <= 1.01 and d["divergences"] == 0, d


@pytest.mark.slow
def test_gross_outliers_barely_move_the_default_allocation(chinchilla_runs):
    """5% gross outliers (diverged runs at 1.5-2.5x the loss; runs with N given in thousands) added
    to the Chinchilla table move the averaged posterior's N*(5.88e23) median by less than one
    posterior sd."""
    import pandas as pd

    rng = np.random.default_rng(5)
    base = chinchilla_runs[["N", "D", "loss"]].reset_index(drop=True)
    k = round(0.05 * len(base))
    bad = base.sample(k, random_state=5).reset_index(drop=True)
    half = k // 2
    bad.loc[: half - 1, "loss"] *= rng.uniform(1.5, 2.5, half)  # diverged runs
    bad.loc[half:, "N"] /= 1000.0  # N in thousands of parameters
    dirty = pd.concat([base, bad], ignore_index=True)
    cfg = bs.FitConfig(seed=1)
    clean_opt = bs.optimal(bs.fit(bs.load_runs(base), cfg, quiet=True), 5.88e23)[0]["N_opt"]
    dirty_opt = bs.optimal(bs.fit(bs.load_runs(dirty), cfg, quiet=True), 5.88e23)[0]["N_opt"]
    assert abs(dirty_opt["q50"] - clean_opt["q50"]) < clean_opt["sd"], (clean_opt, dirty_opt)


@pytest.mark.slow
def test_nuts_takes_few_steps_per_draw_and_hands_out_unscaled_adaptation(chinchilla_fit, chinchilla_runs, monkeypatch):
    """The adapted mass matches the posterior's scales. NumPyro's absolute mass regulariser once
    swamped the variance of the log loss at the pivot (sd 5e-4): step size 0.1 and 32 leapfrog
    steps per draw on these rows; with the sampling coordinates scaled (sampler.COORD_SCALE)
    about 6. What leaves the sampler for a warm start is in the model's own coordinates: the
    adapted inverse mass is the draws' covariance, not COORD_SCALE**2 times it."""
    from bayescale import inference
    from bayescale.models import to_sampling

    steps = chinchilla_fit[0].sample_stats["n_steps"].values
    assert steps.mean() <= 10, steps.mean()

    captured = {}
    original = inference.sample_law

    def capture(*args, **kwargs):
        captured["draws"] = original(*args, **kwargs)
        return captured["draws"]

    monkeypatch.setattr(inference, "sample_law", capture)
    bs.fit(chinchilla_runs, bs.FitConfig(law="chinchilla", warmup=500, draws=500), quiet=True)
    d = captured["draws"]
    sites = {k: d.samples[k] for k in ("E", "log_A_pivot", "log_B_pivot", "alpha", "beta", "sigma")}
    z = np.asarray(to_sampling("chinchilla", sites))  # (chains, draws, 6)
    for c in range(z.shape[0]):
        ratio = np.diag(d.adapted.inverse_mass_matrix[c]) / np.var(z[c], axis=0)
        assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio  # within Monte Carlo error of the adaptation
        assert np.all(np.abs(d.adapted.position[c] - z[c].mean(axis=0)) < 5 * z[c].std(axis=0))
