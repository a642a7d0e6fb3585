"""The report's sections for a grouped (hierarchical) posterior, taken as a whole.

``bayescale report MODEL.nc`` on a posterior fitted with ``--group`` shows the population (how each
parameter is pooled, the spreads between groups, the population's parameters), then one row per
group with its runs, its key parameters and its compute-optimal allocation at the report's
budget(s), and a last row for a group with no runs (the population predictive, ``--group new``),
whose intervals carry the spread between groups. ``report --group G`` is one group's full report
(:func:`bayescale.plot_cli.build_report` on :func:`bayescale.store.group_view`).

:func:`bayescale.plot_cli.build_report` assembles the page; this module gives it the grouped parts.
The per-group numbers come from the same functions ``optimal --group G`` uses, so the report and the
command agree draw for draw.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

#: the per-group table's budget: the largest of the report's decades at most this far beyond the
#: largest run (further out every group's interval is mostly the model discrepancy and the spread)
DEFAULT_DECADES_BEYOND = 2.0

#: added to the page's style sheet: the table of groups (smaller, so that nine columns of intervals fit
#: a 1024-pixel window), the row of a group with no runs set apart, commands that do not break mid-word
GROUP_CSS = """
#groups-table table { font-size: 0.8em; }
tr.new td { font-style: italic; background: #f4f4f4; }
.iv { font-size: 0.8em; color: #555; }
code.cmd { word-break: normal; white-space: nowrap; }
.why { display: inline-block; white-space: normal; max-width: 11em; font-size: 0.8em; text-align: left; }
"""


def g3(x: float) -> str:
    """Three significant digits with a compact exponent, so a table of intervals fits the page."""
    return f"{x:.3g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def interval(s: dict[str, float]) -> str:
    """``median [q05, q95]`` of a summary from :func:`bayescale.posterior.summarize`."""
    return f"{g3(s['q50'])} [{g3(s['q05'])}, {g3(s['q95'])}]"


def default_budget(C_obs: Any) -> float:
    """The per-group table's budget: the largest power of ten that the ungrouped report would
    list (:func:`bayescale.plot_cli.report_budgets`) within :data:`DEFAULT_DECADES_BEYOND` decades
    of the largest run, so that the table answers the question a grouped study is run for (what
    the next, larger budget gets in each group) without being all extrapolation."""
    from .plot_cli import report_budgets

    c_max = float(np.max(C_obs))
    within = [c for c in report_budgets(C_obs) if c <= c_max * 10**DEFAULT_DECADES_BEYOND * (1 + 1e-9)]
    return within[-1]


def key_draws(view: Any) -> dict[str, np.ndarray]:
    """Draws of the parameters the per-group table shows, the same for every law so that an
    averaged posterior's mixture has them too: ``E`` (the irreducible loss), ``a`` (``N* ∝ C^a``)
    and ``sigma`` (the noise on log loss), each drawn from the mixture of laws as ``optimal`` is."""
    from .posterior import exponents, mixture, param_draws

    parts = mixture(view).parts
    out = {k: np.concatenate([param_draws(v, [k])[k][idx] for _, v, idx in parts]) for k in ("E", "sigma")}
    return {"E": out["E"], "a": np.asarray(exponents(view)["a"]), "sigma": out["sigma"]}


def group_rows(idata: Any, budgets: Sequence[float], *, seed: int = 0) -> list[dict[str, Any]]:
    """One entry per group of ``idata`` and a last one for a group with no runs: ``group``,
    ``runs`` (0 for the new group), ``new``, ``params`` (summaries of :func:`key_draws`) and
    ``optimal`` (:func:`bayescale.posterior.optimal` at ``budgets``, whose extrapolation flags
    measure a fitted group against its own runs, and the new group against all of them)."""
    from .posterior import optimal, summarize
    from .store import NEW_GROUP, group_view, groups_of

    run_of = idata.constant_data["group"].values.astype(str)
    rows = []
    for g in [*groups_of(idata), NEW_GROUP]:
        new = g == NEW_GROUP
        view = group_view(idata, g, seed=seed)
        rows.append({"group": g, "new": new, "runs": 0 if new else int(np.sum(run_of == g)),
                     "params": {k: summarize(v) for k, v in key_draws(view).items()},
                     "optimal": optimal(view, budgets)})
    return rows


def _spread_cell(spreads: dict[str, dict[str, float]], var: str) -> str:
    """Every factor's spread of one coordinate (``tau_NAME``), as ``median [90%]``."""
    found = [(k[len(var) + 1:-1], s) for k, s in spreads.items() if k.startswith(var + "[")]
    if len(found) == 1:
        return interval(found[0][1])
    return "; ".join(f"{f}: {interval(s)}" for f, s in found) or "–"


def population_section(idata: Any, summ: dict[str, Any]) -> list[str]:
    """How each coordinate varies across groups, with its spread, then every group's posterior
    medians: what ``bayescale summary`` prints for a grouped posterior (``summ``, from
    :func:`bayescale.cli._posterior_summary`), as HTML."""
    from .plot_cli import _html_table as html_table
    from .store import AVERAGED, laws_of, metadata

    meta = metadata(idata)
    laws = laws_of(idata)
    averaged = meta["law"] == AVERAGED
    e = html.escape
    n = len(summ["groups"])
    cols = meta.get("group_columns") or ["group"]
    parts = ["<h3>How the groups differ</h3>",
             f"<p>{n} groups (column{'s' if len(cols) > 1 else ''} <code class='cmd'>{e(', '.join(cols))}</code>). "
             "Each law coordinate is <i>shared</i> (one value), <i>pooled</i> (each group's value is the "
             "population's plus a learned spread times a standard normal) or <i>separate</i> (each group its own, "
             "with the prior's width). The coordinates are those the sampler moves: <code class='cmd'>L0</code> the "
             "log loss at the pivot (a spread of 0.03 means the groups' losses there differ by about 3%), the "
             "amplitudes relative to E (logits), the exponents and sigma on their log scales. The spread is the sd "
             "of the groups' values around the population's.</p>"]
    head = ["coordinate", "pooling"] + ([f"spread, {law} law" for law in laws] if averaged else ["spread"])
    rows = []
    for p, mode in summ["pooling"].items():
        cells = [_spread_cell(summ["spreads"], (f"{law}." if averaged else "") + f"tau_{p}") if mode == "pooled"
                 else "–" for law in laws]
        rows.append([p, mode, *cells])
    parts.append(html_table(head, rows))
    blocks: dict[str, dict[str, dict[str, Any]]] = {}
    for g, params in summ["groups"].items():
        for k, v in params.items():
            law, _, name = k.rpartition(".")
            blocks.setdefault(law, {}).setdefault(g, {})[name] = v
    for law, by_group in blocks.items():
        names = list(next(iter(by_group.values())))
        parts.append(f"<h3>Each group's parameters{f' ({e(law)} law)' if law else ''}</h3>")
        parts.append(html_table(["group", *names], [[g, *(g3(p[k]["q50"]) for k in names)]
                                                    for g, p in by_group.items()]))
    parts.append("<p>Posterior medians; the population's parameters are above, the intervals of E, a and sigma "
                 "in the table of groups below.</p>")
    return parts


def _two_line(s: dict[str, float], mark: str = "") -> str:
    """A table cell of an interval: the median, and the 90% interval small beneath it (one line each
    keeps a row of nine intervals within the page's width)."""
    return f"{g3(s['q50'])}{mark}<br><span class='iv'>[{g3(s['q05'])}, {g3(s['q95'])}]</span>"


def groups_section(idata: Any, budgets: Sequence[float]) -> list[str]:
    """The table of groups: one row per group and one for a group with no runs, each with its
    runs, key parameters and compute-optimal N*, D*, loss* at each budget (rows beyond the runs
    marked, as in the ungrouped report's allocation table)."""
    from .cli import _flags

    e = html.escape
    rows = group_rows(idata, budgets)
    multi = len(budgets) > 1
    head = ["group", "runs", "E", "a (N* ∝ C^a)", "sigma"]
    for c in budgets:
        at = f" at {g3(c)}" if multi else ""
        head += [f"N*{at}", f"D*{at}", f"loss*{at}", f"beyond the runs?{at}"]
    body = []
    for r in rows:
        cells = [e(r["group"]) + ("<br><span class='iv'>no runs: the population</span>" if r["new"] else ""),
                 str(r["runs"]), *(_two_line(r["params"][k]) for k in ("E", "a", "sigma"))]
        for o in r["optimal"]:
            x = o["extrapolation"]
            cells += [_two_line(o["N_opt"], " ⚠" if x["extrapolating"] else ""), _two_line(o["D_opt"]),
                      _two_line(o["loss"]), f"<span class='why'>{e(_flags(x, short=True))}</span>"]
        beyond = any(o["extrapolation"]["extrapolating"] for o in r["optimal"])
        cls = " ".join(c for c in ("new" if r["new"] else "", "check" if beyond else "") if c)
        body.append((f"<tr class='{cls}'>" if cls else "<tr>") + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = ("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(body) + "</tbody></table>")
    return ["<h2>Groups: compute-optimal allocation</h2>",
            f"<p>Posterior median [90% interval] at C = {e(', '.join(g3(c) for c in budgets))} FLOP, each group "
            "under its own law; the last row is a group with no runs (<code class='cmd'>--group new</code>: "
            "parameters drawn from the population, so its intervals carry the spread between groups). A fitted "
            "group's row is marked <span class='check'>beyond the runs</span> (⚠) against that group's own runs, "
            "the new group's against all of them. <code class='cmd'>bayescale optimal MODEL --compute C --group "
            "G</code> gives the same numbers, and <code class='cmd'>report --group G</code> one group's full "
            "report.</p>",
            f"<div class='scroll' id='groups-table'>{table}</div>"]
