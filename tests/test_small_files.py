"""Issue 11, part 8: small posterior files, and commands that do not plot do not import ArviZ.

The diagnostics and PSIS weights bayescale now computes without ArviZ must equal ArviZ's on the
same numbers; the file keeps what cannot be recomputed and recomputes the rest exactly.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import bayescale as bs
from bayescale import convergence as cv
from bayescale.inference import with_log_likelihood

from .conftest import TRUE_CHINCHILLA, simulate


def _arviz():
    from bayescale._arviz import az

    return az


@pytest.mark.parametrize("chains,draws", [(4, 1000), (2, 37), (1, 200), (3, 5)])
def test_diagnostics_equal_arviz(chains, draws):
    az = _arviz()
    rng = np.random.default_rng(chains * 1000 + draws)
    for trial in range(6):
        # autocorrelated chains with offsets (R-hat > 1), heavy tails, and ties (rounded values)
        x = rng.standard_normal((chains, draws)).cumsum(axis=1) * 0.3 + rng.standard_t(3, (chains, draws))
        x += rng.normal(0, trial * 0.5, (chains, 1))
        if trial % 3 == 2:
            x = np.round(x, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expect = (float(az.rhat(x)), float(az.ess(x, method="bulk")), float(az.ess(x, method="tail")))
        got = (cv.rhat(x), cv.ess_bulk(x), cv.ess_tail(x))
        for e, g in zip(expect, got, strict=True):
            assert (np.isnan(e) and np.isnan(g)) or abs(g - e) <= 1e-9 * abs(e), (chains, draws, trial, expect, got)


@pytest.mark.parametrize("n,scale", [(400, 0.3), (1000, 1.0), (4000, 2.0)])
def test_psis_equals_arviz(n, scale):
    az = _arviz()
    log_r = np.random.default_rng(n).standard_t(4, n) * scale
    lw_az, k_az = az.psislw(log_r.copy())
    lw, k = cv.psis(log_r)
    assert k == pytest.approx(float(k_az), abs=1e-12)
    np.testing.assert_allclose(lw, np.asarray(lw_az), atol=1e-12)
    assert np.exp(lw).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.slow
def test_saved_file_small_and_log_likelihood_recomputed_exactly(tmp_path):
    runs = bs.load_runs(simulate("chinchilla", TRUE_CHINCHILLA, 200, 0.02, 3))
    idata = bs.fit(runs, bs.FitConfig(law="chinchilla", chains=2, warmup=200, draws=300), quiet=True)
    path = bs.save_posterior(idata, tmp_path / "m.nc")
    back = bs.load_posterior(path)
    assert "log_likelihood" not in back.groups()
    again = with_log_likelihood(back)
    np.testing.assert_allclose(again.log_likelihood["log_loss"].values, idata.log_likelihood["log_loss"].values,
                               rtol=1e-12, atol=1e-12)
    # the pointwise values (2 x 300 draws x 200 runs) were most of the file: written as before, with
    # them, it is more than 3x the size (7.6 MB against 0.46 MB for the 240 Chinchilla rows, 4000 draws)
    idata.to_netcdf(tmp_path / "with-pointwise.nc")
    assert path.stat().st_size < 0.33 * (tmp_path / "with-pointwise.nc").stat().st_size
    # a file written with the group (as before this change) still loads and is used as it is
    assert with_log_likelihood(idata) is idata


@pytest.mark.slow
def test_grouped_log_likelihood_recomputed(tmp_path):
    import pandas as pd

    a = simulate("chinchilla", TRUE_CHINCHILLA, 30, 0.02, 5).assign(group="a")
    b = simulate("chinchilla", TRUE_CHINCHILLA, 30, 0.02, 6).assign(group="b")
    b["run_id"] = [f"b{i}" for i in range(len(b))]
    runs = bs.load_runs(pd.concat([a, b], ignore_index=True))
    idata = bs.fit(runs, bs.FitConfig(law="chinchilla", chains=2, warmup=200, draws=200), quiet=True)
    back = bs.load_posterior(bs.save_posterior(idata, tmp_path / "grouped.nc"))
    again = with_log_likelihood(back)  # each run scored under its own group's law
    np.testing.assert_allclose(again.log_likelihood["log_loss"].values, idata.log_likelihood["log_loss"].values,
                               rtol=1e-10, atol=1e-10)


NO_PLOT = [["summary"], ["optimal", "--compute", "1e21"], ["predict", "--N", "1e9", "--D", "2e10"]]


@pytest.mark.parametrize("argv", NO_PLOT)
def test_commands_that_do_not_plot_do_not_import_arviz(chinchilla_fit, argv):
    _, path = chinchilla_fit
    argv = [argv[0], str(path), *argv[1:]]
    code = (f"import sys; from bayescale.cli import main; rc = main({argv!r}); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('arviz', 'matplotlib'));"
            "print('IMPORTED', bad, file=sys.stderr); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "IMPORTED []" in r.stderr, r.stderr[-500:]
