"""Runs I/O: loading runs directories and tables, validation, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bayescale.errors import InputError
from bayescale.runs import RUN_SCHEMA, LoadReport, load_runs, write_json_atomic, write_run_record


def record(run_id: str, N: float = 1e6, D: float = 2e7, loss: float = 3.5, **kw) -> dict:
    return {"schema": RUN_SCHEMA, "run_id": run_id, "status": "completed", "group": "g",
            "N": N, "D": D, "C": 6 * N * D, "loss": loss, "seed": 0, "config": {"model": {}}, **kw}


def make_runs(tmp_path, n=8):
    for i in range(n):
        write_run_record(tmp_path / f"r{i}", record(f"r{i}", N=1e6 * 2**i, D=2e7 * 1.5**i, loss=4 - 0.1 * i))
    return tmp_path


def test_chinchilla_example_has_epochs_240_rows():
    df = load_runs("chinchilla", filter="kept_by_epoch == 1")
    assert len(df) == 240
    assert df.attrs["source"] == "chinchilla"
    # D = C / 6N in the shipped table
    np.testing.assert_allclose(df["C"], 6 * df["N"] * df["D"], rtol=1e-4)


def test_runs_directory_roundtrip(tmp_path):
    make_runs(tmp_path)
    df = load_runs(tmp_path)
    assert len(df) == 8
    assert list(df.columns[:6]) == ["run_id", "N", "D", "C", "loss", "group"]
    assert df.loc[df.run_id == "r3", "N"].item() == 8e6
    assert set(df["group"]) == {"g"}


def test_not_completed_runs_are_skipped_and_counted(tmp_path):
    make_runs(tmp_path, 6)
    write_run_record(tmp_path / "x", {**record("x"), "status": "running"})
    write_run_record(tmp_path / "y", {**record("y"), "status": "diverged", "loss": None, "reason": "nan"})
    rep = LoadReport(source=str(tmp_path))
    df = load_runs(tmp_path, report=rep)
    assert len(df) == 6
    assert rep.not_completed == {"running": 1, "diverged": 1}


def test_one_bad_run_refuses_the_load_and_names_it(tmp_path):
    make_runs(tmp_path, 6)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text(json.dumps({**record("bad"), "loss": -1}))
    with pytest.raises(InputError) as e:
        load_runs(tmp_path)
    assert "bad/run.json" in str(e.value) and "'loss'" in str(e.value)
    rep = LoadReport(source=str(tmp_path))
    df = load_runs(tmp_path, skip_invalid=True, report=rep)
    assert len(df) == 6 and len(rep.skipped) == 1 and "bad/run.json" in rep.skipped[0]


def test_every_problem_is_listed(tmp_path):
    make_runs(tmp_path, 6)
    for name, bad in [("b1", {"N": "many"}), ("b2", {"schema": "bayescale.run/9"})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({**record(name), **bad}))
    with pytest.raises(InputError) as e:
        load_runs(tmp_path)
    assert "2 invalid runs" in str(e.value) and "b1" in str(e.value) and "b2" in str(e.value)


def test_table_with_N_and_C_only_derives_D(tmp_path):
    p = tmp_path / "t.csv"
    pd.DataFrame({"N": [1e8, 2e8], "C": [6e18, 1.2e19], "loss": [3.0, 2.9]}).to_csv(p, index=False)
    df = load_runs(p)
    np.testing.assert_allclose(df["D"], [1e10, 1e10])


def test_parquet_table(tmp_path):
    p = tmp_path / "t.parquet"
    pd.DataFrame({"N": [1e8, 2e8], "D": [1e10, 2e10], "loss": [3.0, 2.9], "group": ["a", "b"]}).to_parquet(p)
    df = load_runs(p)
    assert list(df["group"]) == ["a", "b"]


def test_dataframe_source_and_filter():
    df = load_runs(pd.DataFrame({"N": [1e8, 2e8, 4e8], "D": [1e10] * 3, "loss": [3.0, 2.9, 2.8]}), filter="N > 1.5e8")
    assert len(df) == 2


def test_atomic_write_leaves_no_temp_files_and_keeps_old_on_failure(tmp_path):
    p = tmp_path / "run.json"
    write_json_atomic(p, {"a": 1})
    with pytest.raises(ValueError):  # NaN is refused by allow_nan=False mid-write
        write_json_atomic(p, {"a": float("nan")})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["run.json"]


def test_write_run_record_validates_completed_runs(tmp_path):
    with pytest.raises(InputError, match="'D'"):
        write_run_record(tmp_path / "r", record("r", D=0))
