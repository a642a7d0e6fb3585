"""The command line's JSON contract (DESIGN.md): one object on stdout, the documented keys."""

from __future__ import annotations

import json

import pytest

from bayescale.cli import main

from .conftest import TRUE_CHINCHILLA, simulate

PARAM_KEYS = {"mean", "sd", "q05", "q50", "q95", "r_hat", "ess_bulk"}
INTERVAL_KEYS = {"mean", "sd", "q05", "q50", "q95"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    src = d / "sim.csv"
    simulate("chinchilla", TRUE_CHINCHILLA, 60, 0.02, 5).to_csv(src, index=False)
    return d, src


def run_json(capsys, argv):
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)  # exactly one JSON document, nothing else on stdout


@pytest.mark.slow
def test_fit_summary_optimal_predict_json(fitted, capsys):
    d, src = fitted
    out = d / "m.nc"
    fit = run_json(capsys, ["fit", str(src), "--law", "chinchilla", "--chains", "2", "--warmup", "300",
                            "--draws", "300", "--out", str(out), "--json"])
    assert {"law", "n_obs", "seconds", "divergences", "out", "params", "compute_optimal"} <= set(fit)
    assert fit["law"] == "chinchilla" and fit["n_obs"] == 60 and fit["out"] == str(out)
    assert set(fit["params"]) == {"E", "A", "B", "alpha", "beta", "sigma"}
    assert all(set(v) == PARAM_KEYS for v in fit["params"].values())
    assert set(fit["compute_optimal"]) == {"a", "b"}
    assert abs(fit["compute_optimal"]["a"]["mean"] + fit["compute_optimal"]["b"]["mean"] - 1) < 1e-9

    opt = run_json(capsys, ["optimal", str(out), "--compute", "1e20", "1e22", "--json"])
    assert [o["compute"] for o in opt["optimal"]] == [1e20, 1e22]
    for o in opt["optimal"]:
        assert {"N_opt", "D_opt", "loss", "tokens_per_param"} <= set(o)
        assert all(set(o[k]) == INTERVAL_KEYS for k in ("N_opt", "D_opt", "loss", "tokens_per_param"))
        assert abs(6 * o["N_opt"]["q50"] * o["D_opt"]["q50"] / o["compute"] - 1) < 0.2

    pred = run_json(capsys, ["predict", str(out), "--N", "1e9", "--D", "2e10", "--json"])
    (p,) = pred["predictions"]
    assert set(p) == {"N", "D", "q25", "q75", "extrapolation"} | INTERVAL_KEYS and p["N"] == 1e9 and p["D"] == 2e10
    assert p["q05"] < p["q25"] < p["q50"] < p["q75"] < p["q95"]

    summ = run_json(capsys, ["summary", str(out), "--json"])
    assert summ["law"] == "chinchilla" and summ["n_obs"] == 60
    assert summ["params"]["alpha"]["q50"] == pytest.approx(fit["params"]["alpha"]["q50"])

    # a refit with other options to the same --out replaces the posterior only with --force
    assert main(["fit", str(src), "--law", "chinchilla", "--chains", "1", "--warmup", "50", "--draws", "50",
                 "--out", str(out), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["field"] == "--out"
    assert main(["fit", str(src), "--law", "chinchilla", "--chains", "1", "--warmup", "50", "--draws", "50",
                 "--out", str(out), "--json", "--force"]) == 0
    capsys.readouterr()


@pytest.mark.slow
def test_predict_at_table(fitted, capsys):
    d, src = fitted
    out = d / "m2.nc"
    main(["fit", str(src), "--law", "kaplan", "--chains", "1", "--warmup", "100", "--draws", "100", "--out", str(out),
          "--json"])
    capsys.readouterr()
    at = d / "at.csv"
    at.write_text("N,D\n1e8,2e9\n1e9,2e10\n")
    pred = run_json(capsys, ["predict", str(out), "--at", str(at), "--json"])
    assert [p["N"] for p in pred["predictions"]] == [1e8, 1e9]
    # human-readable output by default
    assert main(["optimal", str(out), "--compute", "1e21"]) == 0
    text = capsys.readouterr().out
    assert "N_opt" in text and "tokens_per_param" in text


@pytest.fixture(scope="module")
def averaged(fitted):
    """The default fit (the law family, averaged) of the simulated table, as the CLI writes it."""
    d, src = fitted
    out = d / "avg.nc"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["fit", str(src), "--chains", "2", "--warmup", "300", "--draws", "300", "--out", str(out),
                     "--json"]) == 0
    return out, json.loads(buf.getvalue())


@pytest.mark.slow
def test_default_fit_is_the_averaged_family(averaged):
    out, fit = averaged
    assert fit["law"] == "averaged" and fit["n_obs"] == 60
    laws = fit["laws"]
    assert set(laws) == {"chinchilla", "kaplan", "shared"}
    assert sum(v["weight"] for v in laws.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(0 < v["weight"] < 1 for v in laws.values())
    # every law's parameters, under LAW.NAME in "params" and by law in "laws"
    assert set(laws["kaplan"]["params"]) == {"E", "N_c", "D_c", "alpha_N", "alpha_D", "sigma"}
    assert {"chinchilla.alpha", "kaplan.alpha_N", "shared.alpha", "shared.sigma"} <= set(fit["params"])
    # forward validation: cuts recorded, each law scored at each cut
    cuts = fit["averaging"]["cuts"]
    assert len(cuts) >= 2
    for v in laws.values():
        assert [c["cut"] for c in v["lfo"]] == cuts
        assert all(c["method"] in ("exact", "psis") and c["n_scored"] > 0 for c in v["lfo"])
    assert 0 <= fit["averaging"]["discrepancy_rate"]["mean"] < 0.3
    assert set(fit["compute_optimal"]) == {"a", "b"}


@pytest.mark.slow
def test_summary_and_compare_show_the_weights(averaged, capsys):
    out, fit = averaged
    summ = run_json(capsys, ["summary", str(out), "--json"])
    assert {k: v["weight"] for k, v in summ["laws"].items()} == {k: v["weight"] for k, v in fit["laws"].items()}
    assert summ["averaging"]["cuts"] == fit["averaging"]["cuts"]
    assert main(["summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "weights (stacking of forward-validation scores)" in text and "model discrepancy" in text
    for law in ("chinchilla", "kaplan", "shared"):
        assert f"{law} law (weight" in text
    comp = run_json(capsys, ["compare", str(out), "--json"])
    rows = {r["model"]: r for r in comp["table"]}
    assert set(rows) == {"avg:chinchilla", "avg:kaplan", "avg:shared"}
    for law, v in fit["laws"].items():
        assert rows[f"avg:{law}"]["lfo_weight"] == pytest.approx(v["weight"])
        assert rows[f"avg:{law}"]["elpd_lfo"] is not None
    assert comp["lfo_cuts"] == fit["averaging"]["cuts"]


@pytest.mark.slow
def test_extrapolation_flags_in_optimal_and_predict(averaged, capsys):
    out, _ = averaged
    # the simulated runs: N in [1e7, 1e10], 2-200 tokens per parameter (conftest.simulate)
    opt = run_json(capsys, ["optimal", str(out), "--compute", "1e18", "1e26", "--json"])
    inside, beyond = (o["extrapolation"] for o in opt["optimal"])
    assert not inside["extrapolating"] and inside["compute_ratio"] < 1 and inside["distance_decades"] == 0
    assert beyond["extrapolating"] and beyond["compute_ratio"] > 10
    assert beyond["N_outside"] and beyond["N_outside_share"] > 0.9 and beyond["distance_decades"] > 1
    assert beyond["beyond_corpus"] is None  # a table does not say how big its corpus is
    # the loss at a far budget is less certain than inside the runs, relative to its size
    rel = [o["loss"]["sd"] / o["loss"]["mean"] for o in opt["optimal"]]
    assert rel[1] > 3 * rel[0]
    pred = run_json(capsys, ["predict", str(out), "--N", "1e8", "1e12", "--D", "2e9", "2e13", "--json"])
    near, far = (p["extrapolation"] for p in pred["predictions"])
    assert not near["extrapolating"] and far["extrapolating"] and far["N_outside"] and far["D_outside"]
    assert main(["optimal", str(out), "--compute", "1e18", "1e26"]) == 0
    text = capsys.readouterr().out
    assert "inside the runs" in text and "N and D outside the runs' range" in text


def _corrupted(src, dst, how):
    """A copy of a posterior file with its draws spoiled: ``"rhat"`` (one chain shifted) or
    ``"divergent"`` (2% of transitions marked divergent)."""
    import bayescale as bs

    idata = bs.load_posterior(src)
    if how == "rhat":
        v = idata.posterior["kaplan.alpha_N"]
        idata.posterior["kaplan.alpha_N"] = v + (v.chain == 0) * 10 * float(v.std())
    else:
        d = idata.sample_stats["shared.diverging"]
        idata.sample_stats["shared.diverging"] = d | (d.draw % 50 == 0)
    bs.save_posterior(idata, dst)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("how", ["rhat", "divergent"])
def test_unconverged_posterior_is_refused_unless_allowed(averaged, tmp_path, capsys, how):
    out, _ = averaged
    bad = _corrupted(out, tmp_path / f"bad-{how}.nc", how)
    for argv in (["optimal", str(bad), "--compute", "1e21"], ["predict", str(bad), "--N", "1e9", "--D", "2e10"],
                 ["plot", str(bad), "--out", str(tmp_path / "figs")], ["report", str(bad), "--out", str(tmp_path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has not converged" in err[0] and "--allow-unconverged" in err[0]
        assert ("R-hat" in err[0]) if how == "rhat" else ("divergent transitions" in err[0])
    assert not (tmp_path / "figs").exists()  # nothing written for a refused posterior
    assert main(["optimal", str(bad), "--compute", "1e21", "--allow-unconverged"]) == 0
    cap = capsys.readouterr()
    assert "N_opt" in cap.out and "unconverged" in cap.err
    # with --json the refusal is still exit 2, and stdout holds one JSON object saying why (DESIGN.md)
    assert main(["optimal", str(bad), "--compute", "1e21", "--json"]) == 2
    obj = json.loads(capsys.readouterr().out)
    assert "not converged" in obj["error"] and obj["file"] == str(bad)
