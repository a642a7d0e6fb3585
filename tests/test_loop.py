"""The design loop: replay against a table, the live loop against the trainer (resumable), refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bayescale.errors import InputError
from tests.conftest import TRUE_CHINCHILLA, simulate

# tiny sampler settings and one law: these tests check the loop's bookkeeping, not the posterior's
# accuracy (test_default_refits_the_averaged_family runs the default model)
SAMPLER = ["--law", "chinchilla", "--chains", "4", "--warmup", "200", "--draws", "200"]


def _main(argv: list[str], **extra) -> int:
    """Run ``bayescale loop`` as the console script does; ``extra`` sets options the command line
    has no flag for (a hook that stops the loop mid-run)."""
    from bayescale.cli import build_parser, dispatch

    args = build_parser().parse_args(["loop", *argv])
    for k, v in extra.items():
        setattr(args, k, v)
    return dispatch(args)


@pytest.fixture(scope="module")
def pool_csv(tmp_path_factory):
    """40 runs simulated from a Chinchilla law (1% noise): a table to replay."""
    df = simulate("chinchilla", TRUE_CHINCHILLA, 40, 0.01, seed=3)
    path = tmp_path_factory.mktemp("pool") / "pool.csv"
    df.to_csv(path, index=False)
    return path, df


def test_parse_budget():
    from bayescale.loop_cli import parse_budget

    assert parse_budget("3e13") == (3e13, False)
    assert parse_budget(" 5% ") == (5.0, True)
    for bad in ("-1", "0", "abc", "150%", "nan"):
        with pytest.raises(InputError, match="--budget"):
            parse_budget(bad)


@pytest.mark.slow
def test_oracle_replay_spends_within_budget_and_narrows(pool_csv, tmp_path, capsys):
    path, df = pool_csv
    out = tmp_path / "loop"
    rc = _main(["--oracle", str(path), "--budget", "10%", "--init", "8", "--target-compute", "1e22",
                "--out", str(out), "--json", *SAMPLER])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(captured.out)  # exactly one JSON object
    cost = 6 * df["N"].to_numpy() * df["D"].to_numpy()
    budget = 0.1 * cost.sum()
    assert res["budget"] == pytest.approx(budget, rel=1e-12)
    its = res["iterations"]
    assert len(its) >= 2
    chosen = [c for it in its for c in it["chosen"]]
    # each chosen row is a table row, never one of the start rows, never twice, with the table's loss and cost
    rows = [c["row"] for c in chosen]
    start = list(np.argsort(cost, kind="stable")[:8])
    assert res["start_rows"] == [int(i) for i in start]
    assert len(set(rows)) == len(rows) and not set(rows) & set(start)
    for c in chosen:
        assert c["loss"] == pytest.approx(df["loss"].iloc[c["row"]], rel=1e-12)
        assert c["cost"] == pytest.approx(cost[c["row"]], rel=1e-12)
    spent = sum(c["cost"] for c in chosen)
    assert res["flops_spent"] == pytest.approx(spent, rel=1e-9) and spent <= budget * (1 + 1e-9)
    assert [it["flops_spent"] for it in its] == sorted(it["flops_spent"] for it in its)
    assert res["runs_final"] == 8 + len(chosen)
    # the runs it bought narrowed N*(1e22): the final interval is narrower than the first
    assert its[-1]["objective"]["width90"] < its[0]["objective"]["width90"]
    assert res["final"] == its[-1]["objective"]
    assert {p.name for p in out.iterdir()} >= {"posterior.nc", "trace.json", "trajectory.png"}
    trace = json.loads((out / "trace.json").read_text())
    assert trace["iterations"] == its
    import bayescale as bs

    post = bs.load_posterior(out / "posterior.nc")
    assert int(post.constant_data["N"].size) == res["runs_final"]


@pytest.mark.slow
def test_stop_width_stops_early(pool_csv, capsys):
    path, _ = pool_csv
    rc = _main(["--oracle", str(path), "--budget", "50%", "--init", "8",
                "--stop-width", "100", "--json", *SAMPLER])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    df = pd.read_csv(path)
    c = np.sort(6 * df["N"].to_numpy() * df["D"].to_numpy())
    assert res["target_compute"] == pytest.approx(100 * c[7], rel=1e-9)  # 100x the largest of the 8 start rows
    assert len(res["iterations"]) == 1 and res["flops_spent"] == 0.0
    assert "--stop-width" in res["stopped"]


@pytest.mark.slow
def test_default_refits_the_averaged_family(pool_csv, tmp_path, capsys):
    """Without --law the loop refits what ``bayescale fit`` fits by default, the averaged family, from
    the 3 cheapest rows (fewer than fit accepts: a loop's start), every law weighed at every refit."""
    import bayescale as bs
    from bayescale.laws import LAWS, compute_optimal
    from bayescale.store import metadata

    path, df = pool_csv
    out = tmp_path / "loop"
    total = float((6 * df["N"] * df["D"]).sum())  # one batch buys (nearly) the whole budget: two or three refits
    rc = _main(["--oracle", str(path), "--budget", "5%", "--batch-budget", f"{0.05 * total:.17g}",
                "--target-compute", "1e22", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(captured.out)
    assert res["law"] == "averaged" and len(res["start_rows"]) == 3
    its = res["iterations"]
    assert len(its) >= 2 and its[0]["runs"] == 3
    meta = metadata(bs.load_posterior(out / "posterior.nc"))
    assert meta["law"] == "averaged" and set(meta["laws"]) == set(LAWS)
    assert sum(v["weight"] for v in meta["laws"].values()) == pytest.approx(1.0, abs=1e-9)
    assert meta["n_obs"] == res["runs_final"] == 3 + sum(len(it["chosen"]) for it in its)
    # the family's interval narrows as the loop buys runs, and holds the simulating law's N*(1e22)
    first, last = its[0]["objective"], its[-1]["objective"]
    assert last["width90"] < first["width90"]
    truth = float(compute_optimal("chinchilla", TRUE_CHINCHILLA, 1e22)["N_opt"])
    assert last["q05"] <= truth <= last["q95"]


@pytest.mark.parametrize("argv, field, text", [
    (["--budget", "1e20"], "--runs", "exactly one of"),
    (["--budget", "1e20", "--runs", "RUNS", "--oracle", "POOL"], "--oracle", "exactly one of"),
    (["--oracle", "POOL", "--budget", "1"], "--budget", "below the cheapest candidate"),
    (["--oracle", "POOL", "--budget", "5%", "--init", "40"], "--init", "no candidates inside the bounds"),
    (["--oracle", "POOL", "--budget", "5%", "--max-compute", "1"], "--max-compute", "no candidates inside"),
    (["--oracle", "NOLOSS", "--budget", "5%"], "loss", "loss"),
    (["--oracle", "POOL", "--budget", "5%", "--objective", "loss_at"], "--target", "needs --target"),
])
def test_refusals(pool_csv, tmp_path, capsys, argv, field, text):
    path, df = pool_csv
    noloss = tmp_path / "noloss.csv"
    df[["N", "D"]].to_csv(noloss, index=False)
    argv = [{"POOL": str(path), "NOLOSS": str(noloss), "RUNS": str(tmp_path / "r")}.get(a, a) for a in argv]
    rc = _main([*argv, "--json"])
    cap = capsys.readouterr()
    assert rc == 2
    err = json.loads(cap.out)
    assert err["field"] == field and text in err["error"]
    assert len(cap.err.strip().splitlines()) == 1 and "Traceback" not in cap.err


@pytest.mark.slow
def test_refuses_an_unconverged_fit(pool_csv, capsys):
    path, _ = pool_csv
    rc = _main(["--oracle", str(path), "--budget", "5%", "--init", "8", "--chains", "2", "--warmup", "3",
                "--draws", "10", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 2
    assert "has not converged" in cap.err and len(cap.err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# the live loop: tiny models on a toy corpus


@pytest.fixture(scope="module")
def toy_plan(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("tokenizers")
    from tests.conftest import write_toy_corpus

    root = tmp_path_factory.mktemp("live")
    write_toy_corpus(root / "txt")
    plan = root / "plan.toml"
    plan.write_text(f"""
[defaults]
data = "{root / 'txt'}"
vocab_size = 300
context = 16
seed = 0
batch_size = 8
eval_tokens = 512
threads = 1
ckpt_seconds = 1e9

[[grid]]
shapes = [{{n_layer = 1, d_model = 8, n_head = 1}}, {{n_layer = 1, d_model = 16, n_head = 2}},
          {{n_layer = 2, d_model = 24, n_head = 2}}]
tokens = [640, 10240]
""")
    return plan, root


class _Killed(BaseException):
    """A kill: not an error the CLI reports (it is not an Exception), it ends the process."""


@pytest.mark.slow
def test_live_loop_trains_chosen_runs_and_resumes(toy_plan, tmp_path, monkeypatch, capsys):
    """>= 3 runs chosen by the design are trained and refitted; a loop killed after its first chosen
    run, re-run with the same command, ends with the same runs directory as an uninterrupted one."""
    plan, root = toy_plan
    monkeypatch.setenv("BAYESCALE_CACHE", str(root / "cache"))
    argv = ["--plan", str(plan), "--points", "5", "--budget", "3e8", "--batch-budget", "6e7", "--init", "6",
            "--target-compute", "1e10", "--allow-unconverged", "--json", *SAMPLER]

    whole = tmp_path / "whole"
    assert _main(["--runs", str(whole), *argv]) == 0
    res = json.loads(capsys.readouterr().out)
    chosen = [c["run_id"] for it in res["iterations"] for c in it["chosen"]]
    assert len(chosen) >= 3 and len(res["iterations"]) >= 3  # several refits, each after a chosen batch
    state = json.loads((whole / "loop.json").read_text())
    assert len(state["start"]) == 6 and not set(state["start"]) & set(chosen)
    ids_whole = sorted(p.name for p in whole.iterdir() if (p / "run.json").exists())
    assert ids_whole == sorted(state["start"] + chosen)
    for rid in chosen:  # each chosen run is the ladder entry the design valued: the same (N, D)
        rec = json.loads((whole / rid / "run.json").read_text())
        c = next(c for it in res["iterations"] for c in it["chosen"] if c["run_id"] == rid)
        assert rec["status"] == "completed" and (rec["N"], rec["D"]) == (c["N"], c["D"])
    spent = sum(6.0 * c["N"] * c["D"] for it in res["iterations"] for c in it["chosen"])
    assert res["flops_spent"] == pytest.approx(spent) and spent <= 3e8

    killed = tmp_path / "killed"
    trained: list[str] = []

    def stop_after_first_chosen(rec):
        trained.append(rec["run_id"])
        if len(trained) == 7:  # the 6 start runs, then the first run the design chose
            raise _Killed

    with pytest.raises(_Killed):
        _main(["--runs", str(killed), *argv], after_run=stop_after_first_chosen)
    capsys.readouterr()
    partial = sorted(p.name for p in killed.iterdir() if (p / "run.json").exists())
    assert len(partial) == 7 and len(partial) < len(ids_whole)
    assert _main(["--runs", str(killed), *argv]) == 0
    res2 = json.loads(capsys.readouterr().out)
    ids_killed = sorted(p.name for p in killed.iterdir() if (p / "run.json").exists())
    assert ids_killed == ids_whole
    assert res2["flops_spent"] == pytest.approx(res["flops_spent"])
    # the same losses, run by run (same machine, same thread count: the trainer is bitwise repeatable)
    for rid in ids_whole:
        a = json.loads((whole / rid / "run.json").read_text())["loss"]
        b = json.loads((killed / rid / "run.json").read_text())["loss"]
        assert a == b
    # a re-run of a finished loop trains nothing more and changes nothing
    assert _main(["--runs", str(killed), *argv]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in killed.iterdir() if (p / "run.json").exists()) == ids_whole

    # other settings on the same directory are refused, not silently mixed
    rc = _main(["--runs", str(killed), *[a if a != "3e8" else "4e8" for a in argv]])
    cap = capsys.readouterr()
    assert rc == 2 and "other settings (budget)" in cap.out


def test_ladder_entries_are_what_the_trainer_trains(toy_plan):
    from bayescale.loop import Ladder
    from bayescale.train.model import non_embedding_params

    plan, _ = toy_plan
    lad = Ladder.from_plan(plan, points=5)
    entries = lad.entries()
    assert len(lad.shapes) == 3 and lad.tokens == (640.0, 10240.0)
    assert len(entries) == 15
    for e in entries:
        assert e["N"] == non_embedding_params(e["model"])
        # whole steps of 8 sequences x 16 tokens
        assert e["D"] % 128 == 0 and e["D"] <= e["train"].tokens < e["D"] + 128
    assert pd.Series([e["run_id"] for e in entries]).is_unique


def test_default_target_budget_is_fixed_at_the_start():
    """N*(C) with C = 100x the largest start run, for the whole loop: not moved up by the runs it buys."""

    from bayescale.loop import Objective, fix_target

    start = pd.DataFrame({"N": [1e6, 4e6], "D": [2e7, 1e7], "loss": [4.0, 3.8]})
    fixed = fix_target(Objective("n_opt"), start)
    assert fixed.target_compute == pytest.approx(100 * 6 * 4e6 * 1e7, rel=1e-12)
    assert fix_target(fixed, start.assign(N=[1e9, 1e9])) is fixed  # once fixed, later runs do not move it
    with_c = start.assign(C=[5e14, 9e14])  # a table's own C wins over 6ND
    assert fix_target(Objective("d_opt"), with_c).target_compute == pytest.approx(9e16, rel=1e-12)
    assert fix_target(Objective("n_opt", target_compute=1e22), start).target_compute == 1e22
    assert fix_target(Objective("loss_at"), start).target_compute is None
