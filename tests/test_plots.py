"""Figures, compare and report: inspect what is drawn, not only that a file exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("matplotlib")

# every figure here draws from fitted posteriors (module fixtures): the quick subset skips them
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_fit(chinchilla_runs, tmp_path_factory):
    """A quick (2 x 200) default fit (the law family, averaged) of the Chinchilla data, saved so the
    CLI can read it."""
    import bayescale as bs

    idata = bs.fit(chinchilla_runs, bs.FitConfig(chains=2, warmup=200, draws=200), quiet=True)
    path = tmp_path_factory.mktemp("plots") / "chinchilla.nc"
    bs.save_posterior(idata, path)
    return bs.load_posterior(path), path


def _bands(ax, gid=None):
    from matplotlib.collections import PolyCollection

    return [
        c
        for c in ax.collections
        if isinstance(c, PolyCollection)
        and (c.get_gid() or "").startswith("band")
        and (gid is None or c.get_gid() == gid)
        and len(c.get_paths())
        and len(c.get_paths()[0].vertices)
    ]


def _points(ax):
    return sum(len(c.get_offsets()) for c in ax.collections if c.get_gid() == "observed")


def _band_halfwidth_rel(band):
    """Relative vertical extent of a fill_between band at each x, ordered by x."""
    v = band.get_paths()[0].vertices
    xs = np.unique(v[:, 0])
    lo = np.array([v[v[:, 0] == x, 1].min() for x in xs])
    hi = np.array([v[v[:, 0] == x, 1].max() for x in xs])
    return xs, (hi - lo) / hi


@pytest.mark.slow
def test_frontier_bands_widen_beyond_data(small_fit):
    from bayescale import plots

    idata, _ = small_fit
    fig = plots.plot_frontier(idata)
    ax = fig.axes[0]
    assert len(_bands(ax, "band90")) == 1 and len(_bands(ax, "band50")) == 1
    n = idata.constant_data["C"].size
    assert _points(ax) == n
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "loss" in ax.get_ylabel() and "nats" in ax.get_ylabel()
    assert "FLOP" in fig.axes[1].get_xlabel()  # the shared x axis sits under the width panel
    assert "chinchilla" in ax.get_title() and str(n) in ax.get_title()
    assert any("N" in a.get_ylabel() for a in fig.axes if a not in (ax, fig.axes[1]))  # colorbar
    xs, w = _band_halfwidth_rel(_bands(ax, "band90")[0])
    c_max = float(idata.constant_data["C"].max())
    assert xs.max() >= 99 * c_max  # two decades of extrapolation
    at_data = w[np.argmin(np.abs(np.log(xs / c_max)))]
    assert w[-1] > 1.5 * at_data  # the band visibly widens
    labels = ax.get_legend_handles_labels()[1]
    assert any("90%" in s for s in labels) and any("50%" in s for s in labels)


def test_isoflops_slices_and_optimum(small_fit):
    from bayescale import plots

    idata, _ = small_fit
    budgets = [1e19, 1e20, 1e21]
    fig = plots.plot_isoflops(idata, budgets=budgets, within=1.5)
    ax = fig.axes[0]
    assert len(_bands(ax)) == len(budgets)
    assert len([line for line in ax.lines if line.get_gid() == "median"]) == len(budgets)
    C = idata.constant_data["C"].values
    expected = sum(int(np.sum(np.abs(np.log(C / b)) <= np.log(1.5))) for b in budgets)
    assert _points(ax) == expected > 0
    assert len([c for c in ax.containers if c.lines[0].get_gid() == "N_opt"]) == len(budgets)
    assert ax.get_xscale() == "log" and ax.get_xlabel().startswith("N")


def test_isoflop_budgets_found_and_slices_reach_their_runs():
    from bayescale.plots import _isoflop_budgets

    # three sizes at 1e18 (within 1%), three at 1e20, and a grid with no shared budget
    N = np.array([1e6, 1e7, 1e8, 2e6, 2e7, 2e8, 5e6, 5e7, 3e8])
    C = np.array([1e18, 1.01e18, 0.995e18, 1e20, 1e20, 1.01e20, 3e17, 7e19, 4e21])
    assert _isoflop_budgets(N, C, 5).tolist() == [1e18, 1e20]
    assert _isoflop_budgets(N[:6], C[:6], 1).size == 1
    assert _isoflop_budgets(N[6:], C[6:], 5).size == 0
    # a second slice within the separation factor of a fuller one is left out
    N2 = np.r_[N[:6], 4e8, 3e6, 3e7, 3e8]
    C2 = np.r_[C[:6], 1e20, 1.5e20, 1.5e20, 1.5e20]
    assert _isoflop_budgets(N2, C2, 5, sep=2.25).tolist() == [1e18, 1e20]


def test_isoflops_default_budgets_cover_observed_runs(small_fit):
    from bayescale import plots

    idata, _ = small_fit
    fig = plots.plot_isoflops(idata)
    ax = fig.axes[0]
    N = idata.constant_data["N"].values
    C = idata.constant_data["C"].values
    medians = [line for line in ax.lines if line.get_gid() == "median"]
    assert 2 <= len(medians) <= 5
    for line in medians:
        budget = float(line.get_label().split("=")[1].split()[0])
        near = np.abs(np.log(C / budget)) <= np.log(1.5)
        x = line.get_xdata()
        if near.any():  # the curve spans every run drawn on its slice
            assert x.min() <= N[near].min() and x.max() >= N[near].max()


def test_allocation_references_and_bands(small_fit):
    from bayescale import plots

    idata, _ = small_fit
    fig = plots.plot_allocation(idata)
    axes = fig.axes[:3]
    for ax in axes:
        assert len(_bands(ax)) == 2
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        refs = [line for line in ax.lines if line.get_gid() == "reference"]
        assert len(refs) == 3
    labels = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "Kaplan" in labels and "0.73" in labels and "0.4565" in labels and "20 tokens" in labels
    # Kaplan's N ∝ C^0.73 reference has that slope on the log-log axes
    kap = next(line for line in axes[0].lines if "Kaplan" in (line.get_label() or ""))
    x, y = kap.get_data()
    slope = np.polyfit(np.log(x), np.log(y), 1)[0]
    np.testing.assert_allclose(slope, 0.73, atol=1e-6)
    assert [ax.get_ylabel().split(",")[0] for ax in axes] == ["N*", "D*", "D*/N*"]


def test_slices_pairs_trace_ppc(small_fit):
    from bayescale import plots

    idata, _ = small_fit
    fig = plots.plot_slices(idata, n_slices=3)
    for ax in fig.axes:
        assert len(_bands(ax)) == 3 and _points(ax) > 0 and ax.get_xscale() == "log"
    fig = plots.plot_pairs(idata, law="chinchilla")
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 15 and any("prior" in t.get_text() for t in fig.legends[0].get_texts())
    assert "chinchilla law" in fig.texts[-1].get_text() if fig.texts else True
    fig = plots.plot_pairs(idata, law="shared")
    assert len([a for a in fig.axes if a.get_visible()]) == 10  # E, A, B, alpha
    fig = plots.plot_trace(idata, law="kaplan")
    assert len(fig.axes) == 2 * 6
    fig = plots.plot_ppc(idata)
    n = idata.constant_data["N"].size
    assert [a.get_xscale() for a in fig.axes] == ["log"] * 3
    assert _points(fig.axes[1]) == n and _points(fig.axes[2]) == n
    assert fig.axes[1].get_xlabel().startswith("N") and fig.axes[2].get_xlabel().startswith("D")


@pytest.mark.slow
def test_plot_cli_writes_every_figure(small_fit, tmp_path, capsys):
    import json

    from bayescale.cli import main
    from bayescale.plots import FIGURES, PER_LAW

    _, path = small_fit
    assert (
        main(["plot", str(path), "--out", str(tmp_path / "figs"), "--format", "svg", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    laws = ("chinchilla", "kaplan", "shared")
    want = [f"{n}-{law}.svg" for n in FIGURES if n in PER_LAW for law in laws]
    want = [f"{n}.svg" for n in FIGURES if n not in PER_LAW] + want
    assert sorted(os.path.basename(p) for p in out["figures"]) == sorted(want)
    assert all(os.path.getsize(p) > 1000 for p in out["figures"])


def test_plot_cli_bad_input(tmp_path, capsys):
    from bayescale.cli import main

    bad = tmp_path / "x.nc"
    bad.write_text("not netcdf")
    assert main(["plot", str(bad)]) == 2
    assert "x.nc" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "missing.nc")]) == 2


@pytest.mark.slow
def test_compare_table_and_mismatch(small_fit, chinchilla_runs, tmp_path, capsys):
    import json

    import bayescale as bs
    from bayescale.cli import main

    idata, path = small_fit
    kap = bs.fit(
        chinchilla_runs, bs.FitConfig(law="kaplan", chains=2, warmup=200, draws=200), quiet=True
    )
    kpath = bs.save_posterior(kap, tmp_path / "kaplan.nc")
    assert main(["compare", str(path), str(kpath), "--out", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # the averaged file enters as its three laws, beside the one-law fit
    rows = {r["model"]: r for r in res["table"]}
    assert set(rows) == {"chinchilla:chinchilla", "chinchilla:kaplan", "chinchilla:shared", "kaplan"}
    assert res["table"][0]["elpd_diff"] == 0.0 and all(r["elpd_diff"] >= 0 for r in res["table"])
    assert all(r["pareto_k_bad"] >= 0 and r["se"] > 0 for r in res["table"])
    assert rows["kaplan"]["lfo_weight"] is None and rows["chinchilla:kaplan"]["lfo_weight"] > 0
    # the two Kaplan-law fits of the same data score alike
    assert abs(rows["kaplan"]["elpd_loo"] - rows["chinchilla:kaplan"]["elpd_loo"]) < 3
    assert os.path.getsize(res["figure"]) > 1000
    # a fit of other data cannot be compared by LOO
    other = bs.fit(
        chinchilla_runs.iloc[:100], bs.FitConfig(law="chinchilla", chains=1, warmup=50, draws=50), quiet=True
    )
    opath = bs.save_posterior(other, tmp_path / "other.nc")
    assert main(["compare", str(path), str(opath)]) == 2
    assert "different data" in capsys.readouterr().err


@pytest.fixture(scope="module")
def report_html(small_fit, tmp_path_factory):
    from bayescale.cli import main

    _, path = small_fit
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(path), "--out", str(out)]) == 0
    return out / "chinchilla-report.html"


@pytest.mark.slow
def test_report_is_self_contained(report_html, small_fit):
    from bayescale.plots import figure_jobs

    page = report_html.read_text()
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", page)) == len(figure_jobs(small_fit[0]))
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    for word in (
        "Data",
        "Parameters",
        "Diagnostics",
        "Compute-optimal allocation",
        "Laws and weights",
        "alpha_N",
        "beyond the runs",
    ):
        assert word in page
    # the allocation rows beyond the largest run are marked as such, the others not
    rows = re.findall(r"<tr( class='check')?><td>([0-9.e]+)( ⚠)?</td>", page)
    assert rows and all(bool(cls) == bool(mark) for cls, _, mark in rows)
    c_max = float(small_fit[0].constant_data["C"].max())
    assert all(bool(mark) == (float(c) > c_max) for _, c, mark in rows if float(c) >= 1.4e18)
    assert re.search(r"id='verdict' class='(ok|check)'", page)


CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)


def test_report_renders_in_chromium(report_html, small_fit, tmp_path):
    """Every image decodes and nothing overflows the page width, in a real browser."""
    if CHROMIUM is None:
        # .ci/run installs chromium and sets this, so CI can never skip the browser test silently
        if os.environ.get("BAYESCALE_REQUIRE_BROWSER"):
            pytest.fail("BAYESCALE_REQUIRE_BROWSER is set but chromium is not installed")
        pytest.skip("needs Debian's chromium (/usr/bin/chromium) for the browser test")
    probe = (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
        "const de = document.documentElement;"
        "const over = de.scrollWidth > de.clientWidth + 1"
        " || [...document.querySelectorAll('.scroll')].some(d => d.scrollWidth > d.clientWidth + 1);"
        "const p = document.createElement('pre'); p.id = 'probe';"
        "p.textContent = `IMAGES=${imgs.length} BAD=${bad} OVERFLOW=${over}`;"
        "document.body.appendChild(p);});</script>"
    )
    page = report_html.read_text().replace("</body>", probe + "</body>")
    probe_file = tmp_path / "probe.html"
    probe_file.write_text(page)
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1024,800",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe_file.as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r"IMAGES=(\d+) BAD=(\d+) OVERFLOW=(\w+)", res.stdout)
    assert m, f"probe not found; chromium stderr: {res.stderr[-2000:]}"
    from bayescale.plots import figure_jobs

    assert int(m.group(1)) == len(figure_jobs(small_fit[0]))
    assert int(m.group(2)) == 0
    assert m.group(3) == "false"
