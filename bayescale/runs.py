"""Run records: the ``runs/<run_id>/run.json`` contract, tables, validation, atomic writes.

A *source* is either a runs directory (one folder per run, each with a ``run.json``), a
table (CSV or Parquet) with columns ``N, D, loss`` (optional ``C``, ``group``, ``run_id``),
or the name of a shipped example dataset (``chinchilla``). Every loader returns a pandas
DataFrame with at least the columns ``run_id, N, D, C, loss, group`` and refuses anything
it cannot trust with an :class:`~bayescale.errors.InputError` that names the file, the row
or field, and what was expected.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError, InputErrors

RUN_SCHEMA = "bayescale.run/1"
STATUSES = ("running", "completed", "diverged", "failed")
REQUIRED_RUN_FIELDS = ("schema", "run_id", "status", "N", "D", "loss")
POSITIVE_FIELDS = ("N", "D", "C", "loss")  # must be finite and > 0 where present
EXAMPLES = {"chinchilla": "chinchilla.csv"}

# D below N/100 (under 0.01 tokens per parameter) is not a trained language model: the usual
# cause is D given in billions or millions of tokens while N is in parameters.
MIN_TOKENS_PER_PARAM = 0.01
# Cross-entropy in nats above this is not plausible for any tokenizer in use (ln 256000 ~ 12.5):
# the usual cause is a perplexity or a loss in bits given as nats.
MAX_PLAUSIBLE_LOSS = 20.0


@dataclass
class LoadReport:
    """What a load did besides returning rows: kept for the user, shown by the CLI."""

    source: str
    n_loaded: int = 0
    not_completed: dict[str, int] = field(default_factory=dict)  # status -> count, skipped
    skipped: list[str] = field(default_factory=list)  # invalid runs skipped by --skip-invalid

    def lines(self) -> list[str]:
        out = []
        for status, n in sorted(self.not_completed.items()):
            out.append(f"skipped {n} run(s) with status '{status}' (only completed runs are fitted)")
        for msg in self.skipped:
            out.append(f"skipped invalid run: {msg}")
        return out


# --------------------------------------------------------------------------------------------
# writing


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file in the same folder + rename).

    A reader sees either the old file or the new one, never a partial write, even if the
    process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_run_record(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Validate and atomically write ``run_dir/run.json``.

    ``record`` must follow the ``bayescale.run/1`` contract; ``schema`` is filled in when
    missing. A record that is ``completed`` is validated as strictly as a load would.
    """
    record = dict(record)
    record.setdefault("schema", RUN_SCHEMA)
    path = Path(run_dir) / "run.json"
    if record.get("status") == "completed":
        _validate_record(record, str(path))
    elif record.get("status") not in STATUSES:
        raise InputError(f"expected one of {', '.join(STATUSES)}, got {record.get('status')!r}",
                         file=str(path), field="status")
    return write_json_atomic(path, record)


# --------------------------------------------------------------------------------------------
# reading


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """Turn a user's SOURCE argument into a path (shipped example names resolve to files)."""
    s = str(source)
    p = Path(s)
    if not p.exists() and s in EXAMPLES:
        return Path(__file__).parent / "data" / EXAMPLES[s]
    if not p.exists():
        hint = f"; shipped examples: {', '.join(EXAMPLES)}" if EXAMPLES else ""
        raise InputError(f"no such file or directory{hint}", file=s)
    return p


def load_runs(
    source: str | os.PathLike[str] | pd.DataFrame,
    *,
    filter: str | None = None,  # noqa: A002 - the CLI's name for it
    skip_invalid: bool = False,
    report: LoadReport | None = None,
) -> pd.DataFrame:
    """Load and validate runs from a runs directory, a CSV/Parquet table or a DataFrame.

    Parameters
    ----------
    source
        A runs directory, a ``.csv``/``.parquet`` file, a shipped example name
        (``"chinchilla"``), or a DataFrame with columns ``N, D, loss``.
    filter
        A pandas query applied after validation, e.g. ``"kept_by_epoch == 1"``.
    skip_invalid
        Load the valid runs and record the invalid ones in ``report.skipped`` instead of
        refusing the whole load.
    report
        Filled with what was skipped and why.

    Returns
    -------
    pandas.DataFrame
        Columns ``run_id, N, D, C, loss, group`` plus any extra columns of the source;
        ``df.attrs["source"]`` names the source.

    Raises
    ------
    InputError
        With the file, row or field and what was expected.
    """
    if isinstance(source, pd.DataFrame):
        name = "<DataFrame>"
        report = report if report is not None else LoadReport(source=name)
        df = _validate_table(source.copy(), name, skip_invalid, report)
    else:
        path = resolve_source(source)
        name = str(source)
        report = report if report is not None else LoadReport(source=name)
        if path.is_dir():
            df = _load_dir(path, skip_invalid, report)
        else:
            df = _validate_table(_read_table(path), str(path), skip_invalid, report)
    if filter:
        try:
            df = df.query(filter, engine="python")
        except Exception as e:  # pandas raises many kinds; all mean the query is bad
            raise InputError(f"could not apply query {filter!r}: {e}", field="--filter") from None
        if len(df) == 0:
            raise InputError(f"query {filter!r} kept no runs", field="--filter")
    df = df.reset_index(drop=True)
    df.attrs["source"] = name
    df.attrs["filter"] = filter or None
    report.n_loaded = len(df)
    return df


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".json" and path.name == "run.json":
            return _load_dir(path.parent, False, LoadReport(source=str(path)))
    except pd.errors.EmptyDataError:
        raise InputError("the file is empty; expected a header with columns N, D, loss",
                         file=str(path)) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not read the table: {msg}", file=str(path)) from None
    raise InputError(
        f"unsupported file type '{suffix or path.name}'; expected a runs directory, .csv or .parquet",
        file=str(path),
    )


def _positive(value: Any) -> float | None:
    """Return value as a float if it is a finite positive number, else None."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def _check_plausible(N: float, D: float, loss: float, file: str, row: int | None) -> None:
    if D < N * MIN_TOKENS_PER_PARAM:
        raise InputError(
            f"D = {D:.4g} tokens is below N/100 = {N / 100:.4g} for N = {N:.4g} parameters; "
            "expected D in tokens (is it in millions or billions?)",
            file=file, row=row, field="D",
        )
    if loss > MAX_PLAUSIBLE_LOSS:
        raise InputError(
            f"loss {loss:.4g} is not a plausible cross-entropy in nats/token (> {MAX_PLAUSIBLE_LOSS}); "
            "expected nats, not perplexity",
            file=file, row=row, field="loss",
        )


def _validate_record(rec: Mapping[str, Any], file: str) -> None:
    if not isinstance(rec, Mapping):
        raise InputError("expected a JSON object", file=file)
    schema = rec.get("schema")
    if schema is None:
        raise InputError(f"missing; expected \"{RUN_SCHEMA}\"", file=file, field="schema")
    if schema != RUN_SCHEMA:
        raise InputError(f"unknown schema version {schema!r}; this bayescale reads \"{RUN_SCHEMA}\"",
                         file=file, field="schema")
    for f in REQUIRED_RUN_FIELDS:
        if f not in rec:
            raise InputError("missing required field", file=file, field=f)
    if rec["status"] not in STATUSES:
        raise InputError(f"expected one of {', '.join(STATUSES)}, got {rec['status']!r}",
                         file=file, field="status")
    if not isinstance(rec["run_id"], str) or not rec["run_id"]:
        raise InputError(f"expected a non-empty string, got {rec['run_id']!r}", file=file, field="run_id")
    if rec["status"] != "completed":
        return
    vals = {}
    for f in POSITIVE_FIELDS:
        if f in rec and rec[f] is not None:
            v = _positive(rec[f])
            if v is None:
                raise InputError(f"expected a finite number > 0, got {rec[f]!r}", file=file, field=f)
            vals[f] = v
    _check_plausible(vals["N"], vals["D"], vals["loss"], file, None)


def _load_dir(path: Path, skip_invalid: bool, report: LoadReport) -> pd.DataFrame:
    files = sorted(path.glob("*/run.json"))
    if (path / "run.json").exists():
        files.insert(0, path / "run.json")
    if not files:
        tables = sorted([*path.glob("*.csv"), *path.glob("*.parquet")])
        hint = f"; did you mean the table {tables[0]}?" if tables else ""
        raise InputError(f"no run folders with a run.json found{hint}", file=str(path))
    rows: list[dict[str, Any]] = []
    problems: list[InputError] = []
    seen: dict[str, str] = {}
    for f in files:
        try:
            try:
                rec = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise InputError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
                                 file=str(f)) from None
            except UnicodeDecodeError:
                raise InputError("not a UTF-8 text file", file=str(f)) from None
            _validate_record(rec, str(f))
            rid = rec["run_id"]
            if rid in seen:
                raise InputError(f"duplicate run_id {rid!r} (also in {seen[rid]})", file=str(f),
                                 field="run_id")
            seen[rid] = str(f)
        except InputError as e:
            problems.append(e)
            continue
        if rec["status"] != "completed":
            report.not_completed[rec["status"]] = report.not_completed.get(rec["status"], 0) + 1
            continue
        row = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
        row["path"] = str(f.parent)
        corpus = _corpus_tokens(rec)
        if corpus is not None:
            row["corpus_tokens"] = corpus
        rows.append(row)
    if problems and not skip_invalid:
        raise InputErrors(problems)
    report.skipped.extend(str(p) for p in problems)
    if not rows:
        raise InputError("no completed runs to load", file=str(path))
    df = pd.DataFrame(rows)
    df.pop("schema")
    if "C" not in df or df["C"].isna().any():
        c6 = 6.0 * df["N"].astype(float) * df["D"].astype(float)
        df["C"] = df["C"].fillna(c6) if "C" in df else c6
    if "group" not in df:
        df["group"] = "all"
    df["group"] = df["group"].fillna("all").astype(str)
    return _order(df)


def _corpus_tokens(rec: Mapping[str, Any]) -> float | None:
    """Training tokens of the corpus a run drew from (``config.data.train_tokens``, as the trainer
    records it), or None: where D* would exceed it, a compute-optimal answer needs more data than
    there is (``optimal`` says so)."""
    cfg = rec.get("config")
    data = cfg.get("data") if isinstance(cfg, Mapping) else None
    return _positive(data.get("train_tokens")) if isinstance(data, Mapping) else None


def _validate_table(df: pd.DataFrame, file: str, skip_invalid: bool, report: LoadReport) -> pd.DataFrame:
    cols = set(df.columns)
    if "D" not in cols and {"N", "C"} <= cols:
        # a table of (N, C) pairs, as papers often give: D follows from C = 6ND
        df["D"] = pd.to_numeric(df["C"], errors="coerce") / (6.0 * pd.to_numeric(df["N"], errors="coerce"))
        cols.add("D")
    missing = [c for c in ("N", "D", "loss") if c not in cols]
    if missing:
        found = ", ".join(map(str, df.columns)) or "none"
        raise InputError(f"missing column(s) {', '.join(missing)}; expected N, D, loss (found: {found})",
                         file=file, field=missing[0])
    if len(df) == 0:
        raise InputError("the table has a header but no rows", file=file)
    problems: list[InputError] = []
    bad_rows: list[int] = []
    present = [c for c in POSITIVE_FIELDS if c in cols]
    for i in range(len(df)):
        try:
            vals = {}
            for c in present:
                raw = df[c].iat[i]
                if c == "C" and pd.isna(raw):
                    continue
                v = _positive(raw)
                if v is None:
                    raise InputError(f"expected a finite number > 0, got {raw!r}", file=file, row=i, field=c)
                vals[c] = v
            _check_plausible(vals["N"], vals["D"], vals["loss"], file, i)
        except InputError as e:
            problems.append(e)
            bad_rows.append(i)
    if "run_id" in cols:
        dup = df["run_id"].astype(str).duplicated(keep="first")
        for i in np.flatnonzero(dup.to_numpy()):
            problems.append(InputError(f"duplicate run_id {df['run_id'].iat[i]!r}", file=file, row=int(i),
                                       field="run_id"))
            bad_rows.append(int(i))
    if problems and not skip_invalid:
        raise InputErrors(problems)
    report.skipped.extend(str(p) for p in problems)
    df = df.drop(index=df.index[sorted(set(bad_rows))])
    if len(df) == 0:
        raise InputError("no valid rows left to load", file=file)
    for c in ("N", "D", "loss"):
        df[c] = df[c].astype(float)
    if "C" not in df:
        df["C"] = 6.0 * df["N"] * df["D"]
    else:
        df["C"] = pd.to_numeric(df["C"]).fillna(6.0 * df["N"] * df["D"]).astype(float)
    if "run_id" not in df:
        df["run_id"] = [f"row{i}" for i in df.index]
    df["run_id"] = df["run_id"].astype(str)
    if "group" not in df:
        df["group"] = "all"
    df["group"] = df["group"].fillna("all").astype(str)
    return _order(df)


def _order(df: pd.DataFrame) -> pd.DataFrame:
    first = ["run_id", "N", "D", "C", "loss", "group"]
    return df[first + [c for c in df.columns if c not in first]]
