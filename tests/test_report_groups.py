"""The report of a grouped posterior as a whole: population, one row per group and one for a new
group, the groups figure; and ``report --group G``, one group's full report, as before."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import subprocess

import numpy as np
import pytest

pytest.importorskip("matplotlib")

# the module's grouped fit takes ~20 s (most of it compiling the grouped model): the quick subset skips it
pytestmark = pytest.mark.slow

from bayescale.cli import main  # noqa: E402
from bayescale.inference import FitConfig, fit  # noqa: E402
from bayescale.models import GROUP_PARAMS  # noqa: E402
from bayescale.posterior import optimal  # noqa: E402
from bayescale.store import NEW_GROUP, group_view, groups_of, load_posterior, save_posterior  # noqa: E402

from .conftest import TRUE_CHINCHILLA  # noqa: E402
from .test_hierarchy import _simulate_groups  # noqa: E402


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """Three simulated groups of 14 runs, the Chinchilla law per group, short chains (2 x 300), saved
    and reloaded as the CLI reads it."""
    runs, _ = _simulate_groups("chinchilla", TRUE_CHINCHILLA, 3, 14, 5, {"L0": 0.1, "alpha": 0.05})
    idata = fit(runs, FitConfig(law="chinchilla", chains=2, warmup=300, draws=300, seed=2), quiet=True)
    path = tmp_path_factory.mktemp("grouped") / "grouped.nc"
    save_posterior(idata, path)
    return load_posterior(path), path


@pytest.fixture(scope="module")
def report(grouped, tmp_path_factory):
    """``bayescale report MODEL --json`` without --group: the JSON object and the page."""
    _, path = grouped
    out = tmp_path_factory.mktemp("report")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # capsys is per test; this fixture serves the module
        # short chains test the report, not the sampler: --allow-unconverged in case they fall short
        code = main(["report", str(path), "--out", str(out), "--json", "--allow-unconverged"])
    assert code == 0
    res = json.loads(buf.getvalue())  # exactly one object: json.loads refuses anything after it
    return res, (out / "grouped-report.html").read_text()


def _cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", " ", c) for c in re.findall(r"<td>(.*?)</td>", row)]


def _interval(cell: str) -> tuple[float, float, float]:
    """``median [q05, q95]`` of a table cell."""
    m = re.match(r"\s*([-0-9.e]+)(?: ⚠)?\s*\[([-0-9.e]+), ([-0-9.e]+)\]", cell)
    assert m, cell
    return tuple(float(x) for x in m.groups())


def _group_table(page: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The header and the ``(row class, cells)`` of the table of groups."""
    table = re.search(r"<div class='scroll' id='groups-table'>(.*?)</div>", page, re.S).group(1)
    head = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th>(.*?)</th>", table)]
    body = table.split("<tbody>")[1]
    rows = [(cls or "", _cells(r)) for cls, r in re.findall(r"<tr(?: class='([^']*)')?>(.*?)</tr>", body)]
    return head, rows


def test_grouped_report_has_every_group_and_a_new_one(grouped, report):
    idata, path = grouped
    res, page = report
    names = groups_of(idata)
    assert res["groups"] == names and res["report"].endswith("grouped-report.html")
    assert res["bytes"] == len(page.encode())
    head, rows = _group_table(page)
    assert head[:5] == ["group", "runs", "E", "a (N* ∝ C^a)", "sigma"] and "N*" in head
    assert [r[1][0].split()[0] for r in rows] == [*names, NEW_GROUP]
    # each group's runs, counted from the file
    run_of = idata.constant_data["group"].values.astype(str)
    assert [int(r[1][1]) for r in rows] == [int(np.sum(run_of == g)) for g in names] + [0]
    # the budget: the largest power of ten within two decades beyond the largest run
    C = 10.0 ** np.floor(np.log10(float(idata.constant_data["C"].max()) * 100))
    assert re.search(rf"at C = {C:.0e}".replace("e+", "e"), page)
    j = head.index("N*")
    for g, (_, cells) in zip(names, rows, strict=False):
        want = optimal(group_view(idata, g), [C])[0]
        got = _interval(cells[j])
        # three significant digits in the page
        assert got == pytest.approx((want["N_opt"]["q50"], want["N_opt"]["q05"], want["N_opt"]["q95"]), rel=6e-3)
        assert _interval(cells[j + 2])[0] == pytest.approx(want["loss"]["q50"], rel=6e-3)
        # E: that group's own draws, not the population's
        assert _interval(cells[2])[0] == pytest.approx(np.median(idata.posterior["g_E"].sel(group=g)), rel=6e-3)
    # a group with no runs: marked, and less certain of N* than every fitted group
    cls, new = rows[-1]
    assert "new" in cls.split() and "no runs" in new[0]
    width = lambda cells: np.log(_interval(cells[j])[2] / _interval(cells[j])[1])  # noqa: E731
    assert all(width(new) > width(cells) for _, cells in rows[:-1])
    want = optimal(group_view(idata, NEW_GROUP), [C])[0]["N_opt"]["q50"]  # seed 0, as `optimal --group new`
    assert _interval(new[j])[0] == pytest.approx(want, rel=6e-3)
    # rows beyond the runs are marked as the ungrouped allocation table marks them
    for cls, cells in rows:
        assert ("check" in cls.split()) == ("⚠" in cells[j]) == (cells[j + 3].strip() != "no")


def test_grouped_report_population_diagnostics_and_figure(grouped, report):
    idata, _ = grouped
    _, page = report
    for word in ("Population parameters", "How the groups differ", "Each group's parameters", "Diagnostics",
                 "Groups: compute-optimal allocation"):
        assert word in page
    assert re.search(r"id='verdict' class='(ok|check)'", page)
    # the pooling of every coordinate and its spread between groups
    pool = page.split("How the groups differ")[1].split("Each group's parameters")[0]
    rows = {c[0].strip(): c for c in map(_cells, re.findall(r"<tr>(.*?)</tr>", pool)) if c}
    assert set(rows) == set(GROUP_PARAMS["chinchilla"]) and all(c[1] == "pooled" for c in rows.values())
    tau = idata.posterior["tau_L0"].values.ravel()
    assert _interval(rows["L0"][2]) == pytest.approx(tuple(np.quantile(tau, [0.5, 0.05, 0.95])), rel=6e-3)
    # one figure, the groups side by side, inside the page: a PNG, and nothing to fetch
    imgs = re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", page)
    assert [a for a, _ in imgs] == ["groups"]
    png = base64.b64decode(imgs[0][1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page


def test_report_of_one_group_is_the_full_report(grouped, tmp_path, capsys):
    """``--group G``: one group's report as before (its runs, its allocation table, its figures)."""
    from bayescale.plots import figure_jobs

    idata, path = grouped
    g = groups_of(idata)[1]
    argv = ["report", str(path), "--out", str(tmp_path), "--group", g, "--allow-unconverged", "--json"]
    assert main([*argv, "--compute", "1e21", "1e22"]) == 0
    res = json.loads(capsys.readouterr().out)
    page = (tmp_path / "grouped-report.html").read_text()
    assert "groups" not in res and "groups-table" not in page and "Compute-optimal allocation" in page
    n_runs = int(np.sum(idata.constant_data["group"].values.astype(str) == g))
    assert re.search(rf"<td>runs</td><td>{n_runs}</td>", page)
    assert len(re.findall(r"<img ", page)) == len(figure_jobs(group_view(idata, g)))
    # the budgets asked for, each row that group's allocation
    alloc = re.findall(r"<tr(?: class='check')?><td>([0-9.e]+)(?: ⚠)?</td><td>([^<]*)</td>", page)
    assert [float(c) for c, _ in alloc] == [1e21, 1e22]
    want = optimal(group_view(idata, g), [1e22])[0]["N_opt"]["q50"]
    assert _interval(alloc[1][1])[0] == pytest.approx(want, rel=6e-3)


def test_grouped_report_at_budgets_asked_for(grouped, tmp_path, capsys):
    """``--compute`` gives the table of groups one set of columns per budget; a bad budget is exit 2."""
    idata, path = grouped
    assert main(["report", str(path), "--out", str(tmp_path), "--compute", "1e20", "3e21", "-q",
                 "--allow-unconverged"]) == 0
    head, rows = _group_table((tmp_path / "grouped-report.html").read_text())
    assert [h for h in head if h.startswith("N*")] == ["N* at 1e20", "N* at 3e21"]
    assert len(rows) == len(groups_of(idata)) + 1
    j = head.index("N* at 3e21")
    g = groups_of(idata)[0]
    assert _interval(rows[0][1][j])[0] == pytest.approx(optimal(group_view(idata, g), [3e21])[0]["N_opt"]["q50"],
                                                       rel=6e-3)
    with pytest.raises(SystemExit) as e:
        main(["report", str(path), "--out", str(tmp_path), "--compute", "-1"])
    assert e.value.code == 2 and "--compute" in capsys.readouterr().err


def test_grouped_report_renders_in_chromium(report, tmp_path):
    """The figure decodes, and neither the page nor the table of groups is wider than a 1024-pixel
    window, in a real browser."""
    from .test_plots import CHROMIUM

    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (/usr/bin/chromium) for the browser test")
    probe = ("<script>window.addEventListener('load', () => {"
             "const imgs = [...document.images], de = document.documentElement;"
             "const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
             "const t = document.getElementById('groups-table');"
             "const p = document.createElement('pre'); p.id = 'probe';"
             "p.textContent = `IMAGES=${imgs.length} BAD=${bad} PAGE=${de.scrollWidth > de.clientWidth + 1} "
             "TABLE=${t.scrollWidth > t.clientWidth + 1}`; document.body.appendChild(p);});</script>")
    page = tmp_path / "probe.html"
    page.write_text(report[1].replace("</body>", probe + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1024,800", "--virtual-time-budget=10000",
           "--dump-dom", page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r"IMAGES=(\d+) BAD=(\d+) PAGE=(\w+) TABLE=(\w+)", res.stdout)
    assert m, f"probe not found; chromium stderr: {res.stderr[-2000:]}"
    assert m.groups() == ("1", "0", "false", "false")
