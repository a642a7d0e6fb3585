"""Leave-one-group-out (``compare --by-group``): the score is the joint predictive density of a
left-out group's runs, and it ranks pooling choices by how well they predict a group they have
not seen."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import logsumexp

from bayescale.cli import main
from bayescale.errors import InputError
from bayescale.inference import FitConfig, fit, pointwise_log_lik
from bayescale.logo import compare_by_group, group_labels, leave_one_group_out
from bayescale.models import Anchors
from bayescale.store import save_posterior

from .conftest import TRUE_CHINCHILLA
from .test_hierarchy import _simulate_groups

SMALL = {"chains": 2, "warmup": 300, "draws": 200}


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """Three groups around one population, fitted pooled, as one law for all, and separately."""
    runs, _ = _simulate_groups("chinchilla", TRUE_CHINCHILLA, 3, 12, 7, {"L0": 0.05, "alpha": 0.04})
    d = tmp_path_factory.mktemp("logo")
    paths = {}
    for name, opts in {"pooled": {}, "one": {"share": ("all",)}, "separate": {"separate": ("all",)}}.items():
        idata = fit(runs, FitConfig(law="chinchilla", seed=0, **SMALL, **opts), quiet=True)
        paths[name] = d / f"{name}.nc"
        save_posterior(idata, paths[name])
    return runs, paths


@pytest.mark.slow
def test_logo_ranks_pooling_and_matches_a_direct_refit(grouped, tmp_path, capsys):
    runs, paths = grouped
    from bayescale.store import load_posterior

    models = {k: load_posterior(p) for k, p in paths.items()}
    res = compare_by_group(models, warmup=250, draws=150)
    rows = {r["model"]: r for r in res["table"]}
    assert res["groups"] == ["g0", "g1", "g2"]
    for r in rows.values():
        assert set(r["per_group"]) == {"g0", "g1", "g2"} and r["n_runs"] == {"g0": 12, "g1": 12, "g2": 12}
        assert r["elpd_logo"] == pytest.approx(sum(r["per_group"].values()), abs=1e-9)
    # a separate fit knows nothing of a new group: its runs are scored under the prior, far worse
    # than under the population (12 runs with 1% noise: tens of nats)
    assert rows["pooled"]["elpd_logo"] > rows["separate"]["elpd_logo"] + 30
    assert res["table"][0]["model"] != "separate" and rows[res["table"][0]["model"]]["elpd_diff"] == 0.0
    assert rows["separate"]["dse"] > 0

    # the one-law-for-all score of g1 equals a direct computation: the law refitted to g0 and g2
    # alone, g1's 12 runs scored jointly (Monte Carlo error of a 1600-draw joint density: ~1 nat)
    keep = runs[runs.group != "g1"].reset_index(drop=True)
    out = runs[runs.group == "g1"]
    direct = fit(keep.drop(columns="group"), FitConfig(law="chinchilla", seed=3, chains=2, warmup=300, draws=800),
                 quiet=True)
    samples = {k: np.asarray(v.values).reshape(-1) for k, v in direct.posterior.data_vars.items()}
    from bayescale.store import metadata

    ll = pointwise_log_lik("chinchilla", samples, np.log(out.N.to_numpy()), np.log(out.D.to_numpy()),
                           np.log(out.loss.to_numpy()), anchors=Anchors(**metadata(direct)["anchors"]),
                           likelihood="student_t", nu=4.0)
    joint = ll.sum(axis=1)
    expect = float(logsumexp(joint) - math.log(joint.size))
    assert rows["one"]["per_group"]["g1"] == pytest.approx(expect, abs=1.5)

    # through the CLI: the LOO table, then the by-group table, and one JSON object with --json
    assert main(["compare", *map(str, paths.values()), "--by-group", "--json", "-q"]) == 0
    obj = json.loads(capsys.readouterr().out)
    # pooling predicts a new group best (here by about 35 nats); one law for all and separate fits
    # may come in either order: g0, the group far from the other two, scores -27.4 under one law for
    # all against 3.3 under separate fits and 18.2 pooled (totals 15.2 / 30.8 / 66.1, dse 43)
    by = obj["by_group"]["table"]
    assert by[0]["model"] == "pooled" and {r["model"] for r in by} == {"pooled", "one", "separate"}
    assert [r["elpd_logo"] for r in by] == sorted((r["elpd_logo"] for r in by), reverse=True)
    assert {r["model"] for r in obj["table"]} == {"pooled", "one", "separate"}


@pytest.mark.slow
def test_by_group_needs_groups(chinchilla_fit):
    idata, _ = chinchilla_fit
    with pytest.raises(InputError, match="--by-group needs groups"):
        group_labels({"a": idata, "b": idata})


@pytest.mark.slow
def test_by_group_refuses_an_ungrouped_pair_through_the_cli(chinchilla_fit, tmp_path, capsys):
    _, path = chinchilla_fit
    b = tmp_path / "b.nc"
    b.write_bytes(path.read_bytes())
    assert main(["compare", str(path), str(b), "--by-group", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--by-group needs groups" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_logo_takes_one_law(grouped):
    from bayescale.store import load_posterior

    runs, paths = grouped
    idata = load_posterior(paths["pooled"])
    with pytest.raises(InputError, match="group labels for"):
        leave_one_group_out(idata, np.array(["g0"] * 3))
