"""The ``plot``, ``compare`` and ``report`` commands (registered by :mod:`bayescale.cli`).

Heavy libraries are imported inside the commands. Bad input raises
:class:`bayescale.errors.InputError`, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from pathlib import Path
from typing import Any

from .cli import _log
from .errors import InputError


def _progress(args: argparse.Namespace) -> Any:
    """A ``progress(name)`` callback that says which figure is being drawn (``[i/n] name``)."""

    def say(name: str, i: int, n: int) -> None:
        _log(args, f"  [{i}/{n}] {name}")

    return say


def _emit(obj: Any) -> None:
    from .cli import _emit_json

    _emit_json(obj)


def _out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(
            "exists and is not a directory; expected a directory for the output",
            file=str(out),
            field="--out",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(
            f"could not create the directory: {e.strerror or e}", file=str(out), field="--out"
        ) from None
    return out


# --------------------------------------------------------------------------------------------
# plot


def cmd_plot(args: argparse.Namespace) -> int:
    from .cli import _group_views, _usable
    from .plots import plot_all
    from .store import groups_of, load_posterior

    idata = load_posterior(args.model)
    _usable(idata, args)
    out = _out_dir(args.out or str(Path(args.model).with_suffix("")) + "-plots")
    if groups_of(idata) and args.group is None:  # the groups side by side; --group G for one group's figures
        from .plots import plot_groups

        _log(args, f"drawing the groups of {args.model} into {out}/ (--group NAME draws one group's figures) ...")
        path = out / f"groups.{args.format}"
        plot_groups(idata).savefig(path, dpi=110)
        if args.json:
            _emit({"model": args.model, "figures": [str(path)]})
        else:
            print(path)
        return 0
    [(_, idata)] = _group_views(idata, args, all_groups=False)
    _log(args, f"drawing figures of {args.model} into {out}/ ...")
    paths = plot_all(idata, out, fmt=args.format, progress=_progress(args))
    if args.json:
        _emit({"model": args.model, "figures": [str(p) for p in paths]})
    else:
        print("\n".join(str(p) for p in paths))
    return 0


# --------------------------------------------------------------------------------------------
# compare

PARETO_K_BAD = 0.7  # PSIS estimates are unreliable above this (Vehtari et al. 2017/2024)


def expand_laws(models: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Each averaged posterior replaced by its laws (``NAME:LAW``), with what its averaging said of
    each: ``{NAME:LAW: {"lfo_weight", "elpd_lfo", "cuts"}}``."""
    from .store import is_averaged, law_view, laws_of, metadata

    out, lfo = {}, {}
    for name, idata in models.items():
        if not is_averaged(idata):
            out[name] = idata
            continue
        meta = metadata(idata)
        for law in laws_of(idata):
            key = f"{name}:{law}"
            out[key] = law_view(idata, law)
            rows = meta["laws"][law]["lfo"]
            lfo[key] = {"lfo_weight": meta["laws"][law]["weight"],
                        "elpd_lfo": sum(r["elpd_with_discrepancy"] for r in rows) if rows else None,
                        "cuts": meta["averaging"]["cuts"]}
    return out, lfo


def compare_models(models: dict[str, Any], *, by_group: bool = False, quiet: bool = True) -> dict[str, Any]:
    """PSIS-LOO comparison of posteriors fitted to the same data (and leave-one-group-out with
    ``by_group``).

    An averaged posterior enters as its laws, each with the weight and forward-validation score
    its averaging gave it beside the LOO figures: LOO scores fit among the runs one has, the
    forward scores how each law predicted the runs beyond a cut.

    Parameters
    ----------
    models
        ``{name: InferenceData}``: at least two laws in all (the pointwise log-likelihood is the
        file's, or recomputed from the draws: :func:`bayescale.inference.with_log_likelihood`).

    Returns
    -------
    dict
        ``table``: one row per law, best first (``elpd_loo, se, p_loo, elpd_diff, dse,
        weight, pareto_k_bad``, and ``lfo_weight`` and ``elpd_lfo`` for the laws of an averaged
        posterior, else null), and ``pareto_k_threshold``. With ``by_group``, ``by_group``: the
        leave-one-group-out ranking of :func:`bayescale.logo.compare_by_group` (one refit per law
        and group; ``quiet=False`` says which on stderr).
    """
    import warnings

    import numpy as np

    from ._arviz import az
    from ._idata import as_arviz
    from .inference import with_log_likelihood
    from .store import metadata

    models, lfo = expand_laws(models)
    if len(models) < 2:
        raise InputError(
            f"expected at least two posteriors to compare, got {len(models)}", field="MODEL"
        )
    laws_only = models
    if by_group:  # refuse before any work if there are no groups to leave out
        from .logo import group_labels

        group_labels(laws_only)
    # saved files leave the pointwise log-likelihood out: it is recomputed from the draws
    models = {name: as_arviz(with_log_likelihood(idata)) for name, idata in models.items()}
    ref = None
    for name, idata in models.items():
        y = np.asarray(idata.observed_data["log_loss"].values)
        if ref is None:
            ref = (name, y)
        elif y.shape != ref[1].shape or not np.allclose(y, ref[1]):
            raise InputError(
                f"was fitted to different data than {ref[0]} ({y.size} vs "
                f"{ref[1].size} runs, or different values); LOO compares fits of the "
                "same data",
                file=name,
                field="observed_data",
            )
    loos = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz: high Pareto k (counted below)
        for name, idata in models.items():
            loos[name] = az.loo(idata, var_name="log_loss", pointwise=True)
        df = az.compare(loos, ic="loo")
    rows = []
    for name, r in df.iterrows():
        k = np.asarray(loos[name].pareto_k)
        rows.append(
            {
                "model": str(name),
                "law": metadata(models[name])["law"],
                "rank": int(r["rank"]),
                "elpd_loo": float(r["elpd_loo"]),
                "se": float(r["se"]),
                "p_loo": float(r["p_loo"]),
                "elpd_diff": float(r["elpd_diff"]),
                "dse": float(r["dse"]),
                "weight": float(r["weight"]),
                "pareto_k_bad": int(np.sum(k > PARETO_K_BAD)),
                "n_obs": int(k.size),
                "lfo_weight": lfo.get(str(name), {}).get("lfo_weight"),
                "elpd_lfo": lfo.get(str(name), {}).get("elpd_lfo"),
            }
        )
    cuts = sorted({c for v in lfo.values() for c in v["cuts"]})
    out = {"table": rows, "pareto_k_threshold": PARETO_K_BAD, "lfo_cuts": cuts}
    if by_group:
        from .logo import compare_by_group

        out["by_group"] = compare_by_group(laws_only, quiet=quiet)
    return out


COMPARE_BAND_ALPHA = 0.18  # the 90% band's opacity (the 50% band's is twice it)


def plot_compare(models: dict[str, Any], *, extrapolate_decades: float = 2.0) -> Any:
    """Overlay of the frontiers ``L*(C)`` and allocations ``N*(C)`` of several posteriors.

    Each model's legend entry is a swatch of its own 90% band's colour edged with its median
    line's, so every band can be told apart; two grey entries say which shade is 90% and which 50%.
    """
    import numpy as np
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    from .plots import OKABE_ITO, _bands, _figure, _logspace, _observed, dress_frontier_pair
    from .posterior import optimal_draws
    from .store import metadata

    models, _ = expand_laws(models)
    colors = [OKABE_ITO[c] for c in ("blue", "vermillion", "green", "purple", "orange", "sky")]
    C_all = np.concatenate([_observed(m)["C"] for m in models.values()])
    grid = _logspace(C_all.min() / 3, C_all.max() * 10**extrapolate_decades, 60)
    fig, axes = _figure(1, 2, width=12.0, height=4.8, sharex=True)
    handles = []
    for i, (name, idata) in enumerate(models.items()):
        dr = optimal_draws(idata, grid)
        c = colors[i % len(colors)]
        law = metadata(idata)["law"]
        label = name if law in name else f"{name} ({law} law)"
        for ax, key in zip(axes[0], ("loss", "N_opt"), strict=True):
            _bands(ax, grid, dr[key], color=c, alpha=COMPARE_BAND_ALPHA, band_label=False)
        handles.append(Patch(facecolor=to_rgba(c, COMPARE_BAND_ALPHA * 2), edgecolor=c, lw=1.8, label=label,
                             gid="model"))
    handles += [Patch(color="0.5", alpha=COMPARE_BAND_ALPHA, lw=0, label="90% credible band"),
                Patch(color="0.5", alpha=COMPARE_BAND_ALPHA * 2.5, lw=0, label="50% credible band")]
    dress_frontier_pair(axes, C_all.max(), loss_title="compute-optimal frontier")
    for ax in axes[0]:
        extra, extra_labels = ax.get_legend_handles_labels()  # the largest observed budget
        ax.legend(handles=[*handles, *extra], labels=[*(h.get_label() for h in handles), *extra_labels],
                  fontsize=8)
    fig.suptitle("Comparison of fits: " + ", ".join(models), fontsize=11)
    return fig


def cmd_compare(args: argparse.Namespace) -> int:
    from .cli import _fmt, _table
    from .store import load_posterior

    names = [str(Path(m).stem) for m in args.models]
    if len(set(names)) < len(names):
        names = list(args.models)
    if len(set(names)) < len(names):
        raise InputError("the same file is given twice", field="MODEL")
    models = {n: load_posterior(m) for n, m in zip(names, args.models, strict=True)}
    _log(args, f"comparing {len(models)} posteriors by PSIS-LOO"
         + (", then leaving out each group in turn (one refit per law and group) ..." if args.by_group else " ..."))
    res = compare_models(models, by_group=args.by_group, quiet=args.quiet or args.json)
    fig_path = None
    if args.out:
        out = _out_dir(args.out)
        fig_path = out / f"compare.{args.format}"
        _log(args, f"drawing the overlay figure {fig_path} ...")
        plot_compare(models).savefig(fig_path, dpi=110)
        res["figure"] = str(fig_path)
    if args.json:
        _emit(res)
        return 0
    any_lfo = any(r["lfo_weight"] is not None for r in res["table"])
    rows = [
        [r["model"], r["law"], _fmt(r["elpd_loo"]), _fmt(r["se"]), _fmt(r["elpd_diff"]), _fmt(r["dse"]),
         _fmt(r["p_loo"]), f"{r['weight']:.3f}", f"{r['pareto_k_bad']}/{r['n_obs']}"]
        + ([("" if r["lfo_weight"] is None else f"{r['lfo_weight']:.3f}"),
            ("" if r["elpd_lfo"] is None else _fmt(r["elpd_lfo"]))] if any_lfo else [])
        for r in res["table"]
    ]
    header = ["model", "law", "elpd_loo", "se", "elpd_diff", "dse", "p_loo", "weight", f"k>{PARETO_K_BAD}"]
    print(_table(rows, header + (["lfo_weight", "elpd_lfo"] if any_lfo else [])))
    print("(PSIS-LOO on log loss; higher elpd is better; elpd_diff and dse are relative to the best; weight: "
          "LOO stacking)")
    if any_lfo:
        print("(lfo_weight: the weight the averaged fit gives the law, from forward validation at C = "
              + ", ".join(_fmt(c) for c in res["lfo_cuts"]) + "; elpd_lfo: its summed forward log "
              "density with the model discrepancy. LOO scores fit among the runs; the averaged fit "
              "weighs how laws predict the runs beyond a cut)")
    bad = [r for r in res["table"] if r["pareto_k_bad"]]
    for r in bad:
        print(
            f"warning: {r['model']}: {r['pareto_k_bad']} runs with Pareto k > {PARETO_K_BAD}; "
            "its LOO estimate is unreliable for them"
        )
    if "by_group" in res:
        _print_by_group(res["by_group"])
    if fig_path:
        print(f"figure: {fig_path}")
    return 0


def _print_by_group(bg: dict[str, Any]) -> None:
    from .cli import _fmt, _table

    opt = lambda x: "" if x is None else _fmt(x)  # noqa: E731
    print()
    print(_table([[r["model"], r["law"], _fmt(r["elpd_logo"]), opt(r["se"]), _fmt(r["elpd_diff"]), opt(r["dse"])]
                  + [_fmt(r["per_group"][g]) for g in bg["groups"]]
                  + [f"{r['max_r_hat']:.3f}", str(r["divergences"])] for r in bg["table"]],
                 ["model", "law", "elpd_logo", "se", "elpd_diff", "dse", *bg["groups"], "max R-hat", "div."]))
    print("(leave-one-group-out: each group's runs scored jointly by a refit without them, under the parameters "
          "the model gives a group it has not seen; higher is better; one column per group left out)")
    for r in bg["table"]:
        if r["max_r_hat"] > 1.05 or r["divergences"]:
            print(f"warning: {r['model']}: its refits have max R-hat {r['max_r_hat']:.3f} and {r['divergences']} "
                  "divergences; their scores are rough", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# report

REPORT_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 0 auto; padding: 1em;
       color: #222; line-height: 1.4; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0 1.5em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
.ok { color: #009E73; font-weight: bold; } .check { color: #D55E00; font-weight: bold; }
tr.check td { font-weight: normal; }
td.note { white-space: normal; text-align: left; min-width: 6em; font-size: 0.8em; }
code { word-break: break-all; }
"""


def _png_b64(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _html_table(header: list[str], rows: list[list[str]], *, row_class: list[str] | None = None,
                notes: tuple[int, ...] = ()) -> str:
    """A scrollable HTML table; ``row_class`` classes rows, columns in ``notes`` wrap their text."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cls = row_class or [""] * len(rows)
    body = "".join(
        (f"<tr class='{c}'>" if c else "<tr>")
        + "".join(f"<td{' class=note' if j in notes else ''}>{html.escape(str(x))}</td>" for j, x in enumerate(r))
        + "</tr>"
        for r, c in zip(rows, cls, strict=True)
    )
    table = f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def report_budgets(C_obs: Any, *, extrapolate_decades: int = 2) -> list[float]:
    """One budget per decade, smallest observed up to ``extrapolate_decades`` past the largest."""
    import numpy as np

    lo = int(np.floor(np.log10(np.min(C_obs))))
    hi = int(np.ceil(np.log10(np.max(C_obs)))) + extrapolate_decades
    return [float(10.0**k) for k in range(lo, hi + 1)]


def build_report(idata: Any, *, model_name: str = "model", progress: Any = None,
                 budgets: list[float] | None = None) -> str:
    """One self-contained HTML page: data, laws and weights, parameters, diagnostics, allocation
    (rows beyond the runs marked) and figures; ``progress(name, i, n)``, if given, is called as
    each figure starts (the figures are most of the time).

    A grouped posterior as a whole (not one group's view) gets the population's parameters, how the
    groups differ, one allocation row per group and one for a group with no runs, and the groups
    figure (:mod:`bayescale.report_groups`). ``budgets`` are the allocation's (default: one per
    decade of the runs and two beyond; for the groups, the largest such budget within two decades
    of the largest run).
    """
    import numpy as np

    from .cli import _flags, _fmt, _posterior_summary
    from .inference import diagnostics
    from .plots import _model_label, _observed, figure_jobs
    from .posterior import optimal
    from .report_groups import GROUP_CSS, g3, interval
    from .store import groups_of, metadata

    meta = metadata(idata)
    groups = groups_of(idata)  # empty for an ungrouped posterior and for one group's view
    obs = _observed(idata)
    diag = diagnostics(idata)
    summ = _posterior_summary(idata)
    e = html.escape
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>bayescale report: {e(model_name)}</title><style>{REPORT_CSS}{GROUP_CSS if groups else ''}</style>"
        "</head><body>",
        f"<h1>bayescale report: <code>{e(model_name)}</code></h1>",
    ]
    # data
    rng = lambda x: f"{_fmt(float(np.min(x)))} – {_fmt(float(np.max(x)))}"  # noqa: E731
    cfg = meta["config"]
    parts.append("<h2>Data</h2>")
    parts.append(_html_table(["", "value"], [
        ["source", str(meta.get("source"))],
        ["filter", str(meta.get("filter") or "none")],
        # one group's view (report --group G) holds that group's runs: count those, and name the group
        *([["group", str(meta["group"])]] if meta.get("group") else []),
        ["runs", str(obs["N"].size)],
        *([["groups", f"{len(groups)} ({', '.join(meta.get('group_columns') or ['group'])}): "
            + ", ".join(groups[:12]) + (", ..." if len(groups) > 12 else "")]] if groups else []),
        ["N (non-embedding parameters)", rng(obs["N"])],
        ["D (training tokens)", rng(obs["D"])],
        ["C (FLOP)", rng(obs["C"])],
        ["loss (nats/token)", rng(obs["loss"])],
        ["model", _model_label(meta)],
        ["likelihood", f"{cfg['likelihood']} on log loss"],
        ["sampler", f"{cfg['chains']} chains × {cfg['draws']} draws ({cfg['warmup']} warm-up)"],
    ]))
    # laws and weights
    if "laws" in summ:
        av = summ["averaging"]
        r = av["discrepancy_rate"]
        parts.append("<h2>Laws and weights</h2>")
        parts.append("<p>Each law was fitted to all the runs, and again to the runs below each forward-validation "
                     "cut (C = " + e(", ".join(_fmt(c) for c in av["cuts"]) or "none") + ") to predict the runs "
                     "above it. The weights stack those forward predictions; the model discrepancy widens every "
                     f"prediction by {100 * r['mean']:.2f}% of the loss per decade beyond the runs (90% "
                     f"[{100 * r['q05']:.2f}%, {100 * r['q95']:.2f}%]).</p>")
        parts.append(_html_table(["law", "weight", "forward elpd (with discrepancy)", "cuts refitted / by PSIS"], [
            [law, f"{d['weight']:.3f}", _fmt(sum(c["elpd_with_discrepancy"] for c in d["lfo"])) if d["lfo"] else "–",
             f"{sum(c['method'] == 'exact' for c in d['lfo'])} / {sum(c['method'] == 'psis' for c in d['lfo'])}"]
            for law, d in summ["laws"].items()]))
    # parameters
    parts.append("<h2>Population parameters</h2><p>A typical group: the location of the population the groups "
                 "are drawn from (a group with no runs adds the spread between groups).</p>" if groups
                 else "<h2>Parameters</h2>")
    blocks = ({law: d["params"] for law, d in summ["laws"].items()} if "laws" in summ
              else {meta["law"]: summ["params"]})
    priors = {law: v["priors"] for law, v in meta["laws"].items()} if "laws" in meta else {meta["law"]: meta["priors"]}
    for law, params in blocks.items():
        if len(blocks) > 1:
            parts.append(f"<h3>{e(law)} law</h3>")
        parts.append(_html_table(
            ["", "mean", "sd", "q05", "q50", "q95", "R-hat", "ESS bulk"],
            [[k, _fmt(v["mean"]), _fmt(v["sd"]), _fmt(v["q05"]), _fmt(v["q50"]), _fmt(v["q95"]),
              f"{v['r_hat']:.3f}", f"{v['ess_bulk']:.0f}"] for k, v in params.items()]))
        parts.append("<p>Priors: " + e(", ".join(f"{k} ~ {v}" for k, v in priors[law].items())) + "</p>")
    if groups:
        from .report_groups import population_section

        parts += population_section(idata, summ)
    # diagnostics
    ok = not diag["warnings"]
    parts.append("<h2>Diagnostics</h2>")
    parts.append(f"<p id='verdict' class='{'ok' if ok else 'check'}'>{'OK' if ok else 'CHECK'}</p>")
    parts.append(
        f"<p>max R-hat {diag['max_r_hat']:.4f}, min ESS bulk {diag['min_ess_bulk']:.0f} / tail "
        f"{diag['min_ess_tail']:.0f}, {diag['divergences']} divergences, max tree depth "
        f"{diag['max_tree_depth']}</p>"
    )
    if diag["warnings"]:
        parts.append("<ul>" + "".join(f"<li>{e(w)}</li>" for w in diag["warnings"]) + "</ul>")
    # allocation
    if groups:
        from .report_groups import default_budget, groups_section

        parts += groups_section(idata, budgets or [default_budget(obs["C"])])
    else:
        alloc = optimal(idata, budgets or report_budgets(obs["C"]))
        parts.append("<h2>Compute-optimal allocation</h2>")
        parts.append(
            "<p>Posterior median [90% interval]. Largest observed budget: "
            f"{_fmt(float(obs['C'].max()))} FLOP. Rows marked <span class='check'>beyond the runs</span> are "
            "extrapolations: the budget exceeds the largest run's, or N* or D* falls outside the runs' range.</p>"
        )
        rows = []
        for r in alloc:
            x = r["extrapolation"]
            mark = " ⚠" if x["extrapolating"] else ""
            rows.append([g3(r["compute"]) + mark, interval(r["N_opt"]), interval(r["D_opt"]), interval(r["loss"]),
                         interval(r["tokens_per_param"]), _flags(x, short=True)])
        parts.append(_html_table(["C (FLOP)", "N*", "D*", "loss*", "tokens/param", "beyond?"], rows,
                                 row_class=["check" if r["extrapolation"]["extrapolating"] else "" for r in alloc],
                                 notes=(5,)))
    # figures
    parts.append("<h2>Figures</h2>")
    if groups:  # the groups side by side, as `bayescale plot` draws them; `report --group G` has one group's figures
        from .plots import plot_groups

        jobs = [("groups", lambda: plot_groups(idata))]
    else:
        jobs = figure_jobs(idata)
    for i, (name, make) in enumerate(jobs, 1):
        if progress is not None:
            progress(name, i, len(jobs))
        parts.append(f"<h3>{e(name)}</h3><img alt='{e(name)}' src='data:image/png;base64,{_png_b64(make())}'>")
    parts.append(
        f"<p><small>bayescale {e(meta['versions']['bayescale'])}; metadata: "
        f"<code>{e(json.dumps(meta['versions']))}</code></small></p></body></html>"
    )
    return "\n".join(parts)


def cmd_report(args: argparse.Namespace) -> int:
    from .cli import _group_views, _usable
    from .store import groups_of, load_posterior

    idata = load_posterior(args.model)
    _usable(idata, args)
    groups = groups_of(idata) if args.group is None else []  # without --group: every group, and a new one
    if not groups:
        [(_, idata)] = _group_views(idata, args, all_groups=False)
    out = _out_dir(args.out)
    what = f"{len(groups)} groups and a new one, " if groups else ""
    _log(args, f"writing the report of {args.model} ({what}tables, then each figure) ...")
    page = build_report(idata, model_name=Path(args.model).name, progress=_progress(args), budgets=args.compute)
    path = out / (Path(args.model).stem + "-report.html")
    path.write_text(page, encoding="utf-8")
    if args.json:
        _emit({"model": args.model, "report": str(path), "bytes": len(page.encode()),
               **({"groups": groups} if groups else {})})
    else:
        print(path)
    return 0


# --------------------------------------------------------------------------------------------
# registration


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``plot``, ``compare`` and ``report`` on the ``bayescale`` subparsers."""
    from .cli import add_allow_unconverged

    quiet = {"action": "store_true", "help": "say nothing on stderr while working (errors still)"}
    fmt_help = "file format of the figures"
    group_help = "a grouped posterior's group to draw (new: a group with no runs, drawn from the population)"
    json_help = "print one JSON object on stdout (the files written); no progress"

    p = sub.add_parser(
        "plot", help="figures of a posterior: frontier, isoFLOPs, allocation, checks"
    )
    p.add_argument("model", metavar="MODEL.nc", help="a posterior written by `bayescale fit`")
    p.add_argument("--out", metavar="DIR", help="output directory (default: MODEL-plots/ beside the file)")
    p.add_argument("--format", choices=["png", "svg", "pdf"], default="png", help=fmt_help)
    p.add_argument("--group", metavar="NAME", help=group_help + "; without it a grouped posterior gets "
                   "one figure of all groups")
    add_allow_unconverged(p)
    p.add_argument("-q", "--quiet", **quiet)
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=cmd_plot)

    c = sub.add_parser("compare", help="PSIS-LOO comparison of posteriors fitted to the same data")
    c.add_argument("models", metavar="MODEL.nc", nargs="+",
                   help="posteriors of the same runs (an averaged one enters as its laws)")
    c.add_argument("--out", metavar="DIR", help="also write an overlay figure compare.FORMAT here (default: no figure)")
    c.add_argument("--format", choices=["png", "svg", "pdf"], default="png", help=fmt_help)
    c.add_argument("--by-group", action="store_true",
                   help="also rank by leave-one-group-out: refit without each group and score its runs as a new "
                   "group's (needs a grouped posterior; one refit per law and group, minutes)")
    c.add_argument("-q", "--quiet", **quiet)
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table); no progress")
    c.set_defaults(func=cmd_compare)

    from .cli import _positive_float

    r = sub.add_parser("report", help="one self-contained HTML report of a posterior")
    r.add_argument("model", metavar="MODEL.nc", help="a posterior written by `bayescale fit`")
    r.add_argument("--out", metavar="DIR", required=True, help="directory for MODEL-report.html (required)")
    r.add_argument("--group", metavar="NAME", help=group_help + "; without it a grouped posterior's report has the "
                   "population, one row per group and one for a new group, and the groups figure")
    r.add_argument("--compute", type=_positive_float, nargs="+", metavar="C",
                   help="budget(s) in FLOP of the allocation table (default: one per decade from the smallest run "
                        "to two decades past the largest; for a grouped posterior's table of groups, the largest power "
                        "of ten at most 100x the largest run's)")
    add_allow_unconverged(r)
    r.add_argument("-q", "--quiet", **quiet)
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout (the report's path); "
                   "no progress")
    r.set_defaults(func=cmd_report)
