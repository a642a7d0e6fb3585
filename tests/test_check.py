"""Simulation-based calibration: the machinery, a case it must flag, and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bayescale.check import BINS, RANK_DRAWS, sbc_law
from bayescale.models import Anchors, resolve_priors

from .conftest import TRUE_CHINCHILLA, simulate


@pytest.fixture(scope="module")
def design():
    runs = simulate("chinchilla", TRUE_CHINCHILLA, 40, 0.02, 3)
    N, D, y = (runs[c].to_numpy(float) for c in ("N", "D", "loss"))
    return N, D, Anchors.from_data(N, D, y)


@pytest.mark.slow
def test_sbc_ranks_and_summary(design):
    N, D, anchors = design
    priors = resolve_priors("shared", anchors)
    c = sbc_law("shared", N, D, anchors, priors, replicates=40, compute=1e24, seed=1)
    s = c.summary()
    assert s["replicates"] == 40
    assert set(s["quantities"]) == {"E", "A", "B", "alpha", "sigma", "log_N_opt"}
    for name, q in s["quantities"].items():
        r = c.ranks[name]
        assert r.min() >= 0 and r.max() <= RANK_DRAWS and sum(q["counts"]) == 40 and len(q["counts"]) == BINS
        assert 0 <= q["p"] <= 1 and 0 <= q["coverage90"] <= 1
    # with the fit's own priors, 40 replicates: coverage of 90% intervals is not far off (binomial sd 0.05)
    cover = np.mean([q["coverage90"] for q in s["quantities"].values()])
    assert 0.75 <= cover <= 1.0


@pytest.mark.slow
def test_sbc_flags_a_posterior_that_is_too_sure(design):
    """Refits whose exponent prior is far narrower than the simulation's: the truth falls outside
    their intervals and piles up at the ends of the rank histogram."""
    N, D, anchors = design
    priors = resolve_priors("shared", anchors)
    wrong = {**priors, "alpha": "LogNormal(-1.2, 0.02)"}
    c = sbc_law("shared", N, D, anchors, priors, replicates=40, compute=1e24, seed=2, fit_priors=wrong)
    s = c.summary()
    assert s["verdict"] == "check"
    q = s["quantities"]["alpha"]
    assert q["p"] < 1e-4 and q["coverage90"] < 0.5 and not q["ok"]


@pytest.mark.slow
def test_check_command(tmp_path, capsys):
    from bayescale.cli import main

    src = tmp_path / "sim.csv"
    simulate("chinchilla", TRUE_CHINCHILLA, 40, 0.02, 4).to_csv(src, index=False)
    model = tmp_path / "m.nc"
    assert main(["fit", str(src), "--law", "shared", "--chains", "2", "--warmup", "200", "--draws", "200",
                 "--out", str(model), "--json"]) == 0
    capsys.readouterr()
    assert main(["check", str(model), "--sbc", "20", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["sbc"]) == {"shared"} and res["sbc"]["shared"]["replicates"] == 20
    assert res["verdict"] in ("calibrated", "check")
    assert (tmp_path / "m-check" / "sbc-ranks.png").stat().st_size > 10_000
    assert main(["check", str(model), "--sbc", "5"]) == 2  # too few replicates to say anything
    assert "at least 20" in capsys.readouterr().err
