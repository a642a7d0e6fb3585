"""The shipped study (runs/ + runs/plan.toml) and the README's main job on it (issue 3, part 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bayescale as bs
from bayescale._compat import tomllib
from bayescale.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"


@pytest.fixture(scope="module")
def runs():
    return bs.load_runs(str(RUNS))


def test_study_covers_the_plan(runs):
    plan = tomllib.loads((RUNS / "plan.toml").read_text())
    assert plan["defaults"]["vocab_size"] == 512
    assert len(runs) >= 30 and set(runs["status"]) == {"completed"}
    assert np.log10(runs.N.max() / runs.N.min()) >= 2.0  # N spans two decades
    assert np.log10(runs.D.max() / runs.D.min()) >= 1.3  # D spans 1.3 decades
    # one epoch at most: no run asks for more tokens than the training split holds
    for rec in (json.loads(p.read_text()) for p in RUNS.glob("*/run.json")):
        assert rec["D"] <= rec["config"]["data"]["train_tokens"], rec["run_id"]
    # isoFLOP slices at >= 3 budgets, each with >= 3 model sizes within 2% of the budget
    slices = 0
    for c in plan["isoflop"][0]["budgets"]:
        near = runs[np.abs(np.log(runs.C / c)) < 0.02]
        slices += near.N.nunique() >= 3
    assert slices >= 3
    # both corners: small models at the largest D, and large models at the smallest D
    assert runs.loc[runs.N.idxmin(), "D"] < runs.D.max() and runs[runs.N == runs.N.min()].D.max() >= 2.9e6
    assert runs[runs.N == runs.N.max()].D.min() <= 1.1e5


@pytest.mark.slow
def test_readme_main_job_on_the_study(tmp_path, capsys):
    """`bayescale fit runs/` with the default sampler: converged, and a narrower than 0.3."""
    out = tmp_path / "runs.nc"
    assert main(["fit", str(RUNS), "--out", str(out), "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["diagnostics"]["max_r_hat"] <= 1.01
    assert fit["divergences"] == 0
    a = fit["compute_optimal"]["a"]
    assert a["q95"] - a["q05"] < 0.3, a
    assert fit["law"] == "averaged" and all(d["max_r_hat"] <= 1.01 for d in fit["diagnostics"]["per_law"].values())
    # the README's second half: the allocation beyond the study, every row flagged as such
    assert main(["optimal", str(out), "--compute", "1e13", "1e14", "1e15", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["optimal"]
    c_max = max(r["C"] for r in bs.load_runs(str(RUNS)).to_dict("records"))
    for r in rows:
        x = r["extrapolation"]
        assert x["extrapolating"] and x["compute_ratio"] == pytest.approx(r["compute"] / c_max)
        assert x["beyond_corpus"] == (r["D_opt"]["q50"] > 4080451)  # the runs record their 4.08M-token corpus
    assert rows[-1]["extrapolation"]["beyond_corpus"]


def test_the_study_extended_by_its_own_loop():
    """runs-loop/ is the study plus the runs `bayescale loop` chose for N*(3e12) (issue 10): every
    run of runs/ unchanged, and every added run one the loop's record says it chose, trained to
    the (N, D) of its ladder entry."""
    from bayescale.loop import Ladder

    base = bs.load_runs(str(RUNS)).set_index("run_id")
    ext = bs.load_runs(str(ROOT / "runs-loop")).set_index("run_id")
    rec = json.loads((ROOT / "runs-loop" / "loop.json").read_text())
    chosen = [r for batch in rec["batches"] for r in batch]
    assert set(base.index) <= set(ext.index) and set(ext.index) - set(base.index) == set(chosen)
    assert len(chosen) == 63 and set(ext["status"]) == {"completed"}
    np.testing.assert_array_equal(ext.loc[base.index, "loss"].to_numpy(), base["loss"].to_numpy())
    assert rec["settings"]["target_compute"] == 3e12 and rec["settings"]["objective"] == "n_opt"
    spent = float((6 * ext.loc[chosen, "N"] * ext.loc[chosen, "D"]).sum())
    assert 0.9 * 2e13 < spent <= 2e13 * 1.001  # the --budget, all but the last run's change spent
    ladder = {e["run_id"]: e for e in Ladder.from_plan(RUNS / "plan.toml").entries()}
    for rid in chosen:
        assert ext.loc[rid, "N"] == ladder[rid]["N"] and ext.loc[rid, "D"] == ladder[rid]["D"], rid
