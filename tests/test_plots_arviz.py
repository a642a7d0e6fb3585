"""Figures drawn through ArviZ, isoFLOP slices at a table's own budgets, legends, titles, and the
progress and help of the plotting commands (issue 11, parts 4, 6, 7 and 9)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

MARIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "isoflops-open-athena" / "isoflops_extract.csv"
MARIN_FILTER = "experiment == 'marin_202603__comma__llama_2'"
QUICK = {"chains": 2, "warmup": 150, "draws": 150}


def _fake(meta: dict):
    """The smallest InferenceData that carries bayescale metadata (what titles read)."""
    import xarray as xr

    from bayescale._arviz import az

    post = xr.Dataset({"E": (("chain", "draw"), np.zeros((1, 2)))}, attrs={"bayescale": json.dumps(meta)})
    return az.InferenceData(posterior=post)


# --------------------------------------------------------------------------------------------
# quick: no posterior fitted


def test_titles_name_a_runs_directory_with_its_slash(tmp_path):
    from bayescale.plots import _title, source_label

    runs = tmp_path / "runs"
    runs.mkdir()
    meta = {"law": "chinchilla", "n_obs": 45, "filter": None}
    # as typed, with or without the slash, and a directory that is not here any more
    assert _title(_fake({**meta, "source": "runs/"}), "X") == "X: chinchilla law, 45 runs from runs/"
    assert _title(_fake({**meta, "source": str(runs)}), "X") == "X: chinchilla law, 45 runs from runs/"
    assert source_label("elsewhere/myruns") == "myruns/"
    # a table by its file name; what the fit recorded wins over the guess
    assert source_label("../shared/data/isoflops-open-athena/isoflops_extract.csv") == "isoflops_extract.csv"
    assert source_label("data/table", "table") == "table" and source_label("x.csv", "directory") == "x.csv/"
    assert source_label("chinchilla") == "chinchilla" and source_label("<DataFrame>") == "<DataFrame>"
    t = _title(_fake({**meta, "source": str(MARIN), "n_obs": 85, "filter": MARIN_FILTER}), "IsoFLOP slices")
    assert t == f"IsoFLOP slices: chinchilla law, 85 runs from isoflops_extract.csv\n{MARIN_FILTER}"


def test_tokens_at_budget_puts_every_run_on_its_curve():
    from bayescale.plots import _tokens_at_budget

    # a table whose C counts 6ND times a factor that depends on the size (as attention FLOPs do)
    N = np.array([1.5e8, 2.1e8, 3.6e8, 4.5e8])
    ratio = np.array([1.35, 1.27, 1.13, 1.09])  # 6ND / C
    C = 3e18
    D = C * ratio / (6 * N)
    np.testing.assert_allclose(_tokens_at_budget(N, C, N, ratio), D, rtol=1e-12)
    # between runs the ratio is interpolated in log N, beyond them held at the nearest run's
    mid = np.sqrt(N[0] * N[1])
    np.testing.assert_allclose(6 * mid * _tokens_at_budget(np.array([mid]), C, N, ratio) / C,
                               np.sqrt(1.35 * 1.27), rtol=1e-12)
    np.testing.assert_allclose(6 * 1e10 * _tokens_at_budget(np.array([1e10]), C, N, ratio) / C, 1.09, rtol=1e-12)


def test_every_plotting_option_has_help():
    from bayescale.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.choices and "plot" in a.choices)
    for cmd in ("plot", "compare", "report"):
        p = sub.choices[cmd]
        opts = {s for a in p._actions for s in a.option_strings}
        assert {"-q", "--quiet", "--json"} <= opts, cmd
        for a in p._actions:
            if a.dest != "help":
                assert a.help and "\n" not in a.help and len(a.help) > 10, (cmd, a.dest)


# --------------------------------------------------------------------------------------------
# fitted posteriors


@pytest.fixture(scope="module")
def marin(tmp_path_factory):
    """Marin's llama_2 ladder of the Open-Athena isoFLOP table, whose C column is not 6ND."""
    import bayescale as bs

    if not MARIN.exists():
        pytest.skip(f"needs {MARIN}")
    runs = bs.load_runs(MARIN, columns="N=params,D=tokens,loss=loss,C=budget", filter=MARIN_FILTER)
    idata = bs.fit(runs, bs.FitConfig(law="chinchilla", **QUICK), quiet=True)
    path = tmp_path_factory.mktemp("marin") / "marin.nc"
    bs.save_posterior(idata, path)
    return bs.load_posterior(path), path


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A well-specified fit: the Chinchilla law with Gaussian noise on log loss, fitted as such."""
    import bayescale as bs
    from bayescale.runs import load_runs

    from .conftest import TRUE_CHINCHILLA, simulate

    runs = load_runs(simulate("chinchilla", TRUE_CHINCHILLA, 120, 0.02, seed=7))
    idata = bs.fit(runs, bs.FitConfig(law="chinchilla", likelihood="gaussian", **QUICK), quiet=True)
    path = tmp_path_factory.mktemp("sim") / "sim.nc"
    bs.save_posterior(idata, path)
    return bs.load_posterior(path), path


@pytest.mark.slow
def test_isoflop_points_sit_at_their_curves_budget(marin):
    from bayescale import plots

    idata, _ = marin
    cd = idata.constant_data
    N, D, C = (np.asarray(cd[k].values, float) for k in ("N", "D", "C"))
    assert (6 * N * D / C).min() < 0.95 and (6 * N * D / C).max() > 1.3  # the table's C is not 6ND
    series = plots.isoflop_series(idata)
    assert [s["budget"] for s in series] == [3e18, 1.8e19, 9e19, 3e20]
    for s in series:
        assert s["table_budget"] and len(s["runs"]) >= 5
        i = s["runs"]
        np.testing.assert_array_equal(C[i], s["budget"])  # each run's budget is the slice's
        # along the curve, at each run's N, the curve's D is the run's D: the same budget
        at = np.searchsorted(s["N"], N[i])
        np.testing.assert_allclose(s["N"][at], N[i], rtol=1e-12)
        np.testing.assert_allclose(s["D"][at], D[i], rtol=1e-9)
        # the optimum lies on the curve: every draw's N* is a grid point with that draw's least loss
        assert np.all(np.isin(s["N_opt"], s["N"]))
        np.testing.assert_allclose(s["loss_opt"], s["draws"].min(axis=1))
    fig = plots.plot_isoflops(idata)
    ax = fig.axes[0]
    medians = [ln for ln in ax.lines if ln.get_gid() == "median"]
    points = [c for c in ax.collections if c.get_gid() == "observed"]
    assert len(medians) == len(points) == len(series)
    for s, ln, pts in zip(series, medians, points, strict=True):
        assert "table's C" in ln.get_label()
        np.testing.assert_allclose(ln.get_xdata(), s["N"])
        np.testing.assert_allclose(pts.get_offsets()[:, 0], N[s["runs"]])
    assert "6ND = 0.93-1.35 × C" in ax.get_legend().get_title().get_text()
    assert "85 runs from isoflops_extract.csv" in ax.get_title()


@pytest.mark.slow
def test_isoflops_with_6nd_budgets_keep_the_closed_form_optimum(simulated):
    from bayescale import plots
    from bayescale.posterior import optimal_draws

    idata, _ = simulated
    [s] = plots.isoflop_series(idata, budgets=[1e20])
    assert not s["table_budget"]
    np.testing.assert_allclose(6 * s["N"] * s["D"], 1e20, rtol=1e-12)
    np.testing.assert_allclose(s["N_opt"], optimal_draws(idata, [1e20])["N_opt"][:, 0])


@pytest.mark.slow
def test_bands_are_drawn_by_arviz_with_equal_tailed_intervals(marin, monkeypatch):
    from bayescale import plots
    from bayescale._arviz import az
    from bayescale.posterior import optimal_draws

    calls = []
    real = az.plot_hdi

    def spy(x, *a, **kw):
        calls.append((np.asarray(x), np.asarray(kw["hdi_data"]), kw["fill_kwargs"]["gid"]))
        return real(x, *a, **kw)

    monkeypatch.setattr(az, "plot_hdi", spy)
    idata, _ = marin
    fig = plots.plot_frontier(idata)
    assert [gid for *_, gid in calls] == ["band90", "band50"]
    x, hdi90, _ = calls[0]
    q = np.quantile(optimal_draws(idata, x)["loss"], [0.05, 0.95], axis=0).T
    np.testing.assert_allclose(hdi90, q, rtol=1e-12)  # equal-tailed 5-95%, not ArviZ's HDI
    # and what ArviZ drew is that band, unsmoothed
    band = next(c for c in fig.axes[0].collections if c.get_gid() == "band90")
    v = band.get_paths()[0].vertices
    assert np.isclose(v[:, 1].min(), q.min()) and np.isclose(v[:, 1].max(), q.max())


@pytest.mark.slow
def test_pair_plot_is_arviz_with_the_prior(marin, monkeypatch):
    from bayescale import plots
    from bayescale._arviz import az
    from bayescale.plots import POSTERIOR_COLOR, PRIOR_COLOR

    groups = []
    real = az.plot_pair

    def spy(data, *a, **kw):
        groups.append(kw["group"])
        return real(data, *a, **kw)

    monkeypatch.setattr(az, "plot_pair", spy)
    idata, _ = marin
    for data in (idata, az.InferenceData(**{g: idata[g] for g in idata.groups() if g != "prior"})):
        groups.clear()
        fig = plots.plot_pairs(data, max_points=300)
        assert groups == ["prior", "posterior"]  # the prior file group, or drawn from the recorded priors
        ax = fig.axes[1]  # log10 A against E
        colors = [tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in ax.collections]
        from matplotlib.colors import to_rgb

        assert colors == [tuple(np.round(to_rgb(PRIOR_COLOR), 3)), tuple(np.round(to_rgb(POSTERIOR_COLOR), 3))]
        assert [len(c.get_offsets()) for c in ax.collections] == [300, 300]
        assert len(fig.axes) == 15 and ax.get_ylabel() == "log10 A"
        lo, hi = ax.get_xlim()
        E = idata.posterior["E"].values.ravel()
        assert lo < E.min() and hi > E.max() and hi - lo < 4 * (E.max() - E.min())  # the posterior's range


@pytest.mark.slow
def test_loo_pit_is_uniform_for_a_well_specified_fit(simulated, tmp_path):
    from bayescale import plots
    from bayescale._arviz import az
    from bayescale._idata import as_arviz
    from bayescale.inference import with_log_likelihood

    idata, _ = simulated
    res = plots.loo_pit(idata)
    pit = res["pit"]
    assert pit.shape == (120,) and pit.min() >= 0 and pit.max() <= 1
    assert res["ks"] < 0.13 and res["ks_p"] > 0.05  # n = 120: the 5% critical KS distance is 0.124
    assert np.all(res["pareto_k"] < 0.7)
    np.testing.assert_allclose(np.exp(res["log_weights"]).sum(axis=1), 1.0, rtol=1e-9)
    # ArviZ's own path (its PSIS weights from a log_likelihood group, with r_eff) agrees
    ref = az.loo_pit(as_arviz(with_log_likelihood(idata)), y=res["y"], y_hat=res["y_hat"])
    assert np.max(np.abs(np.asarray(ref) - pit)) < 0.02
    # a miscalibrated posterior is caught: losses 5% higher than the fit saw
    cd = idata.constant_data.copy()
    cd["loss"] = cd["loss"] * 1.05
    worse = plots.loo_pit(idata.with_groups(constant_data=cd) if hasattr(idata, "with_groups")
                          else az.InferenceData(**{**{g: idata[g] for g in idata.groups()}, "constant_data": cd}))
    assert worse["ks"] > 0.6 and np.mean(worse["pit"] > 0.95) > 0.6
    fig = plots.plot_loo_pit(idata)
    assert len(fig.axes) == 3 and "KS" in fig.texts[-1].get_text()
    assert len(fig.axes[2].collections[0].get_offsets()) == 120
    path = tmp_path / "loo_pit.png"
    fig.savefig(path)
    assert path.stat().st_size > 10_000


@pytest.mark.slow
def test_compare_legend_shows_each_band_colour(marin, simulated):
    from matplotlib.colors import to_rgb

    from bayescale.plot_cli import plot_compare

    fig = plot_compare({"marin": marin[0], "sim": simulated[0]})
    for ax in fig.axes[:2]:
        bands = [c for c in ax.collections if c.get_gid() == "band90"]
        band_rgb = [tuple(np.round(b.get_facecolor()[0][:3], 4)) for b in bands]
        assert len(set(band_rgb)) == 2
        leg = ax.get_legend()
        texts = [t.get_text() for t in leg.get_texts()]
        handles = dict(zip(texts, leg.legend_handles, strict=True))
        for name, rgb in zip(("marin (chinchilla law)", "sim (chinchilla law)"), band_rgb, strict=True):
            assert tuple(np.round(to_rgb(handles[name].get_facecolor()), 4)) == rgb


@pytest.mark.slow
def test_plot_and_compare_say_what_they_do_unless_quiet(marin, simulated, tmp_path, capsys):
    from bayescale.cli import main
    from bayescale.plots import figure_jobs

    _, path = marin
    n = len(figure_jobs(marin[0]))
    assert main(["plot", str(path), "--out", str(tmp_path / "a")]) == 0
    cap = capsys.readouterr()
    assert "drawing figures" in cap.err and f"[{n}/{n}] loo_pit" in cap.err
    assert (tmp_path / "a" / "loo_pit.png").stat().st_size > 10_000
    for quiet in (["-q"], ["--quiet"], ["--json"]):
        assert main(["plot", str(path), "--out", str(tmp_path / "b"), "--format", "svg", *quiet]) == 0
        cap = capsys.readouterr()
        assert cap.err == ""
    assert len(json.loads(cap.out)["figures"]) == n
    _, spath = simulated
    assert main(["compare", str(path), str(path.with_name("marin.nc")), "--out", str(tmp_path)]) == 2  # same file
    capsys.readouterr()
    copy = tmp_path / "marin2.nc"
    copy.write_bytes(path.read_bytes())
    assert main(["compare", str(path), str(copy), "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "comparing 2 posteriors" in err and "drawing the overlay figure" in err
    assert main(["compare", str(path), str(copy), "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["report", str(path), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "writing the report" in err and f"[{n}/{n}]" in err
    assert os.path.exists(tmp_path / "r" / "marin-report.html")
