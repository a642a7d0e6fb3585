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


def test_fit_summary_optimal_predict_json(fitted, capsys):
    d, src = fitted
    out = d / "m.nc"
    fit = run_json(capsys, ["fit", str(src), "--chains", "2", "--warmup", "300", "--draws", "300",
                            "--out", str(out), "--json"])
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
    assert set(p) == {"N", "D"} | INTERVAL_KEYS and p["N"] == 1e9 and p["D"] == 2e10
    assert p["q05"] < p["q50"] < p["q95"]

    summ = run_json(capsys, ["summary", str(out), "--json"])
    assert summ["law"] == "chinchilla" and summ["n_obs"] == 60
    assert summ["params"]["alpha"]["q50"] == pytest.approx(fit["params"]["alpha"]["q50"])

    # a refit to the same --out replaces a bayescale posterior (that is what refitting means)
    assert main(["fit", str(src), "--chains", "1", "--warmup", "50", "--draws", "50", "--out", str(out),
                 "--json"]) == 0
    capsys.readouterr()


def test_predict_at_table(fitted, capsys):
    d, src = fitted
    out = d / "m2.nc"
    main(["fit", str(src), "--chains", "1", "--warmup", "100", "--draws", "100", "--out", str(out), "--json"])
    capsys.readouterr()
    at = d / "at.csv"
    at.write_text("N,D\n1e8,2e9\n1e9,2e10\n")
    pred = run_json(capsys, ["predict", str(out), "--at", str(at), "--json"])
    assert [p["N"] for p in pred["predictions"]] == [1e8, 1e9]
    # human-readable output by default
    assert main(["optimal", str(out), "--compute", "1e21"]) == 0
    text = capsys.readouterr().out
    assert "N_opt" in text and "tokens_per_param" in text
