"""The design loop: fit, choose the next runs by expected information per FLOP, run them, refit.

A loop holds a *pool* of runs it may buy (each with a cost in FLOP and a way to get its loss) and
a table of runs it has. Each iteration fits the table, summarises the objective (its median and
90% interval), asks :mod:`bayescale.design` for a batch within the iteration's budget, runs the
batch and appends it. It stops when the budget cannot buy the cheapest run left, or when the
objective's 90% width falls below the stop width.

Two pools:

- :class:`OraclePool` replays a published table: a row "costs" its FLOPs and returns the table's
  loss, and a chosen row leaves the pool. Comparisons of design strategies on real losses need
  nothing else.
- :class:`TrainerPool` trains the chosen runs with bayescale's trainer. Its candidates are a small
  ladder of shapes times a grid of token budgets that the trainer reaches exactly (whole steps of
  its batch rule), so the ``(N, D)`` the design values is the ``(N, D)`` that gets trained. Its
  state lives in the runs directory (``loop.json``, written atomically before each batch is
  trained): a killed loop, re-run with the same command, finishes the batch it was training and
  goes on exactly as the uninterrupted loop would have.

Fits. The default is the averaged family (``law="averaged"``), the model ``bayescale fit`` fits by
default: a loop that decides what to train beyond its runs needs the family's intervals, and one
law's are too narrow there (replaying the Chinchilla table, the one-law loop ended with an interval
that excluded the full table's N*, the family's did not; see the README). The family refits cold
through :func:`bayescale.averaging.fit_family` (not :func:`bayescale.fit`, which refuses fewer than
``MIN_RUNS`` runs: a loop may start from three), in about four times the time of one law.
``law="chinchilla"`` (or another law) refits one law through
:func:`bayescale.inference.fit_one_law`, whose sampler is compiled once
(:class:`bayescale.sampler.CompiledNUTS`, padded to a power-of-two bucket, so a growing table
recompiles only when it crosses one), starting from the previous fit's chains and adaptation
(:class:`bayescale.sampler.WarmStart`) with a shorter warm-up. That is sound: the target is the
same law with the same priors, anchored on the new table exactly as a cold fit anchors them; only
where the chains start and the warm-up's first guesses differ, and the warm-up still adapts step
size and mass matrix to the new posterior (a few more runs move it little).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError

#: warm-up per chain of a warm-started refit: the chains already sit in a nearby posterior, and the
#: forward-validation refits of an averaged fit use 200 from the same kind of start
WARM_WARMUP = 300
#: design draws (thinned from the posterior): enough for the targeted EIG of one objective
DESIGN_DRAWS = 512
#: schema of the loop's state file in a runs directory
STATE_SCHEMA = "bayescale.loop/1"
STATE_FILE = "loop.json"
#: the shapes the trainer pool builds candidates from by default: the shipped study's ladder
#: (runs/plan.toml), n_layer, d_model, n_head
DEFAULT_LADDER = ((1, 16, 1), (2, 32, 1), (2, 48, 2), (2, 64, 2), (3, 96, 3), (4, 128, 4), (5, 160, 5))
#: the token range of the default ladder (the shipped study's isoFLOP bounds: one epoch of its corpus at most)
DEFAULT_TOKENS = (4e4, 3.2e6)


# --------------------------------------------------------------------------------------------
# what the loop optimises


@dataclass(frozen=True)
class Objective:
    """What the runs should teach (``bayescale design``'s objectives) and the budget it is about."""

    name: str = "n_opt"
    target_compute: float | None = None  # n_opt, d_opt, loss_opt: the budget (default 100 x the largest run)
    target: tuple[np.ndarray, np.ndarray] | None = None  # loss_at: the (N, D) rows

    def describe(self) -> str:
        what = {"n_opt": "N*", "d_opt": "D*", "loss_opt": "loss at the optimum", "loss_at": "loss at the target rows",
                "params": "all parameters"}[self.name]
        return what + (f"({self.target_compute:.3g})" if self.target_compute and self.name != "loss_at" else "")


@dataclass
class Design:
    """What one design step returns: the picks (indices into the candidates) and the objective's draws."""

    picks: list[int]
    phi: np.ndarray | None  # (M, P) objective draws in log units (None: the params objective)
    eig: float  # joint EIG of the picks (nats)
    target_compute: float | None


def design_step(idata: Any, N: np.ndarray, D: np.ndarray, cost: np.ndarray, budget: float | None,
                objective: Objective, *, seed: int = 0, draws: int = DESIGN_DRAWS) -> Design:
    """The one place the loop calls :mod:`bayescale.design`: objective draws and, with a
    ``budget``, a greedy batch of candidates ranked by (targeted) EIG per FLOP.

    Kept to one function because the design module's interface may still move; everything the
    loop needs from it passes through here.
    """
    import warnings

    from . import design as dz

    dr = dz.design_draws(idata, draws)
    tc = objective.target_compute or 100.0 * float(dr.C_obs.max())
    phi = dz.objective_draws(dr, objective.name, target_compute=tc, target=objective.target, seed=seed)
    if budget is None or len(N) == 0:
        return Design([], phi, 0.0, tc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dz.DrawsWarning)  # the loop's trace records widths, not the warning
        ranking = dz.rank(dr, N, D, cost, phi=phi, bounds=0)
        sel = dz.select(dr, ranking, budget=budget, phi=phi, seed=seed)
    if not sel.picks:
        # no candidate's EIG could be estimated (NaN counts as none): a posterior so wide (a handful
        # of runs) that a simulated outcome leaves one draw with all the weight. Then the single best
        # candidate by unconditional EIG per FLOP that fits is the batch.
        val = np.where(np.isfinite(ranking.eig_per_flop) & (cost <= budget), ranking.eig_per_flop, -np.inf)
        if not np.isfinite(val).any() or val.max() <= 0:
            return Design([], phi, 0.0, tc)
        best = int(np.argmax(val))
        return Design([best], phi, float(ranking.eig[best]), tc)
    return Design([int(i) for i in sel.picks], phi, float(sel.joint_eig), tc)


def summarise(phi: np.ndarray | None) -> dict[str, Any] | None:
    """Median and 90% interval of the objective's first coordinate (natural units: exp of the log),
    and the 90% width in log units, the largest over its coordinates (what ``stop_width`` compares)."""
    if phi is None:
        return None
    q = np.exp(np.quantile(phi[:, 0], [0.05, 0.5, 0.95]))
    widths = np.quantile(phi, 0.95, axis=0) - np.quantile(phi, 0.05, axis=0)
    return {"q05": float(q[0]), "q50": float(q[1]), "q95": float(q[2]), "width90": float(np.max(widths))}


# --------------------------------------------------------------------------------------------
# fitting, warm-started


@dataclass
class Fitter:
    """Refits one law (warm-started) or the averaged family (cold) as the table grows."""

    config: Any  # bayescale.inference.FitConfig
    warm_warmup: int = WARM_WARMUP
    warm: Any = None  # sampler.WarmStart of the last single-law fit
    seconds: list[float] = field(default_factory=list)

    def fit(self, runs: pd.DataFrame, iteration: int, *, source: str) -> Any:
        import jax

        from .inference import fit_one_law
        from .sampler import release_compiled
        from .store import AVERAGED

        cfg = self.config
        release_compiled()  # as bs.fit does: a long loop's compiled programs would exhaust the process's mappings
        t0 = time.perf_counter()
        if cfg.law == AVERAGED:
            from .averaging import fit_family

            # not bs.fit, which refuses fewer than MIN_RUNS runs: a loop starts from a few runs (--init 3),
            # as the one-law refit below does; with too few runs to validate forward the family's
            # weights are equal and the discrepancy rate its prior
            idata = fit_family(runs, replace(cfg, seed=cfg.seed + iteration), quiet=True, source=source)
            self.seconds.append(time.perf_counter() - t0)
            return idata
        # one law, started where the last fit ended (its adaptation too), with a shorter warm-up
        run_cfg = cfg if self.warm is None else replace(cfg, warmup=min(cfg.warmup, self.warm_warmup))
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), iteration)
        idata, f = fit_one_law(runs, run_cfg, key, source=source, warm_start=self.warm,
                               extra_meta={"warm_started": self.warm is not None})
        self.warm = f.adapted
        self.seconds.append(time.perf_counter() - t0)
        return idata

    def warm_to_json(self) -> dict[str, Any] | None:
        if self.warm is None:
            return None
        w = self.warm
        return {"position": w.position.tolist(), "inverse_mass_matrix": w.inverse_mass_matrix.tolist(),
                "step_size": w.step_size.tolist()}

    def warm_from_json(self, d: dict[str, Any] | None) -> None:
        from .sampler import WarmStart

        self.warm = None if d is None else WarmStart(*(np.asarray(d[k], float) for k in
                                                       ("position", "inverse_mass_matrix", "step_size")))


def convergence(idata: Any) -> str | None:
    """Why this posterior should not steer the loop (R-hat, divergences), or None."""
    from .inference import convergence_problem, diagnostics

    return convergence_problem(diagnostics(idata))


# --------------------------------------------------------------------------------------------
# pools


class OraclePool:
    """Rows of a published table: a chosen row costs its FLOPs and returns the table's loss."""

    def __init__(self, table: pd.DataFrame, cost: np.ndarray | None = None) -> None:
        self.table = table.reset_index(drop=True)
        self.cost = (6.0 * self.table["N"].to_numpy(float) * self.table["D"].to_numpy(float) if cost is None
                     else np.asarray(cost, float))
        self.left = np.ones(len(self.table), bool)

    def take(self, rows: Sequence[int]) -> pd.DataFrame:
        """Remove ``rows`` (table indices) from the pool and return them: their losses are the table's."""
        rows = list(rows)
        self.left[rows] = False
        return self.table.iloc[rows]

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(index, N, D, cost)`` of the rows still in the pool."""
        idx = np.flatnonzero(self.left)
        t = self.table.iloc[idx]
        return idx, t["N"].to_numpy(float), t["D"].to_numpy(float), self.cost[idx]


def oracle_start(table: pd.DataFrame, cost: np.ndarray, init: int) -> list[int]:
    """The ``init`` cheapest rows (ties broken by table order): where a replay starts."""
    return [int(i) for i in np.argsort(cost, kind="stable")[:init]]


@dataclass(frozen=True)
class Ladder:
    """The trainer configurations a live loop may choose from: shapes x token budgets."""

    shapes: tuple[tuple[int, int, int], ...] = DEFAULT_LADDER
    tokens: tuple[float, float] = DEFAULT_TOKENS
    points: int = 12  # token budgets per shape, log-spaced over ``tokens``
    defaults: tuple[tuple[str, Any], ...] = (("data", "default"), ("vocab_size", 512), ("context", 64),
                                            ("seed", 0), ("eval_tokens", 65536), ("threads", 1))
    max_compute: float | None = None  # entries above this 6ND are left out

    @classmethod
    def from_plan(cls, path: str | Path, points: int = 12) -> Ladder:
        """The shapes, defaults and token bounds of a sweep plan (``bayescale sweep``'s TOML)."""
        from ._compat import tomllib

        path = Path(path)
        try:
            plan = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise InputError("no such file; expected a sweep plan (TOML)", file=str(path), field="--plan") from None
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"not valid TOML: {e}", file=str(path), field="--plan") from None
        shapes: list[tuple[int, int, int]] = []
        lo, hi = math.inf, 0.0
        for part in ("grid", "isoflop"):
            for g in plan.get(part, []):
                for s in g.get("shapes", []):
                    try:
                        t = (int(s["n_layer"]), int(s["d_model"]), int(s["n_head"]))
                    except (KeyError, TypeError, ValueError):
                        raise InputError("each shape needs n_layer, d_model and n_head", file=str(path),
                                         field=part) from None
                    if t not in shapes:
                        shapes.append(t)
                if part == "grid" and g.get("tokens"):
                    lo, hi = min(lo, min(map(float, g["tokens"]))), max(hi, max(map(float, g["tokens"])))
                if part == "isoflop":
                    lo = min(lo, float(g.get("min_tokens", lo)))
                    hi = max(hi, float(g.get("max_tokens", 0.0)))
        if not shapes or not (0 < lo < hi < math.inf):
            raise InputError("expected [[grid]] or [[isoflop]] shapes and a token range (grid tokens or "
                             "min_tokens/max_tokens)", file=str(path), field="shapes")
        defaults = tuple(sorted(plan.get("defaults", {}).items()))
        return cls(tuple(sorted(shapes, key=lambda s: (s[1], s[0]))), (lo, hi), points, defaults)

    def entries(self) -> list[dict[str, Any]]:
        """Every candidate: ``{"run_id", "model", "train", "data", "N", "D"}`` with the D the trainer reaches."""
        from .train.model import ModelConfig, non_embedding_params
        from .train.sweep import MODEL_KEYS, TRAIN_KEYS, _round_sig
        from .train.trainer import TrainConfig, resolve_batch_size, run_id_for

        d = dict(self.defaults)
        out, seen = [], set()
        for n_layer, d_model, n_head in self.shapes:
            m = ModelConfig(**{k: v for k, v in d.items() if k in MODEL_KEYS}, n_layer=n_layer, d_model=d_model,
                            n_head=n_head)
            for tok in np.geomspace(*self.tokens, self.points):
                tokens = _round_sig(float(tok))
                t = TrainConfig(**{k: v for k, v in d.items() if k in TRAIN_KEYS and k != "tokens"}, tokens=tokens)
                B = t.batch_size or resolve_batch_size(tokens, m.context)
                steps = tokens // (B * m.context)
                if steps < 1:
                    continue
                rid = run_id_for(m, t)
                D = float(steps * B * m.context)
                if rid in seen or (self.max_compute is not None and 6.0 * non_embedding_params(m) * D
                                   > self.max_compute):
                    continue
                seen.add(rid)
                out.append({"run_id": rid, "model": m, "train": t, "data": str(d.get("data", "default")),
                            "N": float(non_embedding_params(m)), "D": D})
        return out

    def to_json(self) -> dict[str, Any]:
        return {"shapes": [list(s) for s in self.shapes], "tokens": list(self.tokens), "points": self.points,
                "defaults": dict(self.defaults), "max_compute": self.max_compute}


class TrainerPool:
    """Ladder configurations not yet in the runs directory; a chosen one is trained there."""

    def __init__(self, runs_dir: Path, ladder: Ladder, log: Callable[[str], None] | None = None,
                 after_run: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.dir = Path(runs_dir)
        self.ladder = ladder
        self.all = ladder.entries()
        self.by_id = {e["run_id"]: e for e in self.all}
        self.log = log
        self.after_run = after_run  # called after each trained run (tests stop a loop here)
        self._corpora: dict[tuple[str, int], Any] = {}

    def candidates(self, have: set[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        ids = [e["run_id"] for e in self.all if e["run_id"] not in have]
        N = np.array([self.by_id[i]["N"] for i in ids], float)
        D = np.array([self.by_id[i]["D"] for i in ids], float)
        return ids, N, D, 6.0 * N * D

    def train(self, run_id: str) -> dict[str, Any]:
        """Train (or resume, or find completed) one ladder run; return its record."""
        from .train.data import load_corpus
        from .train.trainer import train_run

        e = self.by_id[run_id]
        key = (e["data"], e["model"].vocab_size)
        if key not in self._corpora:
            self._corpora[key] = load_corpus(e["data"], vocab_size=e["model"].vocab_size)
        rec = train_run(e["model"], e["train"], self._corpora[key], self.dir, run_id=run_id, log=self.log)
        if rec.get("status") != "completed":
            raise InputError(f"run {run_id} ended {rec.get('status')!r}, not completed; see its run.json",
                             file=str(self.dir / run_id), field="status")
        if self.after_run is not None:
            self.after_run(rec)
        return rec


# --------------------------------------------------------------------------------------------
# the loop


@dataclass
class Step:
    """One iteration's record in the trace."""

    iteration: int
    runs: int
    spent: float
    objective: dict[str, Any] | None
    chosen: list[dict[str, Any]]
    eig: float
    fit_seconds: float
    design_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "runs": self.runs, "flops_spent": self.spent,
                "objective": self.objective, "chosen": self.chosen, "joint_eig": self.eig,
                "fit_seconds": round(self.fit_seconds, 3), "design_seconds": round(self.design_seconds, 3)}


@dataclass
class LoopResult:
    idata: Any
    steps: list[Step]
    spent: float
    stopped: str  # why the loop ended
    runs: pd.DataFrame
    objective: Objective | None = None  # with the target budget the loop fixed at its start


def fix_target(objective: Objective, start: pd.DataFrame) -> Objective:
    """``objective`` with its budget fixed for the whole loop: by default 100x the largest start run.

    Fixed once, from the runs the loop starts from (which a resumed loop records), so that every
    iteration is about the same N*(C): a default taken from each refit's runs would move C up as the
    loop buys larger runs, and the trajectory would mix answers to different questions.
    """
    if objective.target_compute is not None or objective.name not in ("n_opt", "d_opt", "loss_opt"):
        return objective
    N, D = start["N"].to_numpy(float), start["D"].to_numpy(float)
    C = start["C"].to_numpy(float) if "C" in start else 6.0 * N * D
    return replace(objective, target_compute=100.0 * float(np.max(C)))


#: a chooser: (idata, candidates N, D, cost, budget for this batch, iteration) -> (picks, design or None)
Chooser = Callable[[Any, np.ndarray, np.ndarray, np.ndarray, float, int], list[int]]


def eig_chooser(objective: Objective, *, seed: int = 0, draws: int = DESIGN_DRAWS) -> Chooser:
    """Choose by targeted EIG per FLOP (the design)."""
    def choose(idata: Any, N: np.ndarray, D: np.ndarray, cost: np.ndarray, budget: float, it: int) -> list[int]:
        return design_step(idata, N, D, cost, budget, objective, seed=seed + it, draws=draws).picks
    return choose


def random_chooser(seed: int) -> Chooser:
    """Random affordable candidates, one batch's budget at a time (a baseline)."""
    rng = np.random.default_rng(seed)

    def choose(idata: Any, N: np.ndarray, D: np.ndarray, cost: np.ndarray, budget: float, it: int) -> list[int]:
        picks, left = [], budget
        for i in rng.permutation(len(cost)):
            if cost[i] <= left:
                picks.append(int(i))
                left -= cost[i]
        return picks
    return choose


def cheapest_chooser() -> Chooser:
    """The cheapest candidates first (a baseline: what a cautious team does)."""
    def choose(idata: Any, N: np.ndarray, D: np.ndarray, cost: np.ndarray, budget: float, it: int) -> list[int]:
        picks, left = [], budget
        for i in np.argsort(cost, kind="stable"):
            if cost[i] > left:
                break
            picks.append(int(i))
            left -= cost[i]
        return picks
    return choose


def batch_budget_default(budget: float, cheapest: float) -> float:
    """A quarter of the budget per iteration (at least the cheapest run): about four refits per loop."""
    return max(budget / 4.0, cheapest)


def replay(table: pd.DataFrame, cost: np.ndarray, start: Sequence[int], budget: float, objective: Objective,
           fitter: Fitter, *, chooser: Chooser | None = None, batch_budget: float | None = None,
           stop_width: float | None = None, seed: int = 0, allow_unconverged: bool = False,
           max_iterations: int | None = None, log: Callable[[str], None] | None = None,
           source: str = "<oracle>", stop: Callable[[dict[str, Any] | None], bool] | None = None) -> LoopResult:
    """The loop against a table (:class:`OraclePool`): start from rows ``start``, buy rows until
    ``budget`` FLOP are spent or the objective's 90% width (log units) is below ``stop_width``
    (or ``stop``, given the objective's summary, says so: benchmarks stop at their criterion)."""
    pool = OraclePool(table, cost)
    have = pool.take(start)
    objective = fix_target(objective, have)
    chooser = chooser or eig_chooser(objective, seed=seed)
    steps: list[Step] = []
    spent, it, stopped = 0.0, 0, ""
    while True:
        t0 = time.perf_counter()
        idata = fitter.fit(have.reset_index(drop=True), it, source=source)
        t_fit = time.perf_counter() - t0
        _check(idata, allow_unconverged, it, log)
        idx, N, D, c = pool.candidates()
        summary = summarise(design_step(idata, N[:0], D[:0], c[:0], None, objective, seed=seed).phi)
        left = budget - spent
        step = Step(it, len(have), spent, summary, [], 0.0, t_fit, 0.0)
        steps.append(step)
        _say(log, step)
        stopped = _stop_reason(summary, stop_width, left, c, it, max_iterations)
        if not stopped and stop is not None and stop(summary):
            stopped = "the caller's criterion is met"
        if stopped:
            break
        t1 = time.perf_counter()
        bb = min(left, batch_budget or batch_budget_default(budget, float(c.min())))
        if max_iterations is not None:  # what earlier batches left unspent rolls over to the batches left
            bb = max(bb, left / max(1, max_iterations - it))
        picks = chooser(idata, N, D, c, bb, it)
        if not picks:  # nothing affordable within the batch budget: try the whole remainder once
            picks = chooser(idata, N, D, c, left, it)
        if not picks:
            stopped = "no candidate adds information within the budget left"
            break
        rows = idx[picks]
        new = pool.take(rows)
        spent += float(np.sum(pool.cost[rows]))
        step.chosen = [{"row": int(r), "N": float(n), "D": float(d), "cost": float(pool.cost[r]),
                        "loss": float(loss)} for r, n, d, loss in zip(rows, new["N"], new["D"], new["loss"],
                                                                      strict=True)]
        step.design_seconds = time.perf_counter() - t1
        say_chosen(log, step)
        have = pd.concat([have, new])
        it += 1
    have = have.reset_index(drop=True)
    return LoopResult(idata, steps, spent, stopped, have, objective)


def _check(idata: Any, allow: bool, it: int, log: Callable[[str], None] | None) -> None:
    problem = convergence(idata)
    if problem is None:
        return
    if allow:
        if log:
            log(f"warning: iteration {it}: the fit has not converged ({problem}); going on, as "
                "--allow-unconverged asks")
        return
    raise InputError(f"the fit at iteration {it} has not converged ({problem}); its design would be steered by "
                     "a wrong posterior. Raise --warmup/--draws, start from more runs (--init), or pass "
                     "--allow-unconverged", field="--warmup")


def _stop_reason(summary: dict[str, Any] | None, stop_width: float | None, left: float, cost: np.ndarray,
                 it: int, max_iterations: int | None) -> str:
    if stop_width is not None and summary is not None and summary["width90"] < stop_width:
        return f"the objective's 90% width {summary['width90']:.4g} is below --stop-width {stop_width:g}"
    if len(cost) == 0:
        return "the pool is empty"
    if left < float(cost.min()):
        return "the budget left cannot buy the cheapest candidate"
    if max_iterations is not None and it >= max_iterations:
        return f"{max_iterations} iterations done"
    return ""


def _say(log: Callable[[str], None] | None, step: Step) -> None:
    if log is None:
        return
    o = step.objective
    obj = "" if o is None else f"; objective {o['q50']:.4g} [{o['q05']:.4g}, {o['q95']:.4g}] (90%), log width " \
                               f"{o['width90']:.3f}"
    log(f"iteration {step.iteration}: {step.runs} runs, {step.spent:.3e} FLOP spent{obj} (fit {step.fit_seconds:.1f}"
        " s)")


def say_chosen(log: Callable[[str], None] | None, step: Step) -> None:
    if log is not None and step.chosen:
        log("  chosen: " + ", ".join(f"{c.get('run_id', '')} N={c['N']:.3g} D={c['D']:.3g}".strip()
                                     for c in step.chosen))


# --------------------------------------------------------------------------------------------
# the live loop: the state a runs directory keeps


def read_state(runs_dir: Path) -> dict[str, Any] | None:
    path = Path(runs_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e}); it is the loop's state, written by bayescale loop",
                         file=str(path)) from None
    if state.get("schema") != STATE_SCHEMA:
        raise InputError(f"expected schema {STATE_SCHEMA!r}, got {state.get('schema')!r}", file=str(path),
                         field="schema")
    return state


def write_state(runs_dir: Path, state: dict[str, Any]) -> None:
    from .runs import write_json_atomic

    write_json_atomic(Path(runs_dir) / STATE_FILE, state)


def completed_runs(runs_dir: Path) -> pd.DataFrame:
    """The completed runs of a runs directory (an empty table when there are none)."""
    from .runs import load_runs

    runs_dir = Path(runs_dir)
    if not any((p / "run.json").exists() for p in runs_dir.iterdir() if p.is_dir()):
        return pd.DataFrame(columns=["run_id", "N", "D", "C", "loss", "group"])
    return load_runs(runs_dir, skip_invalid=True)


def live(runs_dir: Path, ladder: Ladder, budget: float, objective: Objective, fitter: Fitter, *,
         settings: dict[str, Any], init: int = 6, batch_budget: float | None = None, stop_width: float | None = None,
         seed: int = 0, allow_unconverged: bool = False, log: Callable[[str], None] | None = None,
         after_run: Callable[[dict[str, Any]], None] | None = None) -> LoopResult:
    """The loop against the trainer (:class:`TrainerPool`), resumable from ``runs_dir`` alone.

    ``runs_dir/loop.json`` records the loop's settings, the runs it started from, each
    iteration's chosen batch (written before the batch is trained) and the sampler state the next
    refit warm-starts from. A re-run with the same settings trains what the last recorded batch
    still lacks (the trainer resumes an interrupted run from its checkpoint), then refits from the
    recorded warm start with the same seed: the same posterior, the same next batch. FLOPs spent
    are the 6ND of the runs added since the start.
    """
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    pool = TrainerPool(runs_dir, ladder, log=log, after_run=after_run)
    state = read_state(runs_dir)
    if state is not None and state["settings"] != settings:
        diff = sorted(k for k in set(state["settings"]) | set(settings)
                      if state["settings"].get(k) != settings.get(k))
        raise InputError(f"holds a loop started with other settings ({', '.join(diff)}); re-run that command to "
                         f"resume it, or use another runs directory", file=str(runs_dir / STATE_FILE),
                         field=diff[0] if diff else None)
    if state is None:
        have = completed_runs(runs_dir)
        start = sorted(map(str, have["run_id"]))
        boot: list[str] = []
        if len(start) < init:  # too few to fit: the cheapest ladder runs first, as a replay starts
            ids, _, _, c = pool.candidates(set(start))
            boot = [ids[i] for i in np.argsort(c, kind="stable")[: init - len(start)]]
        state = {"schema": STATE_SCHEMA, "settings": settings, "start": sorted(start + boot), "batches": [],
                 "warm": None}
        write_state(runs_dir, state)
        for rid in boot:
            pool.train(rid)
    else:
        for rid in state["start"]:  # the bootstrap runs, if a kill came before they were done
            if rid in pool.by_id:
                pool.train(rid)
    fitter.warm_from_json(state["warm"])
    start = set(state["start"])
    begun = completed_runs(runs_dir)  # every start run is trained by now
    objective = fix_target(objective, begun[begun["run_id"].astype(str).isin(start)])
    steps: list[Step] = []
    stopped = ""
    while True:
        it = len(state["batches"])
        if it and not all(_completed(runs_dir, r) for r in state["batches"][-1]):
            for rid in state["batches"][-1]:  # a batch a killed loop did not finish
                pool.train(rid)
        have = completed_runs(runs_dir)
        ids_have = set(map(str, have["run_id"]))
        added = have[~have["run_id"].astype(str).isin(start)]
        spent = float(np.sum(6.0 * added["N"].to_numpy(float) * added["D"].to_numpy(float)))
        t0 = time.perf_counter()
        idata = fitter.fit(have.sort_values("run_id").reset_index(drop=True), it, source=str(runs_dir))
        t_fit = time.perf_counter() - t0
        _check(idata, allow_unconverged, it, log)
        ids, N, D, c = pool.candidates(ids_have)
        summary = summarise(design_step(idata, N[:0], D[:0], c[:0], None, objective, seed=seed).phi)
        step = Step(it, len(have), spent, summary, [], 0.0, t_fit, 0.0)
        steps.append(step)
        _say(log, step)
        left = budget - spent
        stopped = _stop_reason(summary, stop_width, left, c, it, None)
        if stopped:
            break
        t1 = time.perf_counter()
        bb = min(left, batch_budget or batch_budget_default(budget, float(c.min())))
        d = design_step(idata, N, D, c, bb, objective, seed=seed + it)
        if not d.picks:
            d = design_step(idata, N, D, c, left, objective, seed=seed + it)
        if not d.picks:
            stopped = "no candidate adds information within the budget left"
            break
        chosen = [ids[i] for i in d.picks]
        step.eig = d.eig
        step.chosen = [{"run_id": r, "N": pool.by_id[r]["N"], "D": pool.by_id[r]["D"],
                        "cost": 6.0 * pool.by_id[r]["N"] * pool.by_id[r]["D"]} for r in chosen]
        step.design_seconds = time.perf_counter() - t1
        say_chosen(log, step)
        state["batches"].append(chosen)
        state["warm"] = fitter.warm_to_json()
        write_state(runs_dir, state)  # before training: a killed loop resumes this very batch
        for rid in chosen:
            pool.train(rid)
    return LoopResult(idata, steps, spent, stopped, have, objective)


def _completed(runs_dir: Path, run_id: str) -> bool:
    p = Path(runs_dir) / run_id / "run.json"
    if not p.exists():
        return False
    try:
        return json.loads(p.read_text()).get("status") == "completed"
    except json.JSONDecodeError:
        return False


# --------------------------------------------------------------------------------------------
# the trajectory figure


def plot_trajectory(steps: Sequence[Step], objective: Objective, *, title: str = "") -> Any:
    """Objective median and 90% band against FLOPs spent, one point per refit."""
    from .plots import OKABE_ITO, _figure

    fig, axes = _figure(1, 1, width=7.0, height=4.6)
    ax = axes[0, 0]
    pts = [(s.spent, s.objective) for s in steps if s.objective is not None]
    if pts:
        x = np.array([p[0] for p in pts])
        lo, med, hi = (np.array([p[1][k] for p in pts]) for k in ("q05", "q50", "q95"))
        ax.fill_between(x, lo, hi, color=OKABE_ITO["sky"], alpha=0.35, label="90% interval", gid="band")
        ax.plot(x, med, "o-", color=OKABE_ITO["blue"], label="median", gid="median")
        ax.set_yscale("log")
    ax.set_xlabel("FLOPs spent on chosen runs (6ND)")
    ax.set_ylabel(objective.describe())
    ax.set_title(title or f"{objective.describe()}: posterior as the loop buys runs", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def trace_json(result: LoopResult, objective: Objective, extra: dict[str, Any]) -> dict[str, Any]:
    return {"objective": objective.name, "target_compute": objective.target_compute, **extra,
            "flops_spent": result.spent, "stopped": result.stopped, "iterations": [s.to_json() for s in result.steps]}


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
