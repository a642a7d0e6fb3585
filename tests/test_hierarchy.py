"""Grouped (hierarchical) fits: pooling options, the one-group case, parameter recovery, borrowing
strength, a group with no runs, and the commands that work per group."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from numpyro.infer.util import potential_energy

import bayescale as bs
from bayescale.cli import main
from bayescale.errors import InputError
from bayescale.inference import FitConfig, fit
from bayescale.laws import loss
from bayescale.models import (
    GROUP_PARAMS,
    Anchors,
    from_sampling,
    law_model,
    natural_params,
    one_factor,
    prior_forms,
    resolve_pooling,
    resolve_priors,
    to_sampling,
)
from bayescale.store import group_view, groups_of

from .conftest import TRUE_CHINCHILLA, TRUE_KAPLAN

GADRE = Path(__file__).resolve().parents[2] / "shared" / "data" / "gadre2024-overtraining" / "models_loss.csv"


def test_pooling_names_and_modes():
    p = resolve_pooling(3, ("chinchilla", "kaplan"))
    assert all(m == "pooled" for _, m in p.modes) and p.dim("chinchilla") == 6 + 3 * 6
    p = resolve_pooling(3, ("chinchilla",), share=("all",), pool=("alpha",))
    assert p.pooled_names("chinchilla") == ["alpha"] and p.dim("chinchilla") == 1 + 3
    p = resolve_pooling(4, ("kaplan",), separate=("E", "N_c"))
    assert p.pooled_names("kaplan") == ["L0", "alpha_N", "alpha_D", "sigma"]
    assert p.dim("kaplan") == 4 + 4 * 6
    with pytest.raises(InputError, match="unknown parameter 'gamma'"):
        resolve_pooling(3, ("chinchilla",), share=("gamma",))


def _simulate_groups(law: str, truth: dict, n_groups: int, n: int, seed: int, spread: dict,
                     centre: bool = False) -> tuple:
    """Runs of ``n_groups`` groups whose sampling coordinates deviate from ``truth``'s by known
    amounts (``spread`` per coordinate, times a standard normal; with ``centre``, minus their mean,
    so the groups' mean is the truth); returns the table and each group's true natural parameters."""
    r = np.random.default_rng(seed)
    N = np.exp(r.uniform(np.log(1e7), np.log(1e10), n_groups * n))
    D = N * np.exp(r.uniform(np.log(2), np.log(200), n_groups * n))
    anchors = Anchors.from_data(N, D, np.ones_like(N))
    pivots = (anchors.log_N0, anchors.log_D0)
    # the population's sampled sites at these pivots, from the natural parameters
    if law in ("chinchilla", "shared"):
        beta = truth["beta"] if law == "chinchilla" else truth["alpha"]
        th = {"E": truth["E"], "alpha": truth["alpha"], "sigma": 0.01,
              "log_A_pivot": np.log(truth["A"]) - truth["alpha"] * pivots[0],
              "log_B_pivot": np.log(truth["B"]) - beta * pivots[1]}
        if law == "chinchilla":
            th["beta"] = beta
    else:
        ratio = truth["alpha_N"] / truth["alpha_D"]
        th = {"E": truth["E"], "alpha_N": truth["alpha_N"], "alpha_D": truth["alpha_D"], "sigma": 0.01,
              "log_N_term": ratio * (np.log(truth["N_c"]) - pivots[0]),
              "log_D_term": np.log(truth["D_c"]) - pivots[1]}
    u = np.asarray(to_sampling(law, {k: jnp.asarray(v) for k, v in th.items()}))
    names = GROUP_PARAMS[law]
    dev = np.array([[spread.get(p, 0.0) * r.standard_normal() for p in names] for _ in range(n_groups)])
    if centre:
        dev -= dev.mean(axis=0)
    tg = {k: np.asarray(v) for k, v in from_sampling(law, u[None, :] + dev).items()}
    nat = {k: np.asarray(v) for k, v in natural_params(law, tg, pivots).items()}
    group = np.repeat(np.arange(n_groups), n)
    params = [{k: float(v[g]) for k, v in nat.items()} for g in range(n_groups)]
    mu = np.concatenate([np.asarray(loss(law, params[g], N[group == g], D[group == g])) for g in range(n_groups)])
    y = mu * np.exp(0.01 * r.standard_normal(len(mu)))
    runs = bs.load_runs(pd.DataFrame({"N": N, "D": D, "loss": y, "group": [f"g{g}" for g in group]}))
    return runs, params


@pytest.mark.slow
@pytest.mark.parametrize("law,truth", [("chinchilla", TRUE_CHINCHILLA), ("kaplan", TRUE_KAPLAN)])
def test_parameter_recovery(law, truth):
    """Groups simulated around known population values: the exponents of every group and of the
    population, and every group's loss at a held-out point, inside their 90% intervals."""
    expo = ("alpha", "beta") if law == "chinchilla" else ("alpha_N", "alpha_D")
    spread = {"L0": 0.1, expo[0]: 0.08, expo[1]: 0.08}
    runs, params = _simulate_groups(law, truth, 5, 24, 3, spread)
    idata = fit(runs, FitConfig(law=law, seed=1), quiet=True)
    diag = bs.diagnostics(idata)
    assert diag["max_r_hat"] < 1.02 and diag["divergences"] <= 4
    post = idata.posterior
    for k in expo:
        lo, hi = np.quantile(post[k].values, [0.05, 0.95])
        assert lo < truth[k] < hi, (k, lo, truth[k], hi)
    inside = []
    for g, name in enumerate(groups_of(idata)):
        for k in expo:
            lo, hi = np.quantile(post["g_" + k].sel(group=name).values, [0.05, 0.95])
            inside.append(lo < params[g][k] < hi)
        view = group_view(idata, name)
        pred = bs.predict(view, [3e10], [6e11], noise=False)[0]
        true = float(loss(law, params[g], 3e10, 6e11))
        inside.append(pred["q05"] < true < pred["q95"])
    # 15 checks at 90% each: all inside with this seed; at least 13 would be expected by chance
    assert sum(inside) >= 14, inside


def test_centred_coordinates_depend_on_the_law_and_the_number_of_groups():
    """Which coordinates are sampled as the groups' own values (see models.CENTRED): the loss at
    the pivot from 2 groups (8 for the Kaplan law), the shared law's exponent from 16 only."""
    modes = tuple((p, "pooled") for p in GROUP_PARAMS["kaplan"] + GROUP_PARAMS["chinchilla"])
    got = {(law, n): one_factor(n, modes).centred(0, law)
           for law in ("chinchilla", "shared", "kaplan") for n in (2, 3, 8, 15, 16, 24)}
    for n in (2, 3, 8, 15, 16, 24):
        assert got["chinchilla", n] == ("L0",)
        assert got["shared", n] == (("L0", "alpha") if n >= 16 else ("L0",))
        assert got["kaplan", n] == (("L0",) if n >= 8 else ())


def test_centred_exponent_prior_is_normal_around_the_population():
    """16 groups, the shared law: the sampled L0 and alpha columns are the groups' own values
    with a Normal(population, spread) prior; A, B and sigma are standard-normal effects; every
    spread is HalfNormal(TAU_SCALE), sampled on its log scale with the Jacobian."""
    from scipy import stats

    from bayescale.models import TAU_SCALE, group_prior_log_density, group_sites

    law, G = "shared", 16
    names = GROUP_PARAMS[law]
    pooling = one_factor(G, tuple((p, "pooled") for p in names))
    r = np.random.default_rng(2)
    u = r.normal(size=len(names)) * 0.3
    log_tau = np.log(r.uniform(0.05, 0.4, len(names)))
    raw = r.normal(size=(G, len(names)))
    for j in (names.index("L0"), names.index("alpha")):  # own values near the population's
        raw[:, j] = u[j] + np.exp(log_tau[j]) * raw[:, j]
    h = np.concatenate([log_tau, raw.reshape(-1)])
    assert h.size == pooling.dim(law)
    got = float(group_prior_log_density(law, jnp.asarray(h), pooling, jnp.asarray(u)))
    tau = np.exp(log_tau)
    want = sum(stats.halfnorm.logpdf(tau[j], scale=TAU_SCALE[p]) + log_tau[j] for j, p in enumerate(names))
    for j, p in enumerate(names):
        if p in ("L0", "alpha"):
            want += stats.norm.logpdf(raw[:, j], u[j], tau[j]).sum()
        else:
            want += stats.norm.logpdf(raw[:, j]).sum()
    want -= G * len(names) * stats.norm.logpdf(0.0)  # the model drops the normals' constant
    want -= len(names) * np.log(np.sqrt(2 / np.pi))  # ... and the half-normals'
    assert got == pytest.approx(want, rel=1e-10)
    # each group's exponent is its sampled column, and the spread the exponentiated log spread
    sites, spreads, _ = group_sites(law, jnp.asarray(u), jnp.asarray(h), pooling)
    j = names.index("alpha")
    np.testing.assert_allclose(np.log(np.asarray(sites["alpha"])), raw[:, j], rtol=1e-12)
    assert float(spreads["alpha"][0]) == pytest.approx(tau[j], rel=1e-12)


@pytest.mark.slow
def test_shared_law_recovers_sixteen_groups_with_a_centred_exponent():
    """16 simulated groups of the shared-exponent law, exponents spread 0.15 on their log scale
    (Gadre's 24 groups: 0.19), their deviations centred so that the population value is the
    groups' mean: the population exponent and at least 14 of the 16 groups' inside their 90%
    intervals, and the sampler clean."""
    truth = {"E": 1.8, "A": 480.0, "B": 2000.0, "alpha": 0.35}
    runs, params = _simulate_groups("shared", truth, 16, 12, 4, {"L0": 0.1, "alpha": 0.15}, centre=True)
    idata = fit(runs, FitConfig(law="shared", seed=1), quiet=True)
    diag = bs.diagnostics(idata)
    assert diag["max_r_hat"] < 1.02 and diag["divergences"] <= 4, diag
    post = idata.posterior
    lo, hi = np.quantile(post["alpha"].values, [0.05, 0.95])
    assert lo < truth["alpha"] < hi, (lo, hi)
    inside = []
    for name in groups_of(idata):  # names sort as strings: g0, g1, g10, ...
        lo, hi = np.quantile(post["g_alpha"].sel(group=name).values, [0.05, 0.95])
        inside.append(bool(lo < params[int(name[1:])]["alpha"] < hi))
    assert sum(inside) >= 14, inside


@pytest.mark.slow
def test_one_group_is_the_ungrouped_model():
    """With nothing varying across groups, the grouped model's density is the ungrouped one's."""
    r = np.random.default_rng(0)
    lN, lD = np.log(np.exp(r.uniform(16, 23, 20))), np.log(np.exp(r.uniform(20, 26, 20)))
    ly = np.log(2 + r.uniform(0, 1, 20))
    an = Anchors.from_data(np.exp(lN), np.exp(lD), np.exp(ly))
    forms, vals = prior_forms("chinchilla", resolve_priors("chinchilla", an))
    args = (jnp.asarray(lN), jnp.asarray(lD), jnp.asarray(ly), None)
    rest = (jnp.asarray([an.log_N0, an.log_D0]), {k: jnp.asarray(v) for k, v in vals.items()})
    flat = partial(law_model, law="chinchilla", forms=forms)
    grouped = partial(law_model, law="chinchilla", forms=forms,
                      pooling=one_factor(3, tuple((p, "shared") for p in GROUP_PARAMS["chinchilla"])))
    u = jnp.asarray(r.normal(size=6) * 0.3 + np.array([1.0, 0.0, 0.0, -1.2, -1.2, -4.0]))
    a = potential_energy(flat, (*args, None, None, *rest), {}, {"u": u})
    b = potential_energy(grouped, (*args, jnp.asarray(r.integers(0, 3, 20)), None, *rest), {},
                         {"u": u, "h": jnp.zeros(0)})  # nothing varies: no group coordinates
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    # and the measurement error enters as an extra variance: se = 0 changes nothing
    c = potential_energy(flat, (*args, None, jnp.zeros(20), *rest), {}, {"u": u})
    assert float(c) == pytest.approx(float(a), rel=1e-12)
    g = jax.grad(lambda v: potential_energy(flat, (*args, None, jnp.full(20, 0.05), *rest), {}, {"u": v}))(u)
    assert np.all(np.isfinite(np.asarray(g)))


def test_separate_groups_are_sampled_as_their_own_values():
    """One factor: a separate group's coordinates are sampled as its own values (what lets the
    sampler keep the groups' mass diagonal), and the density is each group's own law on its own
    runs times Normal(population value, SEPARATE_SCALE) for each coordinate, the population with
    the law's prior."""
    from bayescale.models import SEPARATE_SCALE

    r = np.random.default_rng(1)
    n, G = 24, 3
    lN, lD = jnp.asarray(r.uniform(16, 23, n)), jnp.asarray(r.uniform(20, 26, n))
    ly = jnp.asarray(np.log(2 + r.uniform(0, 1, n)))
    grp = np.repeat(np.arange(G), n // G)
    an = Anchors.from_data(np.exp(np.asarray(lN)), np.exp(np.asarray(lD)), np.exp(np.asarray(ly)))
    forms, vals = prior_forms("chinchilla", resolve_priors("chinchilla", an))
    rest = (jnp.asarray([an.log_N0, an.log_D0]), {k: jnp.asarray(v) for k, v in vals.items()})
    flat = partial(law_model, law="chinchilla", forms=forms)
    params = GROUP_PARAMS["chinchilla"]
    grouped = partial(law_model, law="chinchilla", forms=forms,
                      pooling=one_factor(G, tuple((p, "separate") for p in params)))
    u = jnp.asarray(r.normal(size=6) * 0.3 + np.array([1.0, 0.0, 0.0, -1.2, -1.2, -4.0]))
    h = u[None, :] + jnp.asarray(r.normal(size=(G, 6)) * 0.3)  # (groups, coordinates)
    got = float(potential_energy(grouped, (lN, lD, ly, None, jnp.asarray(grp), None, *rest), {},
                                 {"u": u, "h": h.reshape(-1)}))

    def pot(v, mask):
        return float(potential_energy(flat, (lN, lD, ly, jnp.asarray(mask), None, None, *rest), {}, {"u": v}))

    want = pot(u, np.zeros(n, bool))  # the population's prior alone
    for g in range(G):  # group g's own law on its own runs: its likelihood without its prior
        want += pot(h[g], grp == g) - pot(h[g], np.zeros(n, bool))
    scale = np.array([SEPARATE_SCALE[p] for p in params])
    want += float(np.sum(0.5 * ((np.asarray(h) - np.asarray(u)) / scale) ** 2))
    assert got == pytest.approx(want, rel=1e-10)


@pytest.fixture(scope="module")
def gadre_c4():
    if not GADRE.exists():
        pytest.skip("the shared Gadre table is not beside the repository")
    return bs.load_runs(GADRE, columns="N=N_params_no_embed,D=D_tokens,loss=loss_c4_val,group=dataset,"
                                      "loss_lo95=loss_lo95_c4_val,loss_hi95=loss_hi95_c4_val")


def _log_width_n_opt(idata, group, C=1e21):
    from bayescale.posterior import optimal_draws

    d = optimal_draws(group_view(idata, group), C)["N_opt"].ravel()
    lo, mid, hi = np.quantile(np.log(d), [0.05, 0.5, 0.95])
    return hi - lo, lo, mid, hi


@pytest.mark.slow
def test_borrowing_strength(gadre_c4):
    """Four runs of one Gadre training set: partial pooling's N*(1e21) is at least 2x narrower (90%,
    log space) than a separate fit of those four, and contains the full-data median."""
    small = gadre_c4[gadre_c4.N < 1e9]
    full = fit(small, FitConfig(law="chinchilla", warmup=500, draws=500), quiet=True)
    _, _, full_mid, _ = _log_width_n_opt(full, "rpj")
    rpj = small[small.group == "rpj"].sort_values("C")
    keep = rpj.iloc[[3, 12, 21, 30]].index  # four runs spread over the ladder
    few = small.drop(index=rpj.index.difference(keep))
    pooled = fit(few, FitConfig(law="chinchilla", warmup=500, draws=500), quiet=True)
    separate = fit(few, FitConfig(law="chinchilla", warmup=500, draws=500, separate=("all",)), quiet=True)
    w_pooled, lo, _, hi = _log_width_n_opt(pooled, "rpj")
    w_separate = _log_width_n_opt(separate, "rpj")[0]
    assert w_separate >= 2 * w_pooled, (w_separate, w_pooled)
    assert lo < full_mid < hi


@pytest.mark.slow
def test_cli_grouped_fit_and_commands(tmp_path, capsys):
    """fit --group with two group columns, then summary, optimal, predict --at (rows in the table's
    order, each under its own group) and --group new, through the CLI."""
    runs, _ = _simulate_groups("chinchilla", TRUE_CHINCHILLA, 3, 14, 5, {"L0": 0.1, "alpha": 0.05})
    k = runs.group.str[1:].astype(int)
    t = runs.assign(dataset=np.where(k < 2, "a", "b"), eval_set=k % 2)  # a group made of two columns
    src = tmp_path / "long.csv"
    t.drop(columns=["group", "run_id"]).to_csv(src, index=False)
    out = tmp_path / "m.nc"

    def run(argv):
        # short chains test the plumbing; convergence with real settings is the recovery test's
        if argv[0] in ("optimal", "predict"):
            argv = [*argv, "--allow-unconverged"]
        code = main(argv)
        cap = capsys.readouterr()
        assert code == 0, cap.err
        return json.loads(cap.out)

    fitted = run(["fit", str(src), "--law", "chinchilla", "--group", "dataset,eval_set", "--chains", "2",
                  "--warmup", "300", "--draws", "300", "--out", str(out), "--json"])
    assert set(fitted["groups"]) == {"a/0", "a/1", "b/0"} and set(fitted["pooling"].values()) == {"pooled"}
    assert "tau_alpha[group]" in fitted["spreads"]
    s = run(["summary", str(out), "--json"])
    assert s["groups"]["a/1"]["alpha"]["q50"] == pytest.approx(fitted["groups"]["a/1"]["alpha"]["q50"])
    opt = run(["optimal", str(out), "--compute", "1e20", "--json"])["optimal"]
    assert [o["group"] for o in opt] == ["a/0", "a/1", "b/0"]
    one = run(["optimal", str(out), "--compute", "1e20", "--group", "a/1", "--json"])["optimal"][0]
    assert one["N_opt"]["q50"] == pytest.approx(opt[1]["N_opt"]["q50"])
    width = lambda o: np.log(o["N_opt"]["q95"] / o["N_opt"]["q05"])  # noqa: E731
    new = run(["optimal", str(out), "--compute", "1e20", "--group", "new", "--json"])["optimal"][0]
    assert width(new) > width(one)  # a group with no runs is less certain
    at = tmp_path / "at.csv"
    pd.DataFrame({"N": [1e9, 2e9, 1e9], "D": [2e10, 4e10, 2e10], "dataset": ["b", "a", "a"],
                  "eval_set": [0, 1, 0]}).to_csv(at, index=False)
    pred = run(["predict", str(out), "--at", str(at), "--json"])["predictions"]
    assert [p["group"] for p in pred] == ["b/0", "a/1", "a/0"]
    solo = run(["predict", str(out), "--N", "1e9", "--D", "2e10", "--group", "a/0", "--json"])["predictions"][0]
    assert solo["q50"] == pytest.approx(pred[2]["q50"], rel=0.02)
    # a grouped posterior needs a group where one answer is asked for
    assert main(["predict", str(out), "--N", "1e9", "--D", "2e10", "--allow-unconverged"]) == 2
    assert "--group" in capsys.readouterr().err
    # simulation-based calibration of a grouped posterior is refused, not silently ungrouped
    assert main(["check", str(out), "--sbc", "20"]) == 2
    assert "ungrouped" in capsys.readouterr().err


README = Path(__file__).resolve().parents[1] / "README.md"
OPEN_ATHENA = GADRE.parents[1] / "isoflops-open-athena" / "isoflops_extract.csv"


def _readme_fit(marker: str) -> list[str]:
    """The README's `bayescale fit` command whose source contains ``marker``, as argv."""
    import shlex

    text = README.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("bayescale fit") and marker in ln)
    return shlex.split(line.split("#")[0])[1:]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["comma", "dclm", "nemotron"])
def test_readme_marin_command_fits_each_experiment(experiment, tmp_path, capsys):
    """The README's one-command fit of a table with its own column names, for every Marin ladder."""
    if not OPEN_ATHENA.exists():
        pytest.skip("the shared Open-Athena table is not beside the repository")
    argv = [a.replace("../shared", str(GADRE.parents[2])).replace("comma", experiment) for a in _readme_fit("isoflops")]
    argv += ["--law", "chinchilla", "--chains", "2", "--warmup", "200", "--draws", "200",
             "--out", str(tmp_path / "m.nc"), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert 50 <= out["n_obs"] <= 120 and 0.1 < out["params"]["alpha"]["q50"] < 1.5


@pytest.mark.slow
def test_readme_gadre_command_fits_groups(tmp_path, capsys):
    """The README's grouped Gadre command, as written (fewer draws): three groups, measurement error."""
    if not GADRE.exists():
        pytest.skip("the shared Gadre table is not beside the repository")
    argv = [a.replace("../shared", str(GADRE.parents[2])) for a in _readme_fit("gadre")]
    argv = [a if a != "models/gadre.nc" else str(tmp_path / "g.nc") for a in argv]
    assert main([*argv, "--chains", "2", "--warmup", "200", "--draws", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["groups"]) == ["c4_original", "rpj", "rw_original"] and out["n_obs"] == 104
    from bayescale.store import load_posterior

    assert float(load_posterior(tmp_path / "g.nc").constant_data["se"].max()) > 0


@pytest.mark.slow
def test_three_gadre_groups_sample_cleanly_at_default_settings(gadre_c4):
    """Three training sets, the Chinchilla law, the defaults, seed 0. With every coordinate
    non-centred one chain stuck with every group's loss 0.4 below the population (R-hat 1.55, 331
    divergences); the loss at the pivot, pinned by each group's runs, is sampled centred."""
    runs = gadre_c4.drop(columns=[c for c in gadre_c4.columns if c.startswith("loss_") and c != "loss"],
                         errors="ignore")
    diag = bs.diagnostics(fit(runs, FitConfig(law="chinchilla", seed=0), quiet=True))
    assert diag["max_r_hat"] <= 1.01 and diag["divergences"] == 0 and diag["min_ess_bulk"] >= 400, diag
