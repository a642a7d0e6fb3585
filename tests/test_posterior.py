"""Posterior of the compute-optimal allocation and the posterior predictive."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

import bayescale as bs
from bayescale.posterior import optimal_draws, param_draws, predict_draws


def test_optimal_at_chinchilla_budget(chinchilla_fit):
    idata, _ = chinchilla_fit
    (res,) = bs.optimal(idata, 5.88e23)
    # Epoch's point estimate implies N* ~ 73B, D* ~ 1.34T, ~18 tokens/param (shared/data README)
    assert res["N_opt"]["q05"] < 7.3e10 < res["N_opt"]["q95"]
    assert res["D_opt"]["q05"] < 1.34e12 < res["D_opt"]["q95"]
    assert 10 < res["tokens_per_param"]["q50"] < 30
    assert res["loss"]["q05"] < res["loss"]["q50"] < res["loss"]["q95"]


def test_optimal_draws_obey_budget_and_closed_form(chinchilla_fit):
    idata, _ = chinchilla_fit
    C = np.array([1e21, 1e24])
    dr = optimal_draws(idata, C)
    assert_allclose(6 * dr["N_opt"] * dr["D_opt"], np.broadcast_to(C, dr["N_opt"].shape), rtol=1e-10)
    p = param_draws(idata)
    a = p["beta"] / (p["alpha"] + p["beta"])
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    assert_allclose(dr["N_opt"][:, 1], G * (1e24 / 6) ** a, rtol=1e-10)


def test_uncertainty_grows_with_extrapolation(chinchilla_fit):
    idata, _ = chinchilla_fit
    res = bs.optimal(idata, [1e21, 1e24, 1e27])
    rel = [r["N_opt"]["sd"] / r["N_opt"]["mean"] for r in res]
    assert rel[0] < rel[1] < rel[2]


def test_predictive_includes_noise(chinchilla_fit, chinchilla_runs):
    idata, _ = chinchilla_fit
    N, D = chinchilla_runs["N"].to_numpy(), chinchilla_runs["D"].to_numpy()
    with_noise = predict_draws(idata, N, D, noise=True)
    mean_only = predict_draws(idata, N, D, noise=False)
    assert np.all(with_noise.std(0) > mean_only.std(0))
    # 90% predictive intervals cover about 90% of the observed runs
    lo, hi = np.quantile(with_noise, [0.05, 0.95], axis=0)
    y = chinchilla_runs["loss"].to_numpy()
    coverage = np.mean((lo <= y) & (y <= hi))
    assert 0.8 <= coverage <= 0.98, coverage


def test_predict_summary_shape(chinchilla_fit):
    out = bs.predict(chinchilla_fit[0], N=[7e10, 1e9], D=[1.4e12, 2e10])
    assert [r["N"] for r in out] == [7e10, 1e9]
    assert out[0]["q05"] < out[0]["q50"] < out[0]["q95"]
    assert out[1]["q50"] > out[0]["q50"]  # a smaller, shorter run has higher loss
