"""A new user's first hour (issue 11): tables as they come, units, short error messages."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayescale.cli import main
from bayescale.errors import InputError, InputErrors
from bayescale.runs import RUN_SCHEMA, load_runs, parse_columns

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/data")
ATHENA = SHARED / "isoflops-open-athena" / "isoflops_extract.csv"
GADRE = SHARED / "gadre2024-overtraining" / "models_loss.csv"


def good(n=8, **cols) -> pd.DataFrame:
    """n plausible runs: N from 1e7 parameters up, 100 tokens per parameter down, loss 4 nats down."""
    df = pd.DataFrame({"N": [1e7 * 2**i for i in range(n)], "D": [1e9 * 1.5**i for i in range(n)],
                       "loss": [4.0 - 0.1 * i for i in range(n)]})
    for k, v in cols.items():
        df[k] = v
    return df


def write(tmp_path, df, name="t.csv") -> Path:
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


def message(source, **kw) -> InputError:
    with pytest.raises(InputError) as e:
        load_runs(source, **kw)
    return e.value


# --------------------------------------------------------------------------------------------
# 1. tables as they come


def test_parse_columns_reads_pairs():
    assert parse_columns("N=params, D=tokens,loss=val_loss") == {"N": "params", "D": "tokens", "loss": "val_loss"}
    # keys are bayescale's names, matched regardless of case; values are kept as written
    assert parse_columns("n=Params,LOSS=Val Loss,group=dataset,loss_se=se") == {
        "N": "Params", "loss": "Val Loss", "group": "dataset", "loss_se": "se"}


@pytest.mark.parametrize("text, needle", [
    ("N", "expected KEY=COLUMN, e.g. N=params; got 'N'"),
    ("N=params,,D=tokens", "expected KEY=COLUMN"),
    ("", "expected KEY=COLUMN pairs separated by commas"),
    ("X=params", "unknown name 'X'; expected one of N, D, loss, C, group, run_id, loss_se, loss_lo95, loss_hi95"),
    ("N=params,n=p2", "N is given twice ('params' and 'p2')"),
    ("N=params,D=params", "column 'params' is mapped to both N and D"),
])
def test_parse_columns_refuses_bad_text(text, needle):
    with pytest.raises(InputError) as e:
        parse_columns(text)
    assert e.value.field == "--columns"
    assert needle in str(e.value)


def test_columns_mapping_as_text_or_dict(tmp_path):
    t = good().rename(columns={"N": "params", "D": "tokens", "loss": "val_loss"})
    t["budget"] = 6 * t["params"] * t["tokens"]
    p = write(tmp_path, t)
    a = load_runs(p, columns="N=params,D=tokens,loss=val_loss,C=budget")
    b = load_runs(t, columns={"N": "params", "D": "tokens", "loss": "val_loss"})
    np.testing.assert_array_equal(a["N"], t["params"])
    np.testing.assert_array_equal(b["D"], t["tokens"])
    np.testing.assert_array_equal(a["C"], t["budget"])
    assert list(a.columns[:6]) == ["run_id", "N", "D", "C", "loss", "group"]


def test_mapped_column_wins_and_the_old_one_is_kept(tmp_path):
    t = good()
    t["N_total"] = t["N"] * 1.3
    df = load_runs(write(tmp_path, t), columns="N=N_total")
    np.testing.assert_allclose(df["N"], t["N"] * 1.3)
    np.testing.assert_array_equal(df["N_orig"], t["N"])
    # a swap maps both at once
    sw = load_runs(good().rename(columns={"N": "D", "D": "N"}), columns="N=D,D=N")
    np.testing.assert_array_equal(sw["N"], good()["N"])


def test_mapped_column_that_is_not_there(tmp_path):
    p = write(tmp_path, good())
    e = message(p, columns="N=params")
    assert e.field == "--columns" and e.file == str(p)
    assert str(e) == f"{p}: field '--columns': N=params: no such column (found: N, D, loss)"


def test_column_names_match_regardless_of_case_where_unambiguous(tmp_path):
    df = load_runs(write(tmp_path, good().rename(columns={"N": "n", "D": "d", "loss": "Loss"})))
    np.testing.assert_array_equal(df["loss"], good()["loss"])
    t = good().rename(columns={"loss": "Loss"})
    t["LOSS"] = t["Loss"]
    e = message(write(tmp_path, t, "amb.csv"))
    assert "missing column(s) loss" in str(e)
    assert "columns 'Loss', 'LOSS' differ only by case, so bayescale does not guess" in str(e)
    assert "--columns loss=<column>" in str(e)


def test_tsv_and_json_lines_tables(tmp_path):
    t = good(group=["a", "b"] * 4)
    tsv = tmp_path / "t.tsv"
    t.to_csv(tsv, sep="\t", index=False)
    for name in ("t.jsonl", "t.ndjson"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in t.to_dict("records")))
    for name in ("t.tsv", "t.jsonl", "t.ndjson"):
        df = load_runs(tmp_path / name)
        np.testing.assert_array_equal(df["N"], t["N"])
        assert list(df["group"]) == ["a", "b"] * 4
    (tmp_path / "e.jsonl").write_text("")
    assert "the file is empty" in str(message(tmp_path / "e.jsonl"))


def test_missing_columns_suggest_a_mapping(tmp_path):
    t = pd.DataFrame({"tokens": [2e9, 4e9], "params": [1e8, 2e8], "budget": [1.2e18, 4.8e18], "loss": [3.0, 2.9]})
    p = write(tmp_path, t)
    assert str(message(p)) == (
        f"{p}: field 'N': missing column(s) N, D; expected N, D, loss (found: tokens, params, budget, loss); "
        "try --columns N=params,D=tokens,loss=loss,C=budget")
    # a non-embedding parameter count is preferred; per-row bounds and multipliers are not a loss or D
    g = pd.DataFrame({"N_params": [2e8], "N_params_no_embed": [1.5e8], "token_multiplier": [20.0],
                      "D_tokens": [3e9], "loss_lo95_val": [2.9], "loss_val": [3.0], "dataset": ["c4"]})
    assert str(message(g)).endswith("try --columns N=N_params_no_embed,D=D_tokens,loss=loss_val")


def test_loss_se_is_validated(tmp_path):
    df = load_runs(good(loss_se=[0.01] * 7 + [np.nan]))
    assert df["loss_se"].dtype == float and df["loss_se"].isna().sum() == 1
    e = message(good(loss_se=[0.01, -0.01] + [0.01] * 6))
    assert e.row == 1 and e.field == "loss_se"
    assert "expected a finite number > 0, got -0.01" in str(e)


@pytest.mark.skipif(not (ATHENA.exists() and GADRE.exists()), reason="shared data not present")
def test_real_tables_load_with_a_mapping():
    a = load_runs(ATHENA, columns="N=params,D=tokens,loss=loss,C=budget")
    raw = pd.read_csv(ATHENA)
    assert len(a) == len(raw)
    np.testing.assert_array_equal(a["C"], raw["budget"])
    g = load_runs(GADRE, columns="N=N_params_no_embed,D=D_tokens,loss=loss_c4_val,group=dataset")
    assert len(g) == 104 and g["group"].nunique() == 3
    assert str(message(GADRE)).endswith("try --columns N=N_params_no_embed,D=D_tokens,loss=loss_c4_val,C=flops_6ND")


def test_shipped_data_pass_the_unit_checks():
    assert len(load_runs(ROOT / "runs")) >= 30
    assert len(load_runs("chinchilla")) == 245  # rows down to 0.036 tokens per parameter, median 22.5
    for f in glob.glob(str(ROOT / "tests" / "data" / "*.csv")):
        assert len(load_runs(f)) > 0
    # the shipped study's smallest model has ~3e3 parameters: small, but a language model;
    # a runs directory is not a table to map
    e = message(ROOT / "runs", columns="N=N")
    assert e.field == "--columns" and "runs directory" in str(e)


# --------------------------------------------------------------------------------------------
# 2. units


def test_C_must_be_about_6ND():
    t = good()
    load_runs(t.assign(C=6 * t.N * t.D * 0.75))  # forward/backward accounting differs a little: fine
    e = message(t.assign(C=6 * t.N * t.D * 1e-6))  # whole table: one error, not skippable
    assert e.row == 0 and e.field == "C"
    assert str(e) == ("<DataFrame>: row 0 (line 2): field 'C': C = 6e+10 but 6ND = 6e+16 (C/6ND = 1e-06; "
                      "N = 1e+07, D = 1e+09), and 8 of 8 rows disagree by more than 10x; C should be the "
                      "training FLOPs ~ 6ND, or N/D are in wrong units (N in millions? D in billions?)")
    with pytest.raises(InputError):
        load_runs(t.assign(C=6 * t.N * t.D * 1e-6), skip_invalid=True)
    one = t.assign(C=6 * t.N * t.D)
    one.loc[3, "C"] *= 50
    e = message(one)  # one row: that row, skippable
    assert e.row == 3 and "C/6ND = 50" in str(e) and "C should be the training FLOPs ~ 6ND" in str(e)
    assert len(load_runs(one, skip_invalid=True)) == 7


def test_N_in_millions_with_language_model_losses():
    t = good()
    assert len(load_runs(t.assign(N=t.N / 1e6, loss=t.loss / 10))) == 8  # not nats of a language model
    e = message(t.assign(N=t.N / 1e6))
    assert e.field == "N" and e.row is None
    assert str(e) == ("<DataFrame>: field 'N': N = 120 parameters (the median of 8 rows) is implausible for a "
                      "language model (median loss 3.65 nats); is N in millions? multiply by 1e6 (or use "
                      "--columns to pick the parameter-count column)")
    t.loc[2, "N"] = 350.0
    e = message(t)
    assert e.row == 2 and str(e).startswith(
        "<DataFrame>: row 2 (line 4): field 'N': N = 350 parameters is implausible for a language model "
        "(loss 3.8 nats); is N in millions? multiply by 1e6 (or use --columns to pick the parameter-count column)")


def test_N_in_millions_for_large_models():
    N = np.array([1.3e9, 2.7e9, 6.7e9, 1.3e10, 3e10, 7e10])
    t = pd.DataFrame({"N": N, "D": 2e4 * N, "loss": np.linspace(2.5, 2.0, 6)})
    assert len(load_runs(t)) == 6  # 2e4 tokens per parameter: heavily over-trained, but possible
    e = message(t.assign(N=N / 1e6))  # N >= 1e3 "parameters", but 2e10 tokens per parameter
    assert e.field == "N"
    assert str(e) == ("<DataFrame>: field 'N': the median D/N is 2e+10 tokens per parameter (median N = 9850, "
                      "D = 1.97e+14); no language model is trained on over 1e+06 tokens per parameter: is N in "
                      "millions? multiply by 1e6 (or use --columns to pick the parameter-count column)")


def test_N_and_D_swapped_is_caught_for_the_whole_table(tmp_path):
    # Marin-like: a quarter of the rows have D < N, the median is 4.4 tokens per parameter: fine
    t = pd.DataFrame({"N": [4e8, 4e8, 1e8, 1e8], "D": [2e8, 8e9, 2e9, 8e9], "loss": [3.5, 3.0, 3.3, 3.1]})
    load_runs(t)
    # swapped with 2 to 40 tokens per parameter: no single row is below D = N/100, so only the table shows it
    params = good()["N"]
    sw = pd.DataFrame({"params": params * np.linspace(2, 40, 8), "tokens": params, "loss": good()["loss"]})
    p = write(tmp_path, sw)  # the "params" column holds the token counts and vice versa
    e = message(p, columns="N=params,D=tokens")
    assert str(e) == (f"{p}: N and D look swapped: the median D/N is 0.0484 tokens per parameter and 8 of 8 rows "
                      "have D < N, but language-model studies train on more tokens than parameters; "
                      "try --columns N=tokens,D=params")
    assert len(load_runs(p, columns="N=tokens,D=params")) == 8


def test_unit_errors_exit_2_with_one_line(tmp_path, capsys):
    t = good()
    p = write(tmp_path, t.assign(N=t.N / 1e6))
    assert main(["fit", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is N in millions? multiply by 1e6" in err and str(p) in err


# --------------------------------------------------------------------------------------------
# 3. short messages, plain numbers


def test_many_problems_make_a_short_message(tmp_path):
    t = good(85)
    t["N"] = 1e8
    t["D"] = 20.0  # billions of tokens
    p = write(tmp_path, t)
    e = message(p)
    assert isinstance(e, InputErrors) and len(e.problems) == 85
    lines = str(e).splitlines()
    assert len(lines) == 5
    assert lines[0] == (f"85 invalid runs in {p} (nothing was loaded; --skip-invalid loads the valid runs "
                        "and reports the rest):")
    assert lines[1].startswith("  row 0 (line 2): field 'D': D = 20 tokens is below N/100")
    assert lines[3].startswith("  row 2 (line 4)")
    assert lines[4] == "  ... and 82 more"
    assert all(str(p) in str(q) for q in e.problems)  # each problem still names the file


def test_four_problems_are_all_shown(tmp_path):
    t = good()
    t.loc[:3, "loss"] = -1.0
    lines = str(message(t)).splitlines()
    assert len(lines) == 5 and "... and" not in str(lines) and lines[-1].startswith("  row 3 (line 5)")


def test_a_runs_directory_names_itself_and_each_file(tmp_path):
    for i in range(6):
        (tmp_path / f"b{i}").mkdir()
        (tmp_path / f"b{i}" / "run.json").write_text(json.dumps(
            {"schema": RUN_SCHEMA, "run_id": f"b{i}", "status": "completed", "N": 1e8, "D": 1e10, "loss": -1}))
    e = message(tmp_path)
    lines = str(e).splitlines()
    assert lines[0].startswith(f"6 invalid runs in {tmp_path} (")
    assert lines[1] == f"  {tmp_path / 'b0' / 'run.json'}: field 'loss': expected a finite number > 0, got -1"
    assert lines[-1] == "  ... and 3 more" and len(e.problems) == 6


def test_numbers_print_plainly():
    t = good()
    t.loc[1, "loss"] = np.nan
    t.loc[2, "N"] = -np.inf
    text = str(message(t))
    assert "np." not in text
    assert "row 1 (line 3): field 'loss': expected a finite number > 0, got nan" in text
    assert "row 2 (line 4): field 'N': expected a finite number > 0, got -inf" in text
    e = message(good(run_id=[7, 7, 1, 2, 3, 4, 5, 6]))
    assert str(e).startswith("<DataFrame>: row 1 (line 3): field 'run_id': duplicate run_id 7 (")
