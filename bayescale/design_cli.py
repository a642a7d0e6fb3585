"""The ``design`` command: which runs to train next, ranked by expected information gain per FLOP.

Registered by :mod:`bayescale.cli`; heavy libraries are imported inside the command. Bad input
raises :class:`bayescale.errors.InputError`, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .cli import _log
from .errors import InputError


def _table_nd(path_arg: str, field: str, *, want_cost: bool = False) -> Any:
    """A candidates or target table with N and D columns (and ``cost`` where given)."""
    import numpy as np

    from .runs import _read_table, resolve_source

    path = resolve_source(path_arg)
    if path.is_dir():
        raise InputError("is a directory; expected a CSV/Parquet table with columns N, D", file=str(path), field=field)
    table = _read_table(path)
    missing = [c for c in ("N", "D") if c not in table.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}; expected N and D", file=str(path), field=missing[0])
    cols = ["N", "D", "cost"] if want_cost and "cost" in table.columns else ["N", "D"]
    for c in cols:
        v = np.asarray(table[c], dtype=float) if table[c].dtype.kind in "fiu" else None
        if v is None or not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise InputError("expected finite numbers > 0 in every row", file=str(path), field=c)
    if len(table) == 0:
        raise InputError("has no rows; expected at least one (N, D) row", file=str(path), field="N")
    return table


def cmd_design(args: argparse.Namespace) -> int:
    import warnings

    import numpy as np

    from . import design as dz
    from .cli import _fmt, _group_views, _table, _usable
    from .store import load_posterior

    t0 = time.perf_counter()
    if args.objective == "loss_at" and not args.target:
        raise InputError("the loss_at objective needs --target TABLE (columns N, D: the runs you will decide on)",
                         field="--target")
    target = _table_nd(args.target, "--target") if args.target else None
    cand_table = _table_nd(args.candidates, "--candidates", want_cost=True) if args.candidates else None
    idata = load_posterior(args.model)
    _usable(idata, args)
    [(_, idata)] = _group_views(idata, args, all_groups=False)
    dr = dz.design_draws(idata, args.draws)
    C_max = float(dr.C_obs.max())
    target_compute = args.target_compute or 100.0 * C_max
    phi = dz.objective_draws(dr, args.objective, target_compute=target_compute, seed=args.seed,
                             target=None if target is None else (target["N"].to_numpy(float),
                                                                 target["D"].to_numpy(float)))
    extra: list[dict[str, Any]] | None = None
    if cand_table is not None:
        N, D = cand_table["N"].to_numpy(float), cand_table["D"].to_numpy(float)
        cost = cand_table["cost"].to_numpy(float) if "cost" in cand_table.columns else 6.0 * N * D
        keep = [c for c in cand_table.columns if c not in ("N", "D", "cost")]
        extra = cand_table[keep].to_dict("records")
        source = f"{len(N)} candidates from {args.candidates}"
    else:
        max_c = args.max_compute or 10.0 * C_max
        n_b = (dr.N_obs.min() / args.widen, dr.N_obs.max() * args.widen)
        d_b = (dr.D_obs.min() / args.widen, dr.D_obs.max() * args.widen)
        if args.isoflop:
            N, D = dz.isoflop_candidates([c for c in args.isoflop if c <= max_c and c >= (args.min_compute or 0)],
                                         n_b, d_b, args.points)
            source = f"isoFLOP lines at {', '.join(_fmt(c) for c in args.isoflop)}"
        else:
            N, D = dz.grid_candidates(dr.N_obs, dr.D_obs, widen=args.widen, points=args.points, max_compute=max_c,
                                      min_compute=args.min_compute)
            source = f"a {args.points} x {args.points} log grid (observed N, D ranges x{args.widen:g} each side)"
        if len(N) == 0:
            raise InputError(f"no candidates inside the bounds (N in [{_fmt(n_b[0])}, {_fmt(n_b[1])}], D in "
                             f"[{_fmt(d_b[0])}, {_fmt(d_b[1])}], C <= {_fmt(max_c)}); raise --max-compute or --widen",
                             field="--max-compute" if args.max_compute else "--isoflop")
        cost = 6.0 * N * D
        low = f"{_fmt(args.min_compute)} <= " if args.min_compute else ""
        source += f", {low}C <= {_fmt(max_c)}: {len(N)} candidates"
    if args.budget is not None and args.budget < cost.min():
        raise InputError(f"the budget {_fmt(args.budget)} FLOP is below the cheapest candidate's cost "
                         f"({_fmt(float(cost.min()))} FLOP)", field="--budget")
    _log(args, f"design: {source}; {dr.M} of {dr.total} posterior draws; objective {args.objective}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dz.DrawsWarning)
        ranking = dz.rank(dr, N, D, cost, phi=phi, bounds=max(args.top, 20))
    notes = [str(w.message) for w in caught]
    for n in notes:
        _log(args, f"warning: {n}")
    width0 = dz.interval_width(phi) if phi is not None else None
    P = 0 if phi is None else phi.shape[1]

    def width_after(i: int, ratio: float | None, info: float) -> float | None:
        if width0 is None:
            return None
        if P == 1 and ratio is not None:
            return width0 * ratio
        return width0 * float(np.exp(-info / P))  # several targets: geometric-mean shrinkage

    def row(i: int, eig: float, ratio: float | None) -> dict[str, Any]:
        r = {"N": float(N[i]), "D": float(D[i]), "cost": float(cost[i]), "eig": float(eig),
             "eig_per_flop": float(eig / cost[i]), "eig_full": float(ranking.full[i]),
             "eig_lower": float(ranking.lower[i]), "eig_upper": float(ranking.upper[i]),
             "width90_after": width_after(i, ratio, eig)}
        if extra is not None:
            r.update(extra[i])
        return r

    batch = None
    if args.budget is not None:
        sel = dz.select(dr, ranking, budget=args.budget, phi=phi, max_picks=args.top,
                        seed=args.seed)
        selected = [row(i, e, r) for i, e, r in zip(sel.picks, sel.eig, sel.sd_ratio, strict=True)]
        batch = {"budget": float(args.budget), "spent": sel.spent, "runs": len(sel.picks), "joint_eig": sel.joint_eig,
                 "greedy_by": sel.rule,
                 "width90_after": width_after(-1, sel.sd_ratio[-1] if sel.sd_ratio else None, sel.joint_eig)}
    else:
        order = np.argsort(-ranking.eig_per_flop)[: args.top]
        selected = [row(int(i), ranking.eig[i], None if ranking.sd_ratio is None else float(ranking.sd_ratio[i]))
                    for i in order]
    fig_path = None
    if not args.no_figure:
        from .plot_cli import _out_dir

        out = _out_dir(args.out or str(Path(args.model).with_suffix("")) + "-design")
        fig_path = out / "design.png"
        fig = plot_design(dr, ranking, [s["N"] for s in selected], [s["D"] for s in selected], args.objective,
                          target_compute if args.objective in ("n_opt", "d_opt", "loss_opt") else None,
                          show_grid=cand_table is None and not args.isoflop)
        fig.savefig(fig_path, dpi=110)
    seconds = time.perf_counter() - t0
    res = {"model": args.model, "objective": args.objective, "seconds": round(seconds, 3),
           "estimator": {"name": "rao-blackwellised mixture entropy",
                         "targeted": "gaussian moment approximation" if phi is not None else None,
                         "draws": dr.M, "posterior_draws": dr.total,
                         "noise_quadrature": f"{dz.NODES[dr.likelihood]} nodes ({dr.likelihood})",
                         "bounds": "nested MC (upper), prior-contrastive (lower)", "contrast": dz.CONTRAST},
           "candidates": int(len(N)), "warnings": notes, "selected": selected,
           "width90_before": width0, "figure": None if fig_path is None else str(fig_path)}
    if args.objective in ("n_opt", "d_opt", "loss_opt"):
        res["target_compute"] = float(target_compute)
    if batch is not None:
        res["batch"] = batch
    if args.json:
        from .cli import _emit_json

        _emit_json(res)
        return 0
    what = {"n_opt": "log N*", "d_opt": "log D*", "loss_opt": "log loss at the optimum",
            "loss_at": "log loss at the target rows", "params": "all parameters"}[args.objective]
    at = f" at C = {_fmt(target_compute)}" if "target_compute" in res else ""
    print(f"{args.model}: " + (f"a batch for {_fmt(args.budget)} FLOP, chosen by information about {what}{at}"
                                f"{', per FLOP' if batch['greedy_by'] == 'EIG per FLOP' else ''}, in the order picked"
                                if batch else f"runs ranked by information about {what}{at}, per FLOP"))
    w_head = "90% width after" if width0 is not None else ""
    rows = [[str(k + 1), _fmt(r["N"]), _fmt(r["D"]), _fmt(r["cost"]), f"{r['eig']:.4f}", _fmt(r["eig_per_flop"]),
             "" if r["width90_after"] is None else f"{r['width90_after']:.4f}"] for k, r in enumerate(selected)]
    print(_table(rows, ["#", "N", "D", "cost (FLOP)", "EIG (nats)", "EIG/FLOP", w_head]))
    if width0 is not None:
        print(f"(90% width of {what}{at} now: {width0:.4f}" + ("; after the batch: "
              f"{batch['width90_after']:.4f}" if batch and batch["width90_after"] is not None else "") + ")")
    if batch:
        print(f"batch: {batch['runs']} runs, {_fmt(batch['spent'])} of {_fmt(batch['budget'])} FLOP, joint EIG "
              f"{batch['joint_eig']:.4f} nats (each row's EIG is given the rows above it; chosen greedily by "
              f"{batch['greedy_by']}: its batch held at least as much as the other rule's)")
    if fig_path:
        print(f"figure: {fig_path}")
    return 0


def plot_design(dr: Any, ranking: Any, sel_N: list[float], sel_D: list[float], objective: str,
                target_compute: float | None, *, show_grid: bool = True) -> Any:
    """EIG per FLOP over (log N, log D), with the observed runs, the chosen runs and isoFLOP lines."""
    import numpy as np
    from matplotlib.colors import LogNorm

    from .plots import OKABE_ITO, _figure

    fig, axes = _figure(1, 1, width=7.5, height=5.6)
    ax = axes[0, 0]
    val = np.maximum(ranking.eig_per_flop, 1e-300)
    pos = ranking.eig_per_flop > 0
    norm = LogNorm(vmin=max(val[pos].min(), val[pos].max() * 1e-6) if pos.any() else 1e-30,
                   vmax=val.max() if pos.any() else 1.0)
    sc = ax.scatter(ranking.N, ranking.D, c=val, cmap="viridis", norm=norm, s=40 if show_grid else 28, marker="s",
                    linewidths=0, gid="candidates")
    fig.colorbar(sc, ax=ax, label="EIG per FLOP (nats / FLOP)")
    ax.scatter(dr.N_obs, dr.D_obs, s=14, color="white", edgecolors="black", linewidths=0.7, label="observed runs",
               zorder=3, gid="observed")
    ax.scatter(sel_N, sel_D, s=180, marker="*", color=OKABE_ITO["vermillion"], edgecolors="black", linewidths=0.8,
               label="chosen runs", zorder=4, gid="chosen")
    for k, (n, d) in enumerate(zip(sel_N, sel_D, strict=True)):
        ax.annotate(str(k + 1), (n, d), xytext=(5, 5), textcoords="offset points", fontsize=8, zorder=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    xlo, xhi = ax.get_xlim()
    ylo, yhi = ax.get_ylim()
    cmin, cmax = 6 * xlo * ylo, 6 * xhi * yhi
    for e in range(int(np.ceil(np.log10(cmin))), int(np.floor(np.log10(cmax))) + 1):
        n = np.geomspace(xlo, xhi, 50)
        ax.plot(n, 10.0**e / (6 * n), color="0.5", lw=0.7, ls="--", zorder=1)
        d_mid = 10.0**e / (6 * np.sqrt(xlo * xhi))
        if ylo < d_mid < yhi:
            ax.annotate(f"1e{e}", (np.sqrt(xlo * xhi), d_mid), fontsize=7, color="0.4")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("N (non-embedding parameters)")
    ax.set_ylabel("D (training tokens)")
    what = {"params": "all parameters", "loss_at": "loss at the target rows", "n_opt": "N*", "d_opt": "D*",
            "loss_opt": "the optimal loss"}.get(objective, objective)
    title = f"Expected information per FLOP about {what}"
    if target_compute is not None:
        title += f" at C = {target_compute:.3g}"
    ax.set_title(title + "\n(dashed: isoFLOP lines, 6ND = C)", fontsize=10)
    # below the axes: inside, it hid the candidates and chosen runs in whichever corner it took
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, frameon=False)
    return fig


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``design`` on the ``bayescale`` subparsers."""
    from .cli import _positive_float, _positive_int, add_allow_unconverged, add_quiet
    from .design import MAX_DRAWS, OBJECTIVES

    d = sub.add_parser("design", help="which runs to train next: expected information gain per FLOP")
    d.add_argument("model", metavar="MODEL.nc", help="a posterior written by `bayescale fit`")
    d.add_argument("--objective", choices=list(OBJECTIVES), default="n_opt",
                   help="what the runs should teach: log N*, log D* or the log loss at --target-compute, the log "
                        "losses at --target's rows, or all parameters (default n_opt)")
    d.add_argument("--target-compute", type=_positive_float, metavar="C",
                   help="budget of the n_opt, d_opt and loss_opt objectives in FLOP (default 100 x the largest run)")
    d.add_argument("--target", metavar="TABLE", help="CSV/Parquet with columns N, D: the runs of the loss_at objective")
    d.add_argument("--candidates", metavar="TABLE",
                   help="CSV/Parquet of feasible runs: N, D, optional cost (FLOP; default 6ND); other columns are "
                        "carried into the output (default: a log grid)")
    d.add_argument("--isoflop", type=_positive_float, nargs="+", metavar="C",
                   help="candidates along these isoFLOP lines instead of a grid")
    d.add_argument("--widen", type=_positive_float, default=3.0,
                   help="grid and isoFLOP bounds: the observed N and D ranges widened by this factor on each side "
                        "(default 3)")
    d.add_argument("--max-compute", type=_positive_float, metavar="C",
                   help="drop generated candidates above this compute (default 10 x the largest run)")
    d.add_argument("--min-compute", type=_positive_float, metavar="C",
                   help="drop generated candidates below this compute: runs too small to be worth training, "
                        "which EIG per FLOP favours because they cost almost nothing (default: none)")
    d.add_argument("--points", type=_positive_int, default=40,
                   help="grid points per axis (isoFLOP: per line) (default 40)")
    d.add_argument("--budget", type=_positive_float, metavar="FLOP",
                   help="choose a batch greedily within this compute, earlier picks' outcomes integrated out")
    d.add_argument("--top", type=_positive_int, default=10,
                   help="rows to show (without --budget), or most runs in the batch (with it) (default 10)")
    d.add_argument("--draws", type=_positive_int, default=MAX_DRAWS,
                   help=f"posterior draws used, thinned evenly (default {MAX_DRAWS})")
    d.add_argument("--group", metavar="NAME", help="a grouped posterior's group (new: a group with no runs)")
    d.add_argument("--seed", type=int, default=0, help="seed of the discrepancy draws and batch scenarios (default 0)")
    d.add_argument("--out", metavar="DIR", help="where to write design.png (default MODEL-design/)")
    d.add_argument("--no-figure", action="store_true", help="skip the figure")
    add_allow_unconverged(d)
    d.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_quiet(d)
    d.set_defaults(func=cmd_design)
