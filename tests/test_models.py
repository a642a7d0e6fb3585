"""The models' sampling coordinates: an exact, invertible change of variables."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

from bayescale import models
from bayescale.laws import LAWS


@pytest.mark.parametrize("law", LAWS)
def test_sampling_coordinates_round_trip_and_jacobian(law):
    k = len(models.SAMPLING_COORDS[law])
    rng = np.random.default_rng(0)
    for _ in range(5):
        u = jnp.asarray(rng.normal(size=k))
        th = models.from_sampling(law, u)
        assert_allclose(np.asarray(models.to_sampling(law, th)), np.asarray(u), atol=1e-12)
        J = jax.jacfwd(lambda v: jnp.stack([models.from_sampling(law, v)[s] for s in models.SAMPLED_SITES[law]]))(u)
        assert_allclose(float(jnp.linalg.slogdet(J)[1]), float(models.log_abs_det_jacobian(law, u)), atol=1e-10)


@pytest.mark.parametrize("law", LAWS)
def test_sampling_coordinates_keep_the_law(law):
    """The log-mean from sampling coordinates equals the law's own loss at the natural parameters."""
    from bayescale.laws import loss

    anchors = models.Anchors(log_N0=np.log(1e9), log_D0=np.log(2e10), loss_min=2.0, loss_median=2.5)
    rng = np.random.default_rng(1)
    u = jnp.asarray(rng.normal(size=len(models.SAMPLING_COORDS[law])) * 0.5)
    th = models.from_sampling(law, u)
    nat = models.natural_params(law, th, anchors)
    N, D = np.array([1e8, 1e9, 1e11]), np.array([1e9, 3e10, 1e12])
    lm = models.log_mean(law, th, np.log(N) - anchors.log_N0, np.log(D) - anchors.log_D0)
    assert_allclose(np.exp(np.asarray(lm)), np.asarray(loss(law, nat, N, D)), rtol=1e-10)
