"""Bucketed padding of the jitted per-run functions, and releasing compiled programs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bayescale import averaging, inference, sampler
from bayescale.models import Anchors, resolve_priors


def _draws(law: str, anchors: Anchors, groups: int = 0) -> dict[str, np.ndarray]:
    s = inference.prior_draws(law, anchors, resolve_priors(law, anchors), 64, jax.random.PRNGKey(3))
    if groups:  # per-group sites, as a grouped posterior keeps them: (draws, groups)
        rng = np.random.default_rng(0)
        for k in ("E", "alpha", "beta", "log_A_pivot", "log_B_pivot", "sigma"):
            s["g_" + k] = s[k][:, None] * np.exp(0.05 * rng.standard_normal((64, groups)))
    return s


def _table(n: int, seed: int = 1) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    log_N = rng.uniform(np.log(1e7), np.log(1e10), n)
    log_D = log_N + rng.uniform(np.log(2), np.log(200), n)
    log_y = np.log(1.8 + 480 * np.exp(-0.34 * log_N) + 2000 * np.exp(-0.37 * log_D)) + 0.01 * rng.standard_normal(n)
    return log_N, log_D, log_y


@pytest.mark.parametrize("n", [1, 5, 11, 37])
def test_padded_per_run_functions_give_the_unpadded_numbers(n):
    log_N, log_D, log_y = _table(n)
    anchors = Anchors(log_N0=float(log_N.mean()), log_D0=float(log_D.mean()), loss_min=1.9, loss_median=2.5)
    se = np.full(n, 0.004)
    group = np.arange(n) % 3
    for groups, g in ((0, None), (3, group)):
        s = _draws("chinchilla", anchors, groups)
        th = inference._per_run("chinchilla", s, g)
        ref_mean = np.asarray(inference._log_mean(th, log_N - anchors.log_N0, log_D - anchors.log_D0, law="chinchilla"))
        got_mean = inference.log_mean_draws("chinchilla", s, log_N, log_D, anchors, group=g)
        np.testing.assert_allclose(got_mean, ref_mean, rtol=1e-12, atol=0)
        ref_ll = np.asarray(inference._log_lik(th, log_N - anchors.log_N0, log_D - anchors.log_D0, log_y, se,
                                               law="chinchilla", likelihood="student_t", nu=4.0))
        got_ll = inference.pointwise_log_lik("chinchilla", s, log_N, log_D, log_y, anchors=anchors,
                                             likelihood="student_t", nu=4.0, group=g, se=se)
        assert got_ll.shape == (64, n)
        np.testing.assert_allclose(got_ll, ref_ll, rtol=1e-12, atol=0)

    mu = ref_mean
    scale = np.stack([np.full(n, 0.01), np.linspace(0.0, 0.05, n)])
    sigma = np.abs(s["sigma"])
    import jax.numpy as jnp

    lw = jnp.full(64, -np.log(64.0))
    ref = np.asarray(averaging._log_density(jnp.asarray(log_y), jnp.asarray(mu), jnp.asarray(sigma[:, None]),
                                            jnp.asarray(scale), lw, likelihood="student_t", nu=4.0))
    got = averaging.pointwise_log_density(log_y, mu, sigma, scale, likelihood="student_t", nu=4.0)
    assert got.shape == (2, n)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    one = averaging.pointwise_log_density(log_y, mu, sigma, scale[1], likelihood="student_t", nu=4.0)
    np.testing.assert_allclose(one, ref[1], rtol=1e-12, atol=0)


def test_a_growing_table_compiles_once_per_bucket():
    """Sizes 17..32 share one bucket, so the per-run log likelihood compiles once for all of them
    (before padding it compiled once per size: a design loop's refits leaked memory mappings)."""
    log_N, log_D, log_y = _table(32)
    anchors = Anchors(log_N0=float(log_N.mean()), log_D0=float(log_D.mean()), loss_min=1.9, loss_median=2.5)
    s = _draws("chinchilla", anchors)
    assert sampler.bucket(17) == sampler.bucket(32)
    inference.pointwise_log_lik("chinchilla", s, log_N[:17], log_D[:17], log_y[:17], anchors=anchors,
                                likelihood="gaussian", nu=4.0)
    before = inference._log_lik._cache_size()
    for n in range(18, 33):
        inference.pointwise_log_lik("chinchilla", s, log_N[:n], log_D[:n], log_y[:n], anchors=anchors,
                                    likelihood="gaussian", nu=4.0)
    assert inference._log_lik._cache_size() == before


def test_pad_runs_repeats_the_last_run_and_leaves_broadcast_axes():
    x = np.arange(10.0).reshape(2, 5)
    p = sampler.pad_runs(x, 5)
    assert p.shape == (2, sampler.bucket(5))
    np.testing.assert_array_equal(p[:, :5], x)
    np.testing.assert_array_equal(p[:, 5:], np.repeat(x[:, -1:], p.shape[1] - 5, axis=1))
    col = np.ones((2, 1))
    assert sampler.pad_runs(col, 5) is not None and sampler.pad_runs(col, 5).shape == (2, 1)


@pytest.mark.slow
@pytest.mark.skipif(sampler.maps_in_use() is None, reason="memory mappings are counted from /proc (Linux)")
def test_release_compiled_frees_mappings_and_a_later_fit_still_works(chinchilla_runs):
    from bayescale.inference import FitConfig, fit

    cfg = FitConfig(law="chinchilla", warmup=100, draws=100, chains=2, seed=0)
    sub = chinchilla_runs.iloc[::8]
    first = fit(sub, cfg, quiet=True)
    assert sampler._COMPILED
    assert not sampler.release_compiled(threshold=1.0)  # under the limit: nothing dropped
    assert sampler._COMPILED
    before = sampler.maps_in_use()[0]
    assert sampler.release_compiled(threshold=0.0)
    assert not sampler._COMPILED
    assert sampler.maps_in_use()[0] < before
    again = fit(sub, cfg, quiet=True)  # recompiles; same seed, same numbers
    np.testing.assert_allclose(again.posterior["alpha"].values, first.posterior["alpha"].values, rtol=1e-10)
