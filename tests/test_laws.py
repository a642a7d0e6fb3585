"""Laws and compute-optimal allocations: closed forms against brute force and a fine grid."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from numpy.testing import assert_allclose

from bayescale import laws

HOFFMANN = {"E": 1.69337, "A": 406.401, "B": 410.723, "alpha": 0.33917, "beta": 0.28491}
KAPLAN = {"E": 1.7, "N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
BUDGETS = np.array([1e18, 5.88e23, 1e26])


def test_chinchilla_loss_matches_formula():
    N, D = 7e10, 1.4e12
    want = 1.69337 + 406.401 / N**0.33917 + 410.723 / D**0.28491
    assert_allclose(float(laws.chinchilla_loss(HOFFMANN, N, D)), want, rtol=1e-12)


def test_kaplan_loss_matches_formula():
    N, D = 1e9, 2e10
    p = KAPLAN
    want = p["E"] + ((p["N_c"] / N) ** (p["alpha_N"] / p["alpha_D"]) + p["D_c"] / D) ** p["alpha_D"]
    assert_allclose(float(laws.kaplan_loss(p, N, D)), want, rtol=1e-12)


def test_chinchilla_closed_form_equals_brute_force_minimisation():
    closed = np.asarray(laws.chinchilla_optimal_N(HOFFMANN, BUDGETS))
    numeric = np.asarray(laws.numerical_optimal_N("chinchilla", HOFFMANN, BUDGETS))
    assert_allclose(closed, numeric, rtol=1e-6)


def test_chinchilla_closed_form_is_a_minimum_on_a_grid():
    # brute force: the best of 200001 log-spaced N along the iso-compute line
    C = 5.88e23
    N = np.exp(np.linspace(np.log(1e9), np.log(1e13), 200_001))
    L = np.asarray(laws.chinchilla_loss(HOFFMANN, N, C / (6 * N)))
    assert_allclose(float(laws.chinchilla_optimal_N(HOFFMANN, C)), N[np.argmin(L)], rtol=5e-5)


def test_hoffmann_values_give_their_published_allocation():
    # Hoffmann et al.'s Approach 3 exponent a = beta/(alpha+beta) = 0.4565 ("N_opt ∝ C^0.46")
    a, b = laws.chinchilla_exponents(HOFFMANN)
    assert_allclose(float(a), 0.2849083 / (0.33917084 + 0.2849083), rtol=1e-5)
    assert_allclose(float(a + b), 1.0, rtol=1e-12)


def test_kaplan_numerical_solution_against_fine_grid():
    for C in BUDGETS:
        numeric = float(laws.numerical_optimal_N("kaplan", KAPLAN, C))
        N = np.exp(np.linspace(np.log(numeric) - 3, np.log(numeric) + 3, 400_001))
        L = np.asarray(laws.kaplan_loss(KAPLAN, N, C / (6 * N)))
        grid_best = N[np.argmin(L)]
        assert_allclose(numeric, grid_best, rtol=2e-5)  # grid spacing is 1.5e-5 in log N
        assert_allclose(float(laws.kaplan_optimal_N(KAPLAN, C)), numeric, rtol=1e-6)


def test_kaplan_exponent_a():
    a, _ = laws.kaplan_exponents(KAPLAN)
    # N* ∝ C^(alpha_D / (alpha_N + alpha_D)): check by finite difference of the closed form
    n1, n2 = (float(laws.kaplan_optimal_N(KAPLAN, c)) for c in (1e20, 1e24))
    assert_allclose(np.log(n2 / n1) / np.log(1e4), float(a), rtol=1e-9)


def test_compute_optimal_broadcasts_over_draws_and_budgets():
    draws = {k: jnp.full((7,), v) for k, v in HOFFMANN.items()}
    out = laws.compute_optimal("chinchilla", laws.broadcast_draws(draws), jnp.asarray(BUDGETS)[None, :])
    assert out["N_opt"].shape == (7, 3)
    assert_allclose(np.asarray(6 * out["N_opt"] * out["D_opt"]), np.broadcast_to(BUDGETS, (7, 3)), rtol=1e-12)
    assert_allclose(np.asarray(out["tokens_per_param"]), np.asarray(out["D_opt"] / out["N_opt"]), rtol=1e-12)
