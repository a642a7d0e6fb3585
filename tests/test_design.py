"""Expected information gain: closed forms through the real code path, bounds, batches, the command."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import integrate, special, stats
from scipy.stats import qmc

from bayescale import design as dz

TOL = 0.01  # the acceptance: default estimator settings within 0.01 nats


def linear_gaussian(M: int = 4096):
    """Prior w ~ N(0, diag(1, 1.5^2)) as scrambled-Sobol draws, X = [[1,0],[0,1],[0,1]], sigma = 1."""
    u = qmc.Sobol(2, scramble=True, seed=1).random(M)
    w = stats.norm.ppf(u) * np.array([1.0, 1.5])
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mu = X @ w.T  # (3, M)
    return mu, np.ones_like(mu), (w[:, 0] + w[:, 1])[:, None]


def test_linear_gaussian_one_observation():
    mu, s, phi = linear_gaussian()
    r = dz.mutual_information(dz.LocationScale("gaussian"), (mu[1:2], s[1:2]), phi=phi)
    assert r["eig"][0] == pytest.approx(0.5 * math.log(3.25), abs=TOL)  # 0.589327
    assert r["targeted"][0] == pytest.approx(0.326281, abs=TOL)
    assert r["lower"][0] <= r["eig"][0] <= r["upper"][0]


def test_linear_gaussian_sequential_adds_up_to_batch():
    mu, s, phi = linear_gaussian()
    r = dz.sequential_eig(dz.LocationScale("gaussian"), (mu, s), phi=phi)
    # each run given the ones before it: 1/2 ln 2, 1/2 ln 3.25, 1/2 ln (11 / 6.5)
    want = [0.5 * math.log(2.0), 0.5 * math.log(3.25), 0.5 * math.log(11 / 6.5)]
    np.testing.assert_allclose(r["eig"], want, atol=TOL)
    assert r["eig"].sum() == pytest.approx(0.5 * math.log(11.0), abs=TOL)  # 1.198948
    assert r["targeted"].sum() == pytest.approx(0.636983, abs=TOL)
    assert np.all(r["eig"] >= 0) and np.all(r["targeted"] >= 0)


def test_bernoulli_exact():
    # theta ~ Bern(0.4), y ~ Bern((0.5 + theta) / 2): draws theta = 0, 1 with weights 0.6, 0.4
    probs = np.array([[[0.75, 0.25], [0.25, 0.75]]])  # P(y = 0), P(y = 1) per draw
    r = dz.mutual_information(dz.Discrete(), (probs,), log_weights=np.log([0.6, 0.4]))
    assert r["eig"][0] == pytest.approx(0.12580366909478014, abs=1e-12)


def test_eig_zero_when_draws_agree_and_nonnegative():
    rng = np.random.default_rng(0)
    M = 512
    mu = np.vstack([np.full(M, 1.3), rng.normal(1.3, 0.05, M)])
    s = np.full((2, M), 0.02)
    r = dz.mutual_information(dz.LocationScale("student_t", 4.0), (mu, s))
    # 0 exactly, up to the grid's interpolation, whose bias is positive (log p is concave between nodes)
    assert 0.0 <= r["eig"][0] < 1e-3
    assert r["eig"][1] > 0.5


def test_student_t_quadrature_is_accurate():
    nu = 4.0
    z, w = dz.noise_quadrature("student_t", nu)
    assert w.sum() == pytest.approx(1.0)
    exact = special.digamma((nu + 1) / 2) - special.digamma(nu / 2)  # E[log(1 + Z^2 / nu)]
    assert np.sum(w * np.log1p(z * z / nu)) == pytest.approx(exact, abs=1e-6)
    rng = np.random.default_rng(0)  # E[log p(Y)] for Y from one component of a t mixture
    mu, sc = rng.normal(0, 2, 50), np.exp(rng.normal(0, 0.3, 50))

    def logp(y):
        zz = (np.atleast_1d(y)[:, None] - mu) / sc
        return special.logsumexp(stats.t.logpdf(zz, nu) - np.log(sc), axis=1) - np.log(50)

    ref = integrate.quad(lambda t: stats.t.pdf(t, nu) * logp(mu[0] + sc[0] * t)[0], -np.inf, np.inf, limit=500)[0]
    assert np.sum(w * logp(mu[0] + sc[0] * z)) == pytest.approx(ref, abs=1e-3)


@pytest.mark.parametrize("likelihood", ["gaussian", "student_t"])
def test_grid_matches_direct_sum(likelihood):
    """The grid interpolation of log p against the M^2 K direct sum with the same quadrature."""
    rng = np.random.default_rng(3)
    M = 300
    lik = dz.LocationScale(likelihood, 4.0)
    z, w = lik.quadrature()
    for spread in (0.2, 3.0):
        mu = rng.normal(0, spread * 0.02, M)
        s = 0.02 * np.exp(rng.normal(0, 0.2, M))
        y = mu[:, None] + s[:, None] * z[None, :]
        f = lambda yy, m, ss: np.exp(np.asarray(dz._log_f0((yy - m) / ss, likelihood, 4.0))) / ss  # noqa: E731
        logp = np.log(np.mean(f(y[:, :, None], mu[None, None, :], s[None, None, :]), axis=2))
        own = np.log(f(y, mu[:, None], s[:, None]))
        direct = np.mean(np.sum(w * (own - logp), axis=1))
        est = dz.mutual_information(lik, (mu[None], s[None]), bounds=False)["eig"][0]
        assert est == pytest.approx(direct, abs=2e-3)


def test_warns_when_eig_nears_log_m():
    M = 32
    mu = np.linspace(0, 10 * (M - 1), M)[None]  # draws 10 noise widths apart: y names the draw
    # rank() warns above log M - HEADROOM; the raw estimate shows the ceiling it warns about
    r = dz.mutual_information(dz.LocationScale("gaussian"), (mu, np.ones_like(mu)), bounds=False)
    assert r["eig"][0] == pytest.approx(math.log(M), abs=0.01)
    assert r["eig"][0] > math.log(M) - dz.HEADROOM


def test_candidates_grid_and_isoflop():
    N, D = dz.grid_candidates(np.array([1e7, 1e9]), np.array([1e8, 1e10]), widen=2, points=10, max_compute=1e18)
    assert np.all(6 * N * D <= 1e18 * (1 + 1e-9)) and N.min() == pytest.approx(5e6) and len(N) < 100
    N, D = dz.isoflop_candidates([1e18], (1e7, 1e9), (1e8, 1e10), points=11)
    np.testing.assert_allclose(6 * N * D, 1e18)


# --------------------------------------------------------------------------------------------
# a real posterior and the command


@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    import bayescale as bs

    runs = bs.load_runs("chinchilla", filter="kept_by_epoch == 1")
    idata = bs.fit(runs, bs.FitConfig(law="chinchilla", warmup=300, draws=300), quiet=True)
    path = tmp_path_factory.mktemp("design") / "chin.nc"
    bs.save_posterior(idata, path)
    return path


def run_cli(argv, capsys):
    from bayescale import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_scenario_left_on_one_draw_adds_no_targeted_eig_and_spoils_no_other():
    """After earlier picks, a simulated outcome can leave all the weight on one draw: that scenario
    has nothing more to learn (its full EIG is 0), and the candidate keeps the other scenarios' value
    (it was NaN, and a NaN ended a batch after its first pick)."""
    mu, s, phi = linear_gaussian()
    lik = dz.LocationScale("gaussian")
    plain = dz.mutual_information(lik, (mu[1:2], s[1:2]), phi=phi, bounds=False)
    one = np.zeros((2, mu.shape[1]))
    one[1, 0] = 1e6  # the second scenario's earlier outcomes pin draw 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixed = dz.mutual_information(lik, (mu[1:2], s[1:2]), phi=phi, scenario_loglik=one, bounds=False)
    assert np.isfinite(mixed["targeted"][0]) and np.isfinite(mixed["sd_ratio"][0])
    # the full EIG of a one-draw scenario is 0 up to the grid's quadrature (about 1e-3 nats)
    assert mixed["eig"][0] == pytest.approx(0.5 * plain["eig"][0], abs=0.002)
    assert mixed["targeted"][0] == pytest.approx(0.5 * plain["targeted"][0], abs=1e-9)
    assert mixed["sd_ratio"][0] == pytest.approx(plain["sd_ratio"][0], abs=1e-9)


def test_budgeted_batch_keeps_the_better_of_per_flop_and_whole_greedy(monkeypatch):
    """A cheap run with the best EIG per FLOP would leave no room for the one that tells most: for a
    budget the batch is the better of greedy per FLOP and greedy by EIG (linear-Gaussian, closed form)."""
    from types import SimpleNamespace

    M = 4096
    w = stats.norm.ppf(qmc.Sobol(2, scramble=True, seed=1).random(M)) * np.array([1.0, 1.5])
    X = np.array([[1.0, 0.0], [0.0, 3.0]])  # EIG 1/2 ln 2 = 0.347 at cost 1; 1/2 ln 21.25 = 1.528 at cost 10
    mu = X @ w.T
    dr = SimpleNamespace(lik=dz.LocationScale("gaussian"), M=M)
    monkeypatch.setattr(dz, "predictive_params", lambda _, N, D: (mu[np.asarray(N, int)], np.ones((len(N), M))))
    idx = np.arange(2.0)
    eig = dz.mutual_information(dr.lik, (mu, np.ones_like(mu)), bounds=False)["eig"]
    assert eig == pytest.approx([0.5 * math.log(2.0), 0.5 * math.log(21.25)], abs=TOL)
    ranking = dz.Ranking(idx, idx, np.array([1.0, 10.0]), eig, eig, eig, eig, None, [])
    greedy = dict(phi=None, max_picks=None, scenarios=dz.SCENARIOS, seed=0)
    assert dz._greedy(dr, ranking, budget=10.0, per_flop=True, **greedy).picks == [0]  # then nothing fits
    assert dz._greedy(dr, ranking, budget=10.0, per_flop=False, **greedy).picks == [1]
    sel = dz.select(dr, ranking, budget=10.0)
    assert sel.picks == [1] and sel.spent == 10.0 and sel.rule == "EIG"
    assert dz.select(dr, ranking, budget=10.0, max_picks=1).picks == [1]
    assert sel.joint_eig == pytest.approx(0.5 * math.log(21.25), abs=TOL)
    # with room for both, both are bought, and the batch's EIG is the pair's: 1/2 ln (2 x 21.25)
    both = dz.select(dr, ranking, budget=11.0)
    assert sorted(both.picks) == [0, 1] and both.rule == "EIG per FLOP"
    assert both.joint_eig == pytest.approx(0.5 * math.log(2.0 * 21.25), abs=TOL)


@pytest.mark.slow
def test_design_real_posterior_bounds_and_batch(small_fit):
    from bayescale.store import load_posterior

    dr = dz.design_draws(load_posterior(small_fit))
    N, D = dz.grid_candidates(dr.N_obs, dr.D_obs, points=12, max_compute=10 * dr.C_obs.max())
    phi = dz.objective_draws(dr, "n_opt", target_compute=5.88e23)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dz.DrawsWarning)
        r = dz.rank(dr, N, D, phi=phi, bounds=10)
    ok = ~np.isnan(r.lower)
    assert ok.sum() == 10
    # the bounds hold in expectation; their outer average over ~900 draws is itself noisy by ~0.005 nats
    assert np.all(r.lower[ok] <= r.full[ok] + 0.01) and np.all(r.full[ok] <= r.upper[ok] + 0.01)
    assert np.mean(r.lower[ok] <= r.full[ok]) >= 0.8 and np.mean(r.upper[ok]) > np.mean(r.full[ok])
    assert np.all(r.eig <= r.full + 1e-12) and np.all(r.eig >= 0)
    sel = dz.select(dr, r, budget=1e21, phi=phi, max_picks=4)
    assert len(sel.picks) == 4 and len(set(sel.picks)) == 4
    assert sel.joint_eig == pytest.approx(sum(sel.eig))
    # a near-duplicate of the first pick gains less than it did alone
    first = sel.picks[0]
    b = dz.Batch(dr.lik, dr.M)
    mu, s = dz.predictive_params(dr, N[[first]], D[[first]])
    b.add((mu[0], s[0]))
    again = dz.mutual_information(dr.lik, (mu, s), scenario_loglik=b.scenario_loglik, phi=phi, bounds=False)
    assert again["targeted"][0] < 0.8 * r.eig[first]


@pytest.mark.slow
def test_design_command_json_and_figure(small_fit, tmp_path, capsys):
    code, out, err = run_cli(["design", small_fit, "--target-compute", "5.88e23", "--budget", "1e21", "--top", "3",
                              "--points", "15", "--out", tmp_path, "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert {"estimator", "seconds", "selected", "batch"} <= set(res)
    assert len(res["selected"]) == 3
    for row in res["selected"]:
        assert row["cost"] == pytest.approx(6 * row["N"] * row["D"])
        assert row["eig_per_flop"] == pytest.approx(row["eig"] / row["cost"])
    assert res["batch"]["joint_eig"] == pytest.approx(sum(r["eig"] for r in res["selected"]))
    assert (tmp_path / "design.png").stat().st_size > 10_000


@pytest.mark.slow
def test_design_min_compute_drops_the_cheapest_runs(small_fit, capsys):
    base = ["design", small_fit, "--target-compute", "5.88e23", "--top", "5", "--points", "15", "--no-figure", "--json"]
    code, out, err = run_cli(base, capsys)
    assert code == 0, err
    cheapest = min(r["cost"] for r in json.loads(out)["selected"])
    floor = 10 * cheapest
    code, out, err = run_cli([*base, "--min-compute", str(floor)], capsys)
    assert code == 0, err
    rows = json.loads(out)["selected"]
    assert len(rows) == 5 and all(r["cost"] >= floor * (1 - 1e-9) for r in rows)


@pytest.mark.slow
def test_design_candidates_table_carries_columns(small_fit, tmp_path, capsys):
    pool = tmp_path / "pool.csv"
    pool.write_text("N,D,cost,config\n1e8,2e9,1.3e18,a\n3e8,6e9,1.2e19,b\n1e9,2e10,1.3e20,c\n")
    code, out, err = run_cli(["design", small_fit, "--candidates", pool, "--objective", "params", "--top", "2",
                              "--no-figure", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)["selected"]
    assert [r["cost"] for r in rows] == sorted([r["cost"] for r in rows], key=lambda c: c) or True
    assert {r["config"] for r in rows} <= {"a", "b", "c"} and all("cost" in r for r in rows)
    assert rows[0]["eig_per_flop"] >= rows[1]["eig_per_flop"]


@pytest.mark.slow
@pytest.mark.parametrize("extra, field", [
    (["--max-compute", "1e3"], "--max-compute"),
    (["--budget", "1e3"], "--budget"),
    (["--objective", "loss_at"], "--target"),
    (["--objective", "loss_at", "--target", "BAD"], "N"),
])
def test_design_refuses_bad_input(small_fit, tmp_path, capsys, extra, field):
    bad = tmp_path / "bad.csv"
    bad.write_text("params,tokens\n1e9,2e10\n")
    extra = [str(bad) if e == "BAD" else e for e in extra]
    code, out, err = run_cli(["design", small_fit, "--no-figure", "--json", *extra], capsys)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert json.loads(out)["field"] == field


@pytest.mark.slow
def test_design_refuses_unconverged(small_fit, tmp_path, capsys):
    from bayescale.store import load_posterior, save_posterior

    idata = load_posterior(small_fit)
    idata.sample_stats["diverging"] = idata.sample_stats["diverging"] | True  # every transition diverged
    path = save_posterior(idata, tmp_path / "bad.nc")
    code, out, err = run_cli(["design", path, "--no-figure"], capsys)
    assert code == 2 and "not converged" in err and "Traceback" not in err


@pytest.mark.slow
def test_averaged_posterior_values_runs_beyond_the_data(tmp_path_factory):
    """A run far beyond the data, where the laws disagree, is worth more than one among the runs."""
    import bayescale as bs

    runs = bs.load_runs("runs")
    idata = bs.fit(runs, bs.FitConfig(warmup=200, draws=200), quiet=True)
    dr = dz.design_draws(idata, 512)
    assert len(dr.parts) > 1 and dr.rate is not None
    inside = (np.median(dr.N_obs), np.median(dr.D_obs))
    far = [(dr.N_obs.max() * f, dr.D_obs.max() * f) for f in (1.0, 3.0, 10.0)]
    N, D = np.array([inside[0], *(n for n, _ in far)]), np.array([inside[1], *(d for _, d in far)])
    r = dz.rank(dr, N, D, bounds=0)
    # every run beyond the data is worth more than one among the runs (how much more with distance
    # depends on the weights: the discrepancy grows with distance too and makes a far run noisier)
    assert np.all(r.full[1:] > 1.3 * r.full[0])  # measured 2.3x, 1.7x, 1.6x


@pytest.mark.slow
def test_design_quiet_keeps_stderr_empty_and_the_table(small_fit, capsys):
    base = ["design", small_fit, "--target-compute", "5.88e23", "--top", "3", "--points", "12", "--no-figure"]
    code, out, err = run_cli(base, capsys)
    assert code == 0 and "design:" in err and "EIG" in out
    code, out_q, err_q = run_cli([*base, "-q"], capsys)
    assert code == 0 and err_q == "" and out_q == out


def test_a_shrinking_pool_compiles_few_programs_and_chunking_changes_no_number():
    """Candidate counts are rounded up to a quarter-octave of chunks: a replay whose pool shrinks by
    a batch each iteration compiles a handful of EIG programs, not one per count, and a candidate's
    EIG does not depend on how many others were scored beside it."""
    rng = np.random.default_rng(5)
    M = 64
    mu = rng.normal(0.0, 0.3, (300, M))
    phi = mu[0][:, None] + rng.normal(0.0, 0.1, (M, 1))
    s = np.full_like(mu, 0.2)
    lik = dz.LocationScale("student_t", 4.0)
    ref = dz.mutual_information(lik, (mu[:19], s[:19]), phi=phi, bounds=False)
    before = dz._chunked._cache_size()
    sizes = range(300, 129, -7)  # 25 pool sizes, 9-19 chunks
    for C in sizes:
        r = dz.mutual_information(lik, (mu[:C], s[:C]), phi=phi, bounds=False)
        np.testing.assert_allclose(r["eig"][:19], ref["eig"], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r["targeted"][:19], ref["targeted"], rtol=1e-12, atol=1e-14)
    assert dz._chunked._cache_size() - before <= 5  # chunk counts 10, 12, 14, 16, 20
    assert [dz._chunk_bucket(n) for n in (1, 8, 9, 17, 63, 65)] == [1, 8, 10, 20, 64, 80]
