"""Sweeps: a TOML plan expands to a list of runs; run them all, one (``--index``), or a shard.

Plan format (every key optional except the shapes and budgets)::

    [defaults]                 # ModelConfig / TrainConfig fields shared by every run
    data = "default"           # corpus: "default", a folder of .txt, or train.bin/val.bin
    vocab_size = 512
    context = 64
    seed = 0

    [[grid]]                   # every shape x every token budget
    shapes = [{n_layer = 2, d_model = 64, n_head = 2}]
    tokens = [1e5, 1e6]

    [[isoflop]]                # at each compute budget C, each shape gets D = C / (6 N)
    budgets = [1e12, 3e12]
    shapes = [{n_layer = 4, d_model = 128, n_head = 4}]
    min_tokens = 5e4           # entries whose D falls outside [min_tokens, max_tokens] are dropped
    max_tokens = 3.5e6

Runs are identified by their run id (shape, tokens, seed): a completed run is skipped, an
interrupted one resumes from its checkpoint, so re-running a sweep is always safe.
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from .._compat import tomllib
from ..errors import InputError
from .model import ModelConfig, flops_per_token, non_embedding_params
from .trainer import TrainConfig, run_id_for

MODEL_KEYS = {f.name for f in fields(ModelConfig)}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
OTHER_KEYS = {"data"}


def _round_sig(x: float, sig: int = 3) -> int:
    from math import floor, log10

    return int(round(x, -int(floor(log10(x))) + sig - 1))


def _split(entry: dict[str, Any], file: str) -> tuple[ModelConfig, TrainConfig, str]:
    unknown = set(entry) - MODEL_KEYS - TRAIN_KEYS - OTHER_KEYS
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(sorted(unknown))}", file=file,
                         field=sorted(unknown)[0])
    try:
        m = ModelConfig(**{k: v for k, v in entry.items() if k in MODEL_KEYS})
        t = TrainConfig(**{k: (int(v) if k == "tokens" else v)
                           for k, v in entry.items() if k in TRAIN_KEYS})
    except (TypeError, ValueError) as e:
        raise InputError(str(e), file=file) from None
    return m, t, str(entry.get("data", "default"))


def load_plan(path: str | Path) -> list[dict[str, Any]]:
    """Expand a plan into entries ``{"run_id", "model", "train", "data", "kind"}`` (plan order)."""
    path = Path(path)
    file = str(path)
    try:
        plan = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("no such file", file=file) from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"not valid TOML: {e}", file=file) from None
    known = {"defaults", "grid", "isoflop", "description"}
    if set(plan) - known:
        raise InputError(f"unknown table(s) {sorted(set(plan) - known)}; expected defaults, grid, "
                         "isoflop", file=file)
    defaults = dict(plan.get("defaults", {}))
    raw: list[tuple[str, dict[str, Any]]] = []
    for g in plan.get("grid", []):
        if "shapes" not in g or "tokens" not in g:
            raise InputError("each [[grid]] needs shapes and tokens", file=file, field="grid")
        for shape in g["shapes"]:
            for d in g["tokens"]:
                raw.append(("grid", {**defaults, **shape, "tokens": int(d)}))
    for s in plan.get("isoflop", []):
        if "shapes" not in s or "budgets" not in s:
            raise InputError("each [[isoflop]] needs shapes and budgets", file=file,
                             field="isoflop")
        lo, hi = float(s.get("min_tokens", 0)), float(s.get("max_tokens", float("inf")))
        for c in s["budgets"]:
            for shape in s["shapes"]:
                m, _, _ = _split({**defaults, **shape}, file)
                d = _round_sig(float(c) / (6 * non_embedding_params(m)))
                if lo <= d <= hi:
                    raw.append((f"isoflop:{float(c):.3g}", {**defaults, **shape, "tokens": d}))
    if not raw:
        raise InputError("the plan has no runs", file=file)
    entries, seen = [], set()
    for kind, e in raw:
        m, t, data = _split(e, file)
        rid = run_id_for(m, t)
        if rid in seen:
            continue
        seen.add(rid)
        entries.append({"run_id": rid, "model": m, "train": t, "data": data, "kind": kind})
    return entries


def run_sweep(plan: str | Path, runs_dir: str | Path, *, index: int | None = None,
              shard: tuple[int, int] | None = None, log=None) -> list[dict[str, Any]]:
    """Run a plan's entries (all, one by ``index``, or shard ``(i, k)``); return the records."""
    from .data import load_corpus
    from .trainer import RunBusy, train_run

    entries = load_plan(plan)
    if index is not None:
        if not 0 <= index < len(entries):
            raise InputError(f"index {index} out of range; the plan has {len(entries)} runs",
                             field="index")
        todo = [entries[index]]
    elif shard is not None:
        i, k = shard
        # round-robin over entries sorted by cost (cheapest first), so shards get similar work
        by_cost = sorted(entries,
                         key=lambda e: non_embedding_params(e["model"]) * e["train"].tokens)
        todo = by_cost[i::k]
    else:
        todo = entries
    say = log or (lambda s: None)
    corpora: dict[tuple[str, int], Any] = {}
    records = []
    t0 = time.time()
    timed: list[tuple[float, float]] = []  # (FLOPs per token, seconds per token) of runs trained here
    for j, e in enumerate(todo):
        key = (e["data"], e["model"].vocab_size)
        if key not in corpora:
            corpora[key] = load_corpus(e["data"], vocab_size=e["model"].vocab_size)
        elapsed = time.time() - t0
        eta = _eta(todo[j:], timed)
        say(f"sweep: run {j + 1}/{len(todo)} {e['run_id']} ({e['kind']}); "
            f"{elapsed:.0f}s elapsed, sweep ETA {eta}")
        t_run = time.time()
        try:
            rec = train_run(e["model"], e["train"], corpora[key], runs_dir, run_id=e["run_id"], log=log)
        except RunBusy as busy:  # another worker has it: leave it to them, go on with the rest
            say(f"sweep: skipping {e['run_id']}: {busy}")
            continue
        records.append(rec)
        seconds = time.time() - t_run
        if seconds > 1.0 and rec.get("D"):  # trained here, not skipped as already completed
            timed.append((flops_per_token(e["model"])["full"], seconds / rec["D"]))
    return records


def _eta(remaining: list[dict[str, Any]], timed: list[tuple[float, float]]) -> str:
    """Time left for ``remaining`` runs, from the runs timed so far in this sweep.

    Seconds per token are modelled as a power of FLOPs per token, fitted in log-log space to
    the timed runs (slope kept in [0, 1]): bigger models use the hardware better, so time grows
    more slowly than FLOPs (slope 0.68 on the shipped CPU study; a FLOP-proportional estimate
    was 2-3x too long there). With one timed size, proportional to FLOPs. "?" before any run.
    """
    if not timed:
        return "?"
    f = np.log([t[0] for t in timed])
    spt = np.log([t[1] for t in timed])
    k = 1.0
    if np.unique(f).size >= 2:
        k = float(np.clip(np.polyfit(f, spt, 1)[0], 0.0, 1.0))
    c = float(np.mean(spt - k * f))
    left = sum(e["train"].tokens * np.exp(c + k * np.log(flops_per_token(e["model"])["full"]))
               for e in remaining)
    return f"{left:.0f}s"


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
