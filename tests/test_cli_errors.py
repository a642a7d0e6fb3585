"""Bad input: exit status 2, one line on stderr naming the file and field, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from bayescale.cli import main
from bayescale.runs import RUN_SCHEMA


def good_rows(n=8):
    return [{"N": 1e7 * 2**i, "D": 1e9 * 1.5**i, "loss": 4.0 - 0.1 * i} for i in range(n)]


def csv(tmp_path, rows, name="t.csv"):
    p = tmp_path / name
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def run_json(tmp_path, **over):
    d = tmp_path / "runs"
    for i, r in enumerate(good_rows()):
        (d / f"r{i}").mkdir(parents=True, exist_ok=True)
        (d / f"r{i}" / "run.json").write_text(json.dumps(
            {"schema": RUN_SCHEMA, "run_id": f"r{i}", "status": "completed", **r}))
    rec = {"schema": RUN_SCHEMA, "run_id": "bad", "status": "completed", "N": 1e8, "D": 1e10, "loss": 3.0}
    rec.update(over)
    rec = {k: v for k, v in rec.items() if v is not ...}
    (d / "bad").mkdir()
    (d / "bad" / "run.json").write_text(json.dumps(rec))
    return d


# each case: (builder -> argv, substrings the message must contain)
CASES = {
    "missing_file": (lambda t: ["fit", str(t / "nope.csv")], ["nope.csv", "no such file"]),
    "missing_column": (lambda t: ["fit", str(csv(t, [{"N": 1e8, "D": 1e10}]))], ["t.csv", "'loss'", "missing column"]),
    "negative_loss": (lambda t: ["fit", str(csv(t, good_rows() + [{"N": 1e8, "D": 1e10, "loss": -2}]))],
                      ["t.csv", "row 8", "'loss'", "> 0"]),
    "nan_N": (lambda t: ["fit", str(csv(t, good_rows() + [{"N": float("nan"), "D": 1e10, "loss": 2}]))],
              ["t.csv", "row 8", "'N'"]),
    "text_in_D": (lambda t: ["fit", str(csv(t, good_rows() + [{"N": 1e8, "D": "lots", "loss": 2}]))],
                  ["t.csv", "'D'", "'lots'"]),
    "D_in_billions": (lambda t: ["fit", str(csv(t, good_rows() + [{"N": 1e8, "D": 20.0, "loss": 2}]))],
                      ["t.csv", "'D'", "millions or billions"]),
    "perplexity_as_loss": (lambda t: ["fit", str(csv(t, good_rows() + [{"N": 1e8, "D": 1e10, "loss": 35.0}]))],
                           ["t.csv", "'loss'", "perplexity"]),
    "empty_csv": (lambda t: ["fit", str(_write(t / "e.csv", ""))], ["e.csv", "empty"]),
    "unsupported_type": (lambda t: ["fit", str(_write(t / "x.xlsx", "x"))], ["x.xlsx", "unsupported"]),
    "bad_json": (lambda t: ["fit", str(_bad_json(t))], ["run.json", "not valid JSON"]),
    "unknown_schema": (lambda t: ["fit", str(run_json(t, schema="bayescale.run/7"))],
                       ["bad/run.json", "'schema'", "unknown schema"]),
    "missing_field": (lambda t: ["fit", str(run_json(t, loss=...))], ["bad/run.json", "'loss'", "missing"]),
    "bad_status": (lambda t: ["fit", str(run_json(t, status="done"))], ["bad/run.json", "'status'"]),
    "duplicate_run_id": (lambda t: ["fit", str(run_json(t, run_id="r0"))], ["run.json", "'run_id'", "duplicate"]),
    "empty_dir": (lambda t: ["fit", str(_mkdir(t / "empty"))], ["empty", "no run folders"]),
    "bad_filter": (lambda t: ["fit", "chinchilla", "--filter", "no_such_col == 1"], ["--filter", "no_such_col"]),
    "filter_keeps_nothing": (lambda t: ["fit", "chinchilla", "--filter", "N < 0"], ["--filter", "kept no runs"]),
    "bad_prior_family": (lambda t: ["fit", "chinchilla", "--prior", "alpha=Wibble(1)"], ["prior alpha", "Wibble"]),
    "negative_prior_for_positive": (lambda t: ["fit", "chinchilla", "--prior", "alpha=Normal(0, 1)"],
                                    ["prior alpha", "positive"]),
    "unknown_prior_name": (lambda t: ["fit", "chinchilla", "--prior", "gamma=Normal(0, 1)"], ["--prior", "'gamma'"]),
    "prior_code_injection": (lambda t: ["fit", "chinchilla", "--prior", "alpha=LogNormal(__import__('os'), 1)"],
                             ["prior alpha", "finite numbers"]),
    "model_not_netcdf": (lambda t: ["summary", str(_write(t / "m.nc", "hello"))], ["m.nc", "NetCDF"]),
    "model_missing": (lambda t: ["optimal", str(t / "none.nc"), "--compute", "1e20"], ["none.nc", "no such file"]),
    "out_would_clobber": (lambda t: ["fit", "chinchilla", "--out", str(_write(t / "keep.nc", "precious"))],
                          ["keep.nc", "--out", "refusing to overwrite"]),
}


def _write(p, text):
    p.write_text(text)
    return p


def _mkdir(p):
    p.mkdir()
    return p


def _bad_json(t):
    d = t / "runs"
    (d / "r0").mkdir(parents=True)
    (d / "r0" / "run.json").write_text('{"schema": "bayescale.run/1", "run_id": ')
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exit_2_one_line(case, tmp_path, capsys):
    build, needles = CASES[case]
    argv = build(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    err = captured.err.strip()
    assert "\n" not in err, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    assert captured.out == ""


def test_clobber_refusal_leaves_file_intact(tmp_path, capsys):
    p = _write(tmp_path / "keep.nc", "precious")
    assert main(["fit", "chinchilla", "--out", str(p)]) == 2
    assert p.read_text() == "precious"


def test_several_bad_runs_are_all_listed(tmp_path, capsys):
    rows = good_rows() + [{"N": -1, "D": 1e10, "loss": 2}, {"N": 1e8, "D": 1e10, "loss": "x"}]
    assert main(["fit", str(csv(tmp_path, rows))]) == 2
    err = capsys.readouterr().err
    assert "2 invalid runs" in err and "row 8" in err and "row 9" in err


def test_real_process_bad_input_no_traceback(tmp_path):
    p = csv(tmp_path, [{"N": 1e8, "D": 1e10}])
    r = subprocess.run([sys.executable, "-m", "bayescale.cli", "fit", str(p), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert json.loads(r.stdout) == {"error": "missing column(s) loss; expected N, D, loss (found: N, D)",
                                    "field": "loss", "file": str(p)}  # DESIGN.md: --json errors too
    assert "Traceback" not in r.stderr and "t.csv" in r.stderr and "'loss'" in r.stderr


def test_json_error_is_one_object_on_stdout(tmp_path, capsys):
    """With --json a bad input still prints exactly one JSON object on stdout (and exits 2)."""
    src = csv(tmp_path, good_rows())
    code = main(["fit", str(src), "--filter", "N > 1e30", "--json"])
    captured = capsys.readouterr()
    assert code == 2
    obj = json.loads(captured.out)
    assert set(obj) == {"error", "field", "file"} and obj["field"] == "--filter" and "kept no runs" in obj["error"]
