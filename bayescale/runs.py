"""Run records: the ``runs/<run_id>/run.json`` contract, tables, validation, atomic writes.

A *source* is either a runs directory (one folder per run, each with a ``run.json``), a
table (CSV, TSV, JSON lines or Parquet) with columns ``N, D, loss`` (optional ``C``,
``group``, ``run_id``, ``loss_se``; ``columns=`` maps a table's own names onto these), or the
name of a shipped example dataset (``chinchilla``). Every loader returns a pandas
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
POSITIVE_FIELDS = ("N", "D", "C", "loss", "loss_se")  # must be finite and > 0 where present
NAN_ALLOWED_FIELDS = ("C", "loss_se")  # a table may leave these blank on a row (C then is 6ND)
# bayescale's names that ``columns=`` / ``--columns`` may map a table's own column names onto
COLUMN_KEYS = ("N", "D", "loss", "C", "group", "run_id", "loss_se", "loss_lo95", "loss_hi95")
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".parquet": "parquet", ".pq": "parquet"}
EXAMPLES = {"chinchilla": "chinchilla.csv"}

# D below N/100 (under 0.01 tokens per parameter) is not a trained language model: the usual
# cause is D given in billions or millions of tokens while N is in parameters.
MIN_TOKENS_PER_PARAM = 0.01
# Cross-entropy in nats above this is not plausible for any tokenizer in use (ln 256000 ~ 12.5):
# the usual cause is a perplexity or a loss in bits given as nats.
MAX_PLAUSIBLE_LOSS = 20.0
# Losses in this range (nats/token) look like a language model's; the unit checks on N below
# apply only then, so a table from some other field with tiny "N" is not refused.
LM_LOSS_RANGE = (0.5, MAX_PLAUSIBLE_LOSS)
# Fewer parameters than this is no language model (the shipped study's smallest has 3168):
# the usual cause is N given in millions.
MIN_PLAUSIBLE_N = 1e3
# A table whose median tokens per parameter D/N is below this has N and D swapped: language-model
# studies train on more tokens than parameters. Every shipped or bundled table sits well above it
# (median D/N: the shipped runs/ study 3.8, Marin ladders 4.4, Open-Athena isoFLOPs 10.7,
# Chinchilla 22.5, Gadre et al. 73.8), though single rows go as low as 0.036 (Chinchilla).
MIN_MEDIAN_TOKENS_PER_PARAM = 1.0
# ...but a median D/N below this is not a swap (that would be > 1000 tokens per parameter the
# other way round) but D in millions or billions, which the per-row check above reports.
SWAP_FLOOR_TOKENS_PER_PARAM = 1e-3
# No language model is trained on a million tokens per parameter (the most over-trained small
# models reach ~1e4-1e5): a median above this means N is in millions (or D in the wrong unit).
MAX_MEDIAN_TOKENS_PER_PARAM = 1e6
# A C column more than this factor away from 6ND on a row is not the training FLOPs of that row.
MAX_C_RATIO = 10.0


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
    columns: Mapping[str, str] | str | None = None,
) -> pd.DataFrame:
    """Load and validate runs from a runs directory, a table or a DataFrame.

    Parameters
    ----------
    source
        A runs directory, a ``.csv``/``.tsv``/``.jsonl``/``.ndjson``/``.parquet`` file, a
        shipped example name (``"chinchilla"``), or a DataFrame with columns ``N, D, loss``.
    columns
        For a table: bayescale's names mapped onto the table's own column names, e.g.
        ``{"N": "params", "D": "tokens", "loss": "val_loss"}`` or the same as the text
        ``"N=params,D=tokens,loss=val_loss"`` (see :func:`parse_columns`). Keys among
        ``N, D, loss, C, group, run_id, loss_se, loss_lo95, loss_hi95``. A table column that
        already has a mapped key's name (and is not mapped) is kept as ``<name>_orig``.
        Without a mapping, columns whose names differ from these only by case are used.
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
    mapping = _normalize_columns(columns) if columns is not None else {}
    if isinstance(source, pd.DataFrame):
        name = "<DataFrame>"
        report = report if report is not None else LoadReport(source=name)
        df = _validate_table(source.copy(), name, skip_invalid, report, mapping)
    else:
        path = resolve_source(source)
        name = str(source)
        report = report if report is not None else LoadReport(source=name)
        if path.is_dir():
            if mapping:
                raise InputError("maps a table's columns; the run.json records of a runs directory "
                                 "already name N, D and loss", file=str(path), field="--columns")
            df = _load_dir(path, skip_invalid, report)
        else:
            df = _validate_table(_read_table(path), str(path), skip_invalid, report, mapping)
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


def parse_columns(text: str) -> dict[str, str]:
    """Parse a column mapping such as ``"N=params,D=tokens,loss=val_loss"``.

    Returns ``{bayescale name: table column}``. Keys are bayescale's names (``N, D, loss, C,
    group, run_id, loss_se, loss_lo95, loss_hi95``, matched case-insensitively); values are the
    table's column names, as written. Raises :class:`InputError` (field ``--columns``) on text
    that is not ``KEY=COLUMN,...``, on unknown keys and on a key given twice.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"expected KEY=COLUMN pairs separated by commas, e.g. N=params,D=tokens,loss=val_loss; "
                         f"got {_show(text)}", field="--columns")
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        key, eq, col = (part.strip() for part in item.partition("="))
        if not eq or not key or not col:
            raise InputError(f"expected KEY=COLUMN, e.g. N=params; got {item.strip()!r} in {text!r}",
                             field="--columns")
        pairs.append((key, col))
    return _normalize_columns(pairs)


def _normalize_columns(columns: Mapping[str, str] | str | list[tuple[str, str]]) -> dict[str, str]:
    """Check a column mapping (text, mapping or pairs) and return it with canonical keys."""
    if isinstance(columns, str):
        return parse_columns(columns)
    pairs = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
    canon = {k.lower(): k for k in COLUMN_KEYS}
    out: dict[str, str] = {}
    for key, col in pairs:
        k = canon.get(str(key).strip().lower())
        if k is None:
            raise InputError(f"unknown name {str(key)!r}; expected one of {', '.join(COLUMN_KEYS)}",
                             field="--columns")
        if k in out:
            raise InputError(f"{k} is given twice ({out[k]!r} and {str(col)!r})", field="--columns")
        if not isinstance(col, str) or not col.strip():
            raise InputError(f"expected a column name for {k}, got {_show(col)}", field="--columns")
        col = col.strip()
        other = next((o for o, c in out.items() if c == col), None)
        if other is not None:
            raise InputError(f"column {col!r} is mapped to both {other} and {k}", field="--columns")
        out[k] = col
    return out


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    kind = TABLE_SUFFIXES.get(suffix)
    try:
        if kind == "csv":
            return pd.read_csv(path)
        if kind == "tsv":
            return pd.read_csv(path, sep="\t")
        if kind == "jsonl":
            df = pd.read_json(path, lines=True)
            if len(df.columns) == 0 and len(df) == 0:
                raise pd.errors.EmptyDataError
            return df
        if kind == "parquet":
            return pd.read_parquet(path)
        if suffix == ".json" and path.name == "run.json":
            return _load_dir(path.parent, False, LoadReport(source=str(path)))
    except pd.errors.EmptyDataError:
        what = "one JSON object per line with fields" if kind == "jsonl" else "a header with columns"
        raise InputError(f"the file is empty; expected {what} N, D, loss", file=str(path)) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not read the table: {msg}", file=str(path)) from None
    raise InputError(
        f"unsupported file type '{suffix or path.name}'; expected a runs directory, "
        ".csv, .tsv, .jsonl/.ndjson or .parquet",
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


def _show(value: Any) -> str:
    """A value as a message shows it: numpy scalars as plain numbers (``nan``, ``-2.0``, never
    ``np.float64(nan)``), strings quoted."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


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
        raise InputError(f"expected a non-empty string, got {_show(rec['run_id'])}", file=file, field="run_id")
    if rec["status"] != "completed":
        return
    vals = {}
    for f in POSITIVE_FIELDS:
        if f in rec and rec[f] is not None:
            v = _positive(rec[f])
            if v is None:
                raise InputError(f"expected a finite number > 0, got {_show(rec[f])}", file=file, field=f)
            vals[f] = v
    _check_plausible(vals["N"], vals["D"], vals["loss"], file, None)


def _load_dir(path: Path, skip_invalid: bool, report: LoadReport) -> pd.DataFrame:
    files = sorted(path.glob("*/run.json"))
    if (path / "run.json").exists():
        files.insert(0, path / "run.json")
    if not files:
        tables = sorted(p for p in path.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
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
        raise InputErrors(problems, file=str(path))
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


def _match_column(df: pd.DataFrame, name: str) -> tuple[Any | None, list[Any]]:
    """The column of ``df`` called ``name``: exactly, else the one whose name differs only by
    case. Returns ``(column, [])``, or ``(None, candidates)`` when several differ only by case
    (not guessed), or ``(None, [])`` when there is none."""
    if name in df.columns:
        return name, []
    near = [c for c in df.columns if str(c).lower() == name.lower()]
    return (near[0], []) if len(near) == 1 else (None, near)


def _found(df: pd.DataFrame) -> str:
    return ", ".join(map(str, df.columns)) or "none"


def _apply_columns(df: pd.DataFrame, mapping: Mapping[str, str], file: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rename the table's columns to bayescale's names: those ``mapping`` names, then any column
    named like a bayescale name but for case. A column that already has a mapped name and is
    not mapped itself is kept as ``<name>_orig``. Returns the table and, per bayescale name, the
    table's own column name it came from."""
    rename: dict[Any, str] = {}
    for key, col in mapping.items():
        src, near = _match_column(df, col)
        if src is None:
            why = (f"columns {', '.join(map(repr, map(str, near)))} differ only by case; give the exact name"
                   if near else f"no such column (found: {_found(df)})")
            raise InputError(f"{key}={col}: {why}", file=file, field="--columns")
        if src in rename:
            raise InputError(f"{key}={col}: column {str(src)!r} is already mapped to {rename[src]}",
                             file=file, field="--columns")
        rename[src] = key
    for key in COLUMN_KEYS:  # case-insensitive names, where that is unambiguous
        if key in mapping or key in rename.values():
            continue
        if key in df.columns and key not in rename:
            continue
        near = [c for c in df.columns if str(c).lower() == key.lower() and c not in rename]
        if len(near) == 1 and near[0] != key:
            rename[near[0]] = key
    targets = set(rename.values())
    for c in list(df.columns):  # a column in the way of a mapped one is kept under another name
        if c in targets and c not in rename:
            new, k = f"{c}_orig", 2
            while new in df.columns or new in targets:
                new, k = f"{c}_orig{k}", k + 1
            rename[c] = new
    origin = {key: str(src) for src, key in rename.items() if key in COLUMN_KEYS}
    origin.update({str(c): str(c) for c in df.columns if c in COLUMN_KEYS and c not in rename})
    return (df.rename(columns=rename) if rename else df), origin


# substrings that make a column a likely N, D, loss or C, best first; only numeric columns count
_SUGGEST = {
    "N": [("no_embed", "non_embed"), ("param", "n_params", "model_size")],
    "D": [("token",), ("data",)],
    "loss": [("loss",), ("val",), ("ce",)],
    "C": [("flop",), ("compute",), ("budget",)],
}
_NOT_SUGGESTED = ("lo95", "hi95", "_se", "std", "err", "per_", "multiplier", "ratio", "eval_")


def _lower(name: str) -> str:
    """A column name as the suggestions match it: "Model Size" is "model_size"."""
    return name.lower().replace(" ", "_").replace("-", "_")


def _mostly_numeric(col: pd.Series) -> bool:
    """Whether most of a column's values are numbers (integers too big for int64 read as text)."""
    if pd.api.types.is_bool_dtype(col):
        return False
    if pd.api.types.is_numeric_dtype(col):
        return True
    given = col.dropna()
    return len(given) > 0 and pd.to_numeric(given, errors="coerce").notna().mean() > 0.5


def _suggest_columns(df: pd.DataFrame) -> dict[str, str]:
    """Guess ``--columns`` from the names of a table's numeric columns (for an error message)."""
    pool = [str(c) for c in df.columns if _mostly_numeric(df[c])]
    out: dict[str, str] = {}
    for key, tiers in _SUGGEST.items():
        if key in pool:
            out[key] = key
            pool.remove(key)
            continue
        cands = [c for c in pool if not any(x in _lower(c) for x in _NOT_SUGGESTED)]
        for tier in tiers:
            hits = [c for c in cands if any(x in _lower(c) for x in tier)]
            if key == "N":  # "no_embed" counts only on a parameter count
                hits = [c for c in hits if any(x in _lower(c) for x in _SUGGEST["N"][1])]
            if hits:
                # a plain "loss", then a validation loss, then the shortest name
                best = min(hits, key=lambda c: (c.lower() != "loss", "val" not in c.lower(), len(c)))
                out[key] = best
                pool.remove(best)
                break
    return out


def _missing_columns_error(df: pd.DataFrame, missing: list[str], file: str) -> InputError:
    msg = f"missing column(s) {', '.join(missing)}; expected N, D, loss (found: {_found(df)})"
    guess = _suggest_columns(df)
    for key in missing:
        near = [str(c) for c in df.columns if str(c).lower() == key.lower()]
        if len(near) > 1:
            msg += (f"; columns {', '.join(map(repr, near))} differ only by case, so bayescale does not "
                    f"guess: pick one with --columns {key}=<column>")
            guess.pop(key, None)
    if any(k in guess for k in missing) or ("D" in missing and "C" in guess):
        keys = ["N", "D", "loss", "C"]
        if "D" not in guess and "C" in guess:
            keys.remove("D")  # D follows from C = 6ND
        arg = ",".join(f"{k}={guess.get(k, '<column>')}" for k in keys if k != "C" or k in guess)
        msg += f"; try --columns {_shell_quote(arg)}"
    return InputError(msg, file=file, field=missing[0])


def _shell_quote(arg: str) -> str:
    return f'"{arg}"' if any(ch in arg for ch in " '<>|&;()$`\\") else arg


def _numeric(df: pd.DataFrame, col: str) -> np.ndarray:
    x = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return np.where(np.isfinite(x) & (x > 0), x, np.nan)


def _looks_like_lm(loss: float) -> bool:
    return LM_LOSS_RANGE[0] <= loss <= LM_LOSS_RANGE[1]


def _check_table_units(df: pd.DataFrame, file: str, origin: Mapping[str, str]) -> None:
    """Refuse a table whose own numbers put N, D or C in the wrong units (one error, whole table)."""
    N, D, loss = _numeric(df, "N"), _numeric(df, "D"), _numeric(df, "loss")
    ok = np.isfinite(N) & np.isfinite(D) & np.isfinite(loss)
    if not ok.any():
        return  # every row is broken: the per-row checks say how
    N, D, loss = N[ok], D[ok], loss[ok]
    n = int(ok.sum())
    med_N, med_loss, tpp = float(np.median(N)), float(np.median(loss)), D / N
    med_tpp = float(np.median(tpp))
    fix_N = "(or use --columns to pick the parameter-count column)"
    if _looks_like_lm(med_loss) and med_N < MIN_PLAUSIBLE_N:
        raise InputError(
            f"N = {med_N:.4g} parameters (the median of {n} rows) is implausible for a language model "
            f"(median loss {med_loss:.4g} nats); is N in millions? multiply by 1e6 {fix_N}",
            file=file, field="N")
    if _looks_like_lm(med_loss) and med_tpp > MAX_MEDIAN_TOKENS_PER_PARAM:
        raise InputError(
            f"the median D/N is {med_tpp:.3g} tokens per parameter (median N = {med_N:.4g}, "
            f"D = {float(np.median(D)):.4g}); "
            f"no language model is trained on over {MAX_MEDIAN_TOKENS_PER_PARAM:.0e} tokens per parameter: is N "
            f"in millions? multiply by 1e6 {fix_N}",
            file=file, field="N")
    if SWAP_FLOOR_TOKENS_PER_PARAM <= med_tpp < MIN_MEDIAN_TOKENS_PER_PARAM:
        n_col, d_col = origin.get("N", "N"), origin.get("D")
        fix = (f"try --columns {_shell_quote(f'N={d_col},D={n_col}')}" if d_col is not None
               else f"is column {n_col!r} a token count? (D was derived from C = 6ND)")
        raise InputError(
            f"N and D look swapped: the median D/N is {med_tpp:.3g} tokens per parameter and "
            f"{int((tpp < 1).sum())} of {n} rows have D < N, but language-model studies train on more "
            f"tokens than parameters; {fix}",
            file=file)
    if "C" in df.columns:
        C = _numeric(df, "C")[ok]
        ratio = C / (6.0 * N * D)
        has = np.isfinite(ratio)
        if has.any() and not (1 / MAX_C_RATIO <= float(np.median(ratio[has])) <= MAX_C_RATIO):
            off = np.flatnonzero(has & ((ratio > MAX_C_RATIO) | (ratio < 1 / MAX_C_RATIO)))
            j = int(off[0])
            row = int(np.flatnonzero(ok)[j])
            raise InputError(
                f"C = {C[j]:.4g} but 6ND = {6 * N[j] * D[j]:.4g} (C/6ND = {ratio[j]:.3g}; N = {N[j]:.4g}, "
                f"D = {D[j]:.4g}), and {len(off)} of {int(has.sum())} rows disagree by more than "
                f"{MAX_C_RATIO:g}x; C should be the training FLOPs ~ 6ND, or N/D are in wrong units "
                "(N in millions? D in billions?)",
                file=file, row=row, field="C")


def _check_row_units(vals: Mapping[str, float], file: str, row: int) -> None:
    """Per-row unit checks that only a table gets (a runs directory's trainer may train tiny models)."""
    N, D, loss = vals["N"], vals["D"], vals["loss"]
    if N < MIN_PLAUSIBLE_N and _looks_like_lm(loss):
        raise InputError(
            f"N = {N:.4g} parameters is implausible for a language model (loss {loss:.4g} nats); "
            "is N in millions? multiply by 1e6 (or use --columns to pick the parameter-count column)",
            file=file, row=row, field="N")
    C = vals.get("C")
    if C is not None:
        ratio = C / (6.0 * N * D)
        if not 1 / MAX_C_RATIO <= ratio <= MAX_C_RATIO:
            raise InputError(
                f"C = {C:.4g} but 6ND = {6 * N * D:.4g} (C/6ND = {ratio:.3g}; N = {N:.4g}, D = {D:.4g}); "
                "C should be the training FLOPs ~ 6ND, or N/D are in wrong units",
                file=file, row=row, field="C")


def _validate_table(df: pd.DataFrame, file: str, skip_invalid: bool, report: LoadReport,
                    columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    df, origin = _apply_columns(df, columns or {}, file)
    cols = set(df.columns)
    if "D" not in cols and {"N", "C"} <= cols:
        # a table of (N, C) pairs, as papers often give: D follows from C = 6ND
        df["D"] = pd.to_numeric(df["C"], errors="coerce") / (6.0 * pd.to_numeric(df["N"], errors="coerce"))
        cols.add("D")
    missing = [c for c in ("N", "D", "loss") if c not in cols]
    if missing:
        raise _missing_columns_error(df, missing, file)
    if len(df) == 0:
        raise InputError("the table has a header but no rows", file=file)
    _check_table_units(df, file, origin)
    problems: list[InputError] = []
    bad_rows: list[int] = []
    present = [c for c in POSITIVE_FIELDS if c in cols]
    for i in range(len(df)):
        try:
            vals = {}
            for c in present:
                raw = df[c].iat[i]
                if c in NAN_ALLOWED_FIELDS and pd.isna(raw):
                    continue
                v = _positive(raw)
                if v is None:
                    raise InputError(f"expected a finite number > 0, got {_show(raw)}", file=file, row=i, field=c)
                vals[c] = v
            _check_plausible(vals["N"], vals["D"], vals["loss"], file, i)
            _check_row_units(vals, file, i)
        except InputError as e:
            problems.append(e)
            bad_rows.append(i)
    if "run_id" in cols:
        dup = df["run_id"].astype(str).duplicated(keep="first")
        for i in np.flatnonzero(dup.to_numpy()):
            problems.append(InputError(f"duplicate run_id {_show(df['run_id'].iat[i])}", file=file, row=int(i),
                                       field="run_id"))
            bad_rows.append(int(i))
    if problems and not skip_invalid:
        raise InputErrors(problems, file=file)
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
    if "loss_se" in df:
        df["loss_se"] = pd.to_numeric(df["loss_se"]).astype(float)
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


def group_labels(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Each row's group name from one or several columns (``dataset,eval_set`` -> ``"rpj/c4_val"``)."""
    labels = df[columns[0]].astype(str)
    for c in columns[1:]:
        labels = labels + "/" + df[c].astype(str)
    return labels
