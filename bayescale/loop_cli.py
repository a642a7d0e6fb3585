"""The ``loop`` command: fit, design, run the chosen runs, refit, until the budget is spent.

Registered by :mod:`bayescale.cli`; heavy libraries are imported inside the command. Bad input
raises :class:`bayescale.errors.InputError`, which the CLI turns into exit status 2. The loop
itself is :mod:`bayescale.loop`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from .cli import _log, _quiet
from .errors import InputError


def parse_budget(text: str) -> tuple[float, bool]:
    """``"3e13"`` -> (3e13, False); ``"5%"`` -> (5.0, True). Raises InputError on anything else."""
    s = str(text).strip()
    pct = s.endswith("%")
    try:
        v = float(s[:-1] if pct else s)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v > 0) or (pct and v > 100):
        raise InputError(f"expected FLOP (e.g. 3e13) or a percentage of the pool's total cost (e.g. 5%), got "
                         f"{text!r}", field="--budget")
    return v, pct


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a resumed live loop must share with the loop it resumes (recorded in DIR/loop.json)."""
    return {"budget": args.budget, "objective": args.objective, "target_compute": args.target_compute,
            "target": args.target, "law": args.law, "init": args.init, "batch_budget": args.batch_budget,
            "stop_width": args.stop_width, "seed": args.seed, "plan": args.plan, "points": args.points,
            "max_compute": args.max_compute, "chains": args.chains, "warmup": args.warmup, "draws": args.draws}


def cmd_loop(args: argparse.Namespace) -> int:
    import numpy as np

    from . import loop as lp
    from .cli import _fmt
    from .design_cli import _table_nd
    from .inference import FitConfig
    from .runs import load_runs

    t0 = time.perf_counter()
    if (args.runs is None) == (args.oracle is None):
        raise InputError("give exactly one of --runs DIR (train the chosen runs) or --oracle TABLE (replay a "
                         "table)", field="--runs" if args.runs is None else "--oracle")
    budget, pct = parse_budget(args.budget)
    if args.objective == "loss_at" and not args.target:
        raise InputError("the loss_at objective needs --target TABLE (columns N, D)", field="--target")
    if args.stop_width is not None and args.objective == "params":
        raise InputError("the params objective has no single 90% width; --stop-width needs n_opt, d_opt, loss_opt "
                         "or loss_at", field="--stop-width")
    target = None
    if args.target:
        t = _table_nd(args.target, "--target")
        target = (t["N"].to_numpy(float), t["D"].to_numpy(float))
    objective = lp.Objective(args.objective, args.target_compute, target)
    cfg = FitConfig(law=args.law, chains=args.chains, warmup=args.warmup, draws=args.draws, seed=args.seed)
    fitter = lp.Fitter(cfg, warm_warmup=min(args.warmup, lp.WARM_WARMUP))
    log = None if _quiet(args) else lp.stderr
    out = None
    if args.out:
        from .plot_cli import _out_dir

        out = _out_dir(args.out)

    if args.oracle is not None:
        mode = "oracle"
        table = load_runs(args.oracle, columns=args.columns, filter=args.filter)
        cost = (table["cost"].to_numpy(float) if "cost" in table.columns
                else 6.0 * table["N"].to_numpy(float) * table["D"].to_numpy(float))
        if not np.all(np.isfinite(cost) & (cost > 0)):
            raise InputError("expected finite costs > 0 (FLOP) in every row", file=args.oracle, field="cost")
        if pct:
            budget = budget / 100.0 * float(cost.sum())
        start = lp.oracle_start(table, cost, args.init)
        inside = np.ones(len(table), bool)
        inside[start] = False
        if args.max_compute is not None:
            inside &= cost <= args.max_compute
        if not inside.any():
            raise InputError(f"no candidates inside the bounds: the table has {len(table)} rows, the start takes "
                             f"{len(start)}" + (f" and --max-compute {_fmt(args.max_compute)} drops the rest"
                                                if args.max_compute is not None else ""),
                             file=args.oracle, field="--max-compute" if args.max_compute else "--init")
        cheapest = float(cost[inside].min())
        if budget < cheapest:
            raise InputError(f"the budget {_fmt(budget)} FLOP is below the cheapest candidate's cost "
                             f"({_fmt(cheapest)} FLOP)", field="--budget")
        if args.max_compute is not None:  # rows above the bound never enter the pool
            keep = np.flatnonzero(inside | np.isin(np.arange(len(table)), start))
            table, cost = table.iloc[keep].reset_index(drop=True), cost[keep]
            start = [int(np.flatnonzero(keep == s)[0]) for s in start]
        _log(args, f"loop: replaying {args.oracle}: {len(table)} rows, start from the {len(start)} cheapest, budget "
                   f"{_fmt(budget)} FLOP, objective {objective.describe()}, {args.law} law")
        result = lp.replay(table, cost, start, budget, objective, fitter, batch_budget=args.batch_budget,
                           stop_width=args.stop_width, seed=args.seed, allow_unconverged=args.allow_unconverged,
                           log=log, source=args.oracle)
        extra: dict[str, Any] = {"mode": mode, "source": args.oracle, "budget": budget, "start_rows": start}
    else:
        mode = "runs"
        if pct:
            raise InputError("a percentage budget is a share of an --oracle table's cost; give FLOP with --runs",
                             field="--budget")
        runs_dir = Path(args.runs)
        if runs_dir.exists() and not runs_dir.is_dir():
            raise InputError("is not a directory; expected a runs directory", file=str(runs_dir), field="--runs")
        plan = args.plan or (str(runs_dir / "plan.toml") if (runs_dir / "plan.toml").exists() else None)
        ladder = lp.Ladder.from_plan(plan, args.points) if plan else lp.Ladder(points=args.points)
        entries = ladder.entries()
        have = set()
        if runs_dir.is_dir():
            have = {p.name for p in runs_dir.iterdir() if (p / "run.json").exists()}
        costs = np.array([6.0 * e["N"] * e["D"] for e in entries if e["run_id"] not in have
                          and (args.max_compute is None or 6.0 * e["N"] * e["D"] <= args.max_compute)])
        if len(costs) == 0:
            raise InputError(f"no candidates inside the bounds: the ladder ({len(ladder.shapes)} shapes x "
                             f"{ladder.points} token budgets in [{_fmt(ladder.tokens[0])}, {_fmt(ladder.tokens[1])}]"
                             ") has none left" + (f" at C <= {_fmt(args.max_compute)}" if args.max_compute else ""),
                             field="--max-compute" if args.max_compute else "--plan")
        if budget < float(costs.min()):
            raise InputError(f"the budget {_fmt(budget)} FLOP is below the cheapest candidate's cost "
                             f"({_fmt(float(costs.min()))} FLOP)", field="--budget")
        if args.max_compute is not None:
            from dataclasses import replace

            ladder = replace(ladder, max_compute=args.max_compute)
        _log(args, f"loop: training into {runs_dir}: a ladder of {len(ladder.shapes)} shapes x {ladder.points} token "
                   f"budgets, budget {_fmt(budget)} FLOP, objective {objective.describe()}, {args.law} law")
        result = lp.live(runs_dir, ladder, budget, objective, fitter, settings=_settings(args), init=args.init,
                         batch_budget=args.batch_budget, stop_width=args.stop_width, seed=args.seed,
                         allow_unconverged=args.allow_unconverged, log=log,
                         after_run=getattr(args, "after_run", None))
        extra = {"mode": mode, "runs": str(runs_dir), "budget": budget, "ladder": ladder.to_json()}
    final = result.steps[-1].objective if result.steps else None
    objective = result.objective or objective  # with the budget the loop fixed at its start
    files: dict[str, str] = {}
    trace = lp.trace_json(result, objective, extra)
    if out is not None:
        from .runs import write_json_atomic
        from .store import save_posterior

        save_posterior(result.idata, out / "posterior.nc")
        files["posterior"] = str(out / "posterior.nc")
        write_json_atomic(out / "trace.json", trace)
        files["trace"] = str(out / "trace.json")
        fig = lp.plot_trajectory(result.steps, objective)
        fig.savefig(out / "trajectory.png", dpi=110)
        files["figure"] = str(out / "trajectory.png")
    seconds = time.perf_counter() - t0
    res = {**trace, "law": args.law, "runs_final": int(len(result.runs)), "final": final,
           "fit_seconds": [round(s, 3) for s in fitter.seconds], "seconds": round(seconds, 3), "files": files}
    if args.json:
        from .cli import _emit_json

        _emit_json(res)
        return 0
    what = objective.describe()
    print(f"loop ({mode}): {len(result.steps)} fits, {int(len(result.runs))} runs, {_fmt(result.spent)} of "
          f"{_fmt(budget)} FLOP spent in {seconds:.1f} s; stopped: {result.stopped}")
    if final is not None:
        print(f"{what}: {_fmt(final['q50'])} [{_fmt(final['q05'])}, {_fmt(final['q95'])}] (90%), log width "
              f"{final['width90']:.4f}")
    for k, v in files.items():
        print(f"{k}: {v}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``loop`` on the ``bayescale`` subparsers."""
    from .cli import _positive_float, _positive_int, add_allow_unconverged, add_quiet
    from .design import OBJECTIVES
    from .laws import LAWS
    from .loop import DEFAULT_TOKENS
    from .store import AVERAGED

    p = sub.add_parser("loop", help="fit, choose runs by EIG per FLOP, run them, refit, until the budget is spent")
    src = p.add_argument_group("where runs come from (exactly one)")
    src.add_argument("--runs", metavar="DIR",
                     help="train the chosen runs with bayescale's trainer into this runs directory (resumable: re-run "
                          "the same command after a kill)")
    src.add_argument("--oracle", metavar="TABLE",
                     help="replay a table (N, D, loss, optional C and cost): a chosen row costs its FLOPs and "
                          "returns its loss")
    p.add_argument("--budget", required=True, metavar="FLOP|PCT%",
                   help="FLOPs to spend on chosen runs, or with --oracle a percentage of the table's total cost "
                        "(e.g. 5%%)")
    p.add_argument("--objective", choices=list(OBJECTIVES), default="n_opt",
                   help="what the runs should teach, as in bayescale design")
    p.add_argument("--target-compute", type=_positive_float, metavar="C",
                   help="budget of the n_opt, d_opt and loss_opt objectives in FLOP (default 100 x the largest run)")
    p.add_argument("--target", metavar="TABLE", help="CSV/Parquet with columns N, D: the runs of the loss_at objective")
    p.add_argument("--law", choices=[*LAWS, AVERAGED], default=AVERAGED,
                   help="what each iteration refits: the averaged family, as bayescale fit does by default (cold "
                        "refits), or one law (warm-started, several times faster, but its intervals beyond the runs "
                        "are too narrow to steer a budget by) (default averaged)")
    p.add_argument("--init", type=_positive_int, default=3, metavar="K",
                   help="start from the K cheapest rows (--oracle), or train the K cheapest ladder runs first when "
                        "DIR has fewer (--runs)")
    p.add_argument("--batch-budget", type=_positive_float, metavar="FLOP",
                   help="FLOPs per iteration's batch (default a quarter of --budget)")
    p.add_argument("--stop-width", type=_positive_float, metavar="W",
                   help="stop once the objective's 90%% interval is narrower than W in natural-log units")
    p.add_argument("--max-compute", type=_positive_float, metavar="C",
                   help="leave candidates above this cost (FLOP) out of the pool")
    p.add_argument("--columns", metavar="N=..,D=..,loss=..",
                   help="--oracle: map the table's own column names onto N, D, loss (and C, cost), as fit does")
    p.add_argument("--filter", metavar="QUERY", help="--oracle: a pandas query selecting the table's rows")
    p.add_argument("--plan", metavar="PLAN.toml",
                   help="--runs: the sweep plan whose shapes, defaults and token range make the ladder of candidates "
                        "(default DIR/plan.toml, else the shipped study's 7 shapes, "
                        f"{DEFAULT_TOKENS[0]:.0e}-{DEFAULT_TOKENS[1]:.1e} tokens)")
    p.add_argument("--points", type=_positive_int, default=12,
                   help="--runs: token budgets per shape, log-spaced over the ladder's token range")
    p.add_argument("--chains", type=_positive_int, default=4, help="NUTS chains per refit")
    p.add_argument("--warmup", type=_positive_int, default=500,
                   help="warm-up iterations of the first fit (warm-started refits use at most 300)")
    p.add_argument("--draws", type=_positive_int, default=500, help="draws per chain of every refit")
    p.add_argument("--seed", type=int, default=0, help="seed of the fits and the design's scenarios")
    p.add_argument("--out", metavar="DIR",
                   help="write the final posterior (posterior.nc), the trace (trace.json) and the trajectory figure "
                        "(trajectory.png) here (default: none)")
    add_allow_unconverged(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_quiet(p)
    p.set_defaults(func=cmd_loop)
