"""Figures of a fitted scaling law: what is known, what is not, and where compute should go.

Every function takes the :class:`arviz.InferenceData` written by :func:`bayescale.fit` first,
options keyword-only, and returns its :class:`matplotlib.figure.Figure`. Figures are built
without ``pyplot`` (no global figure registry, no screen needed), so notebooks can restyle
them and tests can inspect them. Credible bands are equal-tailed posterior intervals
(50% and 90%), as everywhere else in bayescale, drawn by ArviZ's ``plot_hdi`` given those
intervals as its precomputed interval data; each band is a ``fill_between`` collection whose
``gid`` is ``"band50"`` or ``"band90"``. The pair plot is ArviZ's ``plot_pair``, the sampler
figure its ``plot_trace`` and the calibration figure its ``plot_loo_pit``.

Units: ``N`` non-embedding parameters, ``D`` training tokens, ``C = 6ND`` FLOP, loss in
nats/token.

Examples
--------
>>> import bayescale as bs
>>> from bayescale import plots
>>> idata = bs.load_posterior("models/chinchilla-chinchilla.nc")  # doctest: +SKIP
>>> fig = plots.plot_frontier(idata)  # doctest: +SKIP
>>> fig.savefig("frontier.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Okabe-Ito: distinguishable under the common colour-vision deficiencies
OKABE_ITO = {
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "black": "#000000",
}
POSTERIOR_COLOR = OKABE_ITO["blue"]
PRIOR_COLOR = "#999999"
DATA_CMAP = "viridis"

# Published allocations drawn for reference on the allocation figure.
# Kaplan et al. 2020, eq. 6.1 / fig. 14: N_opt = 1.3e9 (C / PF-day)^0.73, 1 PF-day = 8.64e19 FLOP.
KAPLAN_N_AT_PFDAY = 1.3e9
KAPLAN_EXPONENT = 0.73
PF_DAY = 8.64e19
# Hoffmann et al. 2022 (Chinchilla), Approach 3 parametric fit, unrounded as quoted by
# Besiroglu et al. 2024: a = beta / (alpha + beta) = 0.4565.
HOFFMANN_APPROACH3 = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.3392, "beta": 0.2849}
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # the ~20 tokens/parameter rule of thumb

LABEL_N = "N, non-embedding parameters"
LABEL_D = "D, training tokens"
LABEL_C = "C, training compute (FLOP, C = 6ND)"
LABEL_LOSS = "loss (nats/token)"


# --------------------------------------------------------------------------------------------
# helpers


def _figure(
    nrows: int = 1, ncols: int = 1, *, width: float = 7.0, height: float = 4.8, **kw: Any
) -> tuple[Figure, Any]:
    """A pyplot-free figure with an Agg canvas and a grid of axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _meta(idata: Any) -> dict[str, Any]:
    from .store import metadata

    return metadata(idata)


TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".gz", ".bz2", ".xz",
                  ".zip")


def source_label(source: Any, kind: str | None = None) -> str:
    """Where the runs came from, as a title says it: a runs directory by its name with a trailing
    ``/`` (``runs/``), a table by its file name (``isoflops_extract.csv``), anything else as given.

    ``kind`` (``"directory"``, ``"table"``, ...) is what the fit recorded, where it did; without it a
    trailing separator, an existing directory, or a name with no table suffix marks a directory.
    """
    raw = str(source if source is not None else "")
    name = os.path.basename(raw.rstrip("/\\")) or raw or "?"
    if raw.startswith("<"):  # "<DataFrame>": no file at all
        return raw
    if kind is None:
        from .runs import EXAMPLES

        if raw in EXAMPLES and not os.path.exists(raw):
            return raw
        is_dir = raw.endswith(("/", "\\")) or os.path.isdir(raw) or not name.lower().endswith(TABLE_SUFFIXES)
    else:
        is_dir = kind == "directory"
    return f"{name}/" if is_dir else name


def _title(idata: Any, what: str) -> str:
    m = _meta(idata)
    src = source_label(m.get("source"), m.get("source_kind"))
    # one group's view holds that group's runs only: count what is drawn, and name the group
    n = idata.constant_data["N"].size if "constant_data" in idata.groups() and "N" in idata.constant_data \
        else m["n_obs"]
    grp = f" (group {m['group']})" if m.get("group") else ""
    head = f"{what}: {_model_label(m)}{grp}, {n} runs from {src}"
    if not m.get("filter"):
        return head
    # a long query goes on its own line rather than off the figure's edge
    return f"{head}{chr(10) if len(head) + len(m['filter']) > 90 else ', '}{m['filter']}"


def _model_label(m: dict[str, Any]) -> str:
    """``"chinchilla law"``, or ``"3 laws averaged"`` (the laws figure and the report give the weights)."""
    from .store import AVERAGED

    return f"{len(m['laws'])} laws averaged" if m["law"] == AVERAGED else f"{m['law']} law"


def _one_law(idata: Any, law: str | None) -> Any:
    """``idata`` itself for a one-law fit; for an averaged one, the view of ``law`` (default: the
    law of highest weight)."""
    from .store import law_view, weights_of

    w = weights_of(idata)
    return law_view(idata, law if law is not None else max(w, key=w.get))


def _observed(idata: Any) -> dict[str, np.ndarray]:
    if "constant_data" not in idata.groups():
        raise InputError(
            "the posterior has no constant_data group (N, D, C, loss per run); "
            "expected a file written by `bayescale fit`",
            field="constant_data",
        )
    cd = idata.constant_data
    out = {}
    for k in ("N", "D", "C", "loss"):
        if k not in cd:
            raise InputError(
                f"constant_data has no variable {k!r}; expected a file written by `bayescale fit`",
                field=f"constant_data.{k}",
            )
        out[k] = np.asarray(cd[k].values, dtype=float).ravel()
    return out


def _quantiles(draws: np.ndarray) -> dict[str, np.ndarray]:
    q = np.quantile(np.asarray(draws, dtype=float), [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    return dict(zip(("q05", "q25", "q50", "q75", "q95"), q, strict=True))


def _band(ax: Axes, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, color: Any, alpha: float, gid: str,
          label: str | None = None) -> None:
    """One credible band between ``lo`` and ``hi`` along ``x``, drawn by ArviZ's ``plot_hdi`` with the
    interval given as its precomputed data (``hdi_data``): bayescale's intervals are equal-tailed
    (as every number it reports), so ArviZ draws them but does not compute them.

    ``smooth=False``: ArviZ's smoothing interpolates on a linear grid of ``x``, which bends bands
    drawn on log axes; the grids here are dense enough to need none.
    """
    from matplotlib.colors import to_hex

    from ._arviz import az

    x = np.asarray(x, float)
    data = np.stack([np.asarray(lo, float) * np.ones_like(x), np.asarray(hi, float) * np.ones_like(x)], axis=-1)
    az.plot_hdi(
        x,
        hdi_data=data,
        smooth=False,
        color=to_hex(color),
        ax=ax,
        fill_kwargs={"alpha": alpha, "lw": 0, "gid": gid, "label": label},
        plot_kwargs={"alpha": 0.0, "gid": f"{gid}_edge"},
        show=False,
    )


def _bands(
    ax: Axes,
    x: np.ndarray,
    draws: np.ndarray,
    *,
    color: Any,
    label: str | None = None,
    inner: bool = True,
    line: bool = True,
    alpha: float = 0.18,
    lw: float = 1.8,
    band_label: bool = True,
) -> dict[str, np.ndarray]:
    """Median line, 90% band and (optionally) 50% band of ``draws`` (draws, points) along ``x``."""
    q = _quantiles(draws)
    _band(ax, x, q["q05"], q["q95"], color=color, alpha=alpha, gid="band90",
          label="90% credible band" if band_label else None)
    if inner:
        _band(ax, x, q["q25"], q["q75"], color=color, alpha=alpha * 2, gid="band50",
              label="50% credible band" if band_label else None)
    if line:
        ax.plot(x, q["q50"], color=color, lw=lw, label=label, gid="median")
    return q


def _logspace(lo: float, hi: float, n: int) -> np.ndarray:
    return np.logspace(np.log10(lo), np.log10(hi), n)


def _within(x: np.ndarray, target: float, factor: float) -> np.ndarray:
    return np.abs(np.log(x / target)) <= np.log(factor)


def _sci(x: float) -> str:
    """``3e+19`` -> ``3e19`` (compact labels)."""
    m, e = f"{x:.1e}".split("e")
    m = m.rstrip("0").rstrip(".")
    return f"{m}e{int(e)}"


def _loss_axis(ax: Axes, which: str = "y") -> None:
    """Log scale with plain-number ticks, for loss (which spans a factor of ~2-3, not decades).

    Call after the data are drawn: ticks are chosen from the current limits.
    """
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    ax.autoscale_view()
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    for step in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0):
        ticks = np.arange(np.ceil(lo / step) * step, hi + 1e-9, step)
        if len(ticks) <= 7:
            break
    axis.set_major_locator(FixedLocator(np.round(ticks, 6)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def _default_budgets(C: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.quantile(np.log10(C), [0.05, 0.95])
    raw = np.logspace(lo, hi, n)
    # round to one significant digit so the legend reads cleanly
    return np.array([float(f"{c:.0e}") for c in raw])


def _isoflop_budgets(N: np.ndarray, C: np.ndarray, n: int, tol: float = 0.02, sep: float = 2.25) -> np.ndarray:
    """Budgets the data were designed around: ``C`` values shared (within ``tol``, relative) by
    runs of at least three different sizes, as in an isoFLOP sweep; the ``n`` most populated
    that lie more than a factor ``sep`` apart (so no run is drawn on two slices), in increasing
    order. Empty when the data have no such slices."""
    order = np.argsort(C)
    Cs, Ns = C[order], N[order]
    clusters, start = [], 0
    for i in range(1, len(Cs) + 1):
        if i == len(Cs) or np.log(Cs[i] / Cs[start]) > 2 * tol:
            if np.unique(Ns[start:i]).size >= 3:
                clusters.append((i - start, float(np.exp(np.mean(np.log(Cs[start:i]))))))
            start = i
    chosen: list[float] = []
    for _, c in sorted(clusters, reverse=True):
        if len(chosen) < n and all(abs(np.log(c / k)) > np.log(sep) for k in chosen):
            chosen.append(c)
    return np.array(sorted(float(f"{c:.1e}") for c in chosen))


# --------------------------------------------------------------------------------------------
# figures


def plot_frontier(idata: Any, *, extrapolate_decades: float = 2.0, n_budgets: int = 80) -> Figure:
    """Loss vs compute: observed runs and the compute-optimal frontier ``L*(C)`` with bands.

    Parameters
    ----------
    idata
        A posterior from :func:`bayescale.fit` or :func:`bayescale.load_posterior`.
    extrapolate_decades
        How far beyond the largest observed budget to draw the frontier, in decades of C.
    n_budgets
        Number of budgets on the frontier's grid.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: runs coloured by N (colorbar), frontier median, 50% and 90% bands.
    """
    from matplotlib.colors import LogNorm

    from .posterior import optimal_draws

    obs = _observed(idata)
    c_max = obs["C"].max()
    grid = _logspace(obs["C"].min() / 3, c_max * 10**extrapolate_decades, n_budgets)
    loss_draws = optimal_draws(idata, grid)["loss"]
    fig, axes = _figure(
        2, 1, width=7.5, height=6.4, sharex=True, gridspec_kw={"height_ratios": [3.2, 1.0]}
    )
    ax, ax_w = axes[0, 0], axes[1, 0]
    q = _bands(ax, grid, loss_draws, color=POSTERIOR_COLOR, label="L*(C), posterior median")
    sc = ax.scatter(
        obs["C"],
        obs["loss"],
        c=obs["N"],
        cmap=DATA_CMAP,
        norm=LogNorm(),
        s=16,
        edgecolors="none",
        alpha=0.85,
        label=f"observed runs ({obs['C'].size})",
        gid="observed",
        zorder=3,
    )
    fig.colorbar(sc, ax=ax, label=LABEL_N)
    for a in (ax, ax_w):
        a.axvline(
            c_max,
            color="0.35",
            ls=":",
            lw=1.2,
            label="largest observed budget" if a is ax else None,
        )
        a.grid(True, which="major", alpha=0.3)
    ax.set_xscale("log")
    _loss_axis(ax)
    ax.set_ylabel(LABEL_LOSS)
    ax.set_title(_title(idata, "Compute-optimal frontier"), fontsize=10)
    ax.text(
        c_max * 1.4,
        0.97,
        "extrapolation →",
        transform=ax.get_xaxis_transform(),
        va="top",
        fontsize=8,
        color="0.35",
    )
    ax.legend(loc="lower left", fontsize=8)
    # the bands are thin where there are data: show their width on its own axis
    width90 = 100 * (q["q95"] - q["q05"]) / q["q50"]
    width50 = 100 * (q["q75"] - q["q25"]) / q["q50"]
    ax_w.plot(grid, width90, color=POSTERIOR_COLOR, lw=1.6, label="90% band", gid="width90")
    ax_w.plot(
        grid, width50, color=POSTERIOR_COLOR, lw=1.6, ls="--", label="50% band", gid="width50"
    )
    ax_w.set_ylim(0, None)
    ax_w.set_ylabel("band width\n(% of median)")
    ax_w.set_xlabel(LABEL_C)
    ax_w.legend(loc="upper left", fontsize=8)
    return fig


TABLE_BUDGET_TOL = 0.01  # a C column further than this (relative) from 6ND counts compute its own way


def _budget_ratio(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Each run's ``6ND / C``: 1 where C is 6ND, else how the table's C column counts compute."""
    return 6.0 * obs["N"] * obs["D"] / obs["C"]


def _tokens_at_budget(N: np.ndarray, C: float, N_runs: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """Tokens ``D(N)`` that spend a table's budget ``C`` at size ``N``: ``C r(N) / (6N)``, with
    ``r = 6ND / C`` interpolated in log N between the runs' own ratios (mean per size), held flat
    beyond them. At a run's N this is the run's own D, so a run sits on its budget's curve."""
    lnN = np.log(N_runs)
    sizes = np.unique(lnN)
    lr = np.array([np.mean(np.log(ratio[lnN == v])) for v in sizes])
    return C * np.exp(np.interp(np.log(N), sizes, lr)) / (6.0 * N)


def isoflop_series(
    idata: Any,
    *,
    budgets: Sequence[float] | None = None,
    n_budgets: int = 5,
    within: float = 1.5,
    span: float = 30.0,
    n_points: int = 60,
) -> list[dict[str, Any]]:
    """What :func:`plot_isoflops` draws, one dict per slice (arguments as there).

    Each slice has ``budget`` (FLOP, as the runs' C counts it), ``table_budget`` (whether that is a
    table's own C column rather than 6ND), the curve ``N``, ``D`` and its loss ``draws``
    (draws, points), ``runs`` (indices of the runs drawn on it), and ``N_opt``, ``loss_opt``
    (draws of the optimum at this budget).

    When a table's C column differs from 6ND (the Open-Athena isoFLOP tables count compute with
    attention and embeddings: 6ND is 0.93-1.35 x C on Marin's ladders), the curves are drawn at
    the table's own budgets, so that points and curves mean the same budget: along a slice D is
    ``C r(N) / (6N)`` with ``r = 6ND / C`` taken from the slice's runs (:func:`_tokens_at_budget`),
    and the optimum is the minimum along that curve, per posterior draw. Otherwise C = 6ND: the
    curve is ``D = C / (6N)`` and the optimum is the law's closed form.
    """
    from .posterior import optimal_draws, predict_draws

    obs = _observed(idata)
    ratio = _budget_ratio(obs)
    table = bool(np.any(np.abs(np.log(ratio)) > np.log1p(TABLE_BUDGET_TOL)))
    if budgets is None:
        C_list = _isoflop_budgets(obs["N"], obs["C"], n_budgets, sep=within**2)
        if C_list.size < 2:
            C_list = _default_budgets(obs["C"], n_budgets)
    else:
        C_list = np.atleast_1d(np.asarray(budgets, float))
    if C_list.size == 0 or np.any(~np.isfinite(C_list)) or np.any(C_list <= 0):
        raise InputError(
            f"expected budgets > 0, got {np.asarray(budgets).tolist()}", field="budgets"
        )
    r_mid = float(np.exp(np.median(np.log(ratio))))
    opt = optimal_draws(idata, C_list * (r_mid if table else 1.0))
    out = []
    for j, C in enumerate(C_list):
        near = _within(obs["C"], C, within)
        n_med = float(np.median(opt["N_opt"][:, j]))
        lo, hi = n_med / span, n_med * span
        if near.any():  # the curve must reach every run drawn on its slice
            lo, hi = min(lo, obs["N"][near].min() / 1.5), max(hi, obs["N"][near].max() * 1.5)
        if table:
            # finer grid: the optimum is read off it, per draw
            N = np.unique(np.r_[_logspace(lo, hi, 2 * n_points), obs["N"][near]])
            src = near if near.any() else np.ones_like(near)
            D = _tokens_at_budget(N, C, obs["N"][src], ratio[src])
            dr = predict_draws(idata, N, D, C=np.full(N.shape, C), noise=False)
            k = np.argmin(dr, axis=1)
            n_opt, l_opt = N[k], dr[np.arange(dr.shape[0]), k]
        else:
            N = _logspace(lo, hi, n_points)
            D = C / (6.0 * N)
            dr = predict_draws(idata, N, D, noise=False)
            n_opt, l_opt = opt["N_opt"][:, j], opt["loss"][:, j]
        out.append({"budget": float(C), "table_budget": table, "N": N, "D": D, "draws": dr,
                    "runs": np.flatnonzero(near), "N_opt": n_opt, "loss_opt": l_opt})
    return out


def plot_isoflops(
    idata: Any,
    *,
    budgets: Sequence[float] | None = None,
    n_budgets: int = 5,
    within: float = 1.5,
    span: float = 30.0,
    n_points: int = 60,
) -> Figure:
    """IsoFLOP slices: loss vs N at fixed budgets, with the posterior of ``N*(C)`` marked.

    Parameters
    ----------
    idata
        A posterior from :func:`bayescale.fit`.
    budgets
        Budgets in FLOP, as the runs' C counts them; default: the data's own isoFLOP budgets (``C``
        shared by runs of three or more sizes), else ``n_budgets`` log-spaced across the observed
        budgets.
    n_budgets
        How many default budgets.
    within
        Observed runs with ``C`` within this factor of a budget are drawn on its slice.
    span
        Each slice covers ``N*`` divided and multiplied by this factor, widened to take in the
        observed runs drawn on it.
    n_points
        Grid points per slice.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: per budget a median curve and 90% band, its nearby runs, and ``N*(C)``
        (median marker with a horizontal 90% interval). Where a table's C column is not 6ND the
        curves follow the table's budgets (see :func:`isoflop_series`) and the legend says so.
    """
    obs = _observed(idata)
    series = isoflop_series(idata, budgets=budgets, n_budgets=n_budgets, within=within, span=span,
                            n_points=n_points)
    cmap = _colormap(DATA_CMAP)
    fig, axes = _figure(width=7.5, height=5.0)
    ax = axes[0, 0]
    for j, sl in enumerate(series):
        color = cmap(0.9 * j / max(len(series) - 1, 1))
        C, near = sl["budget"], sl["runs"]
        _bands(
            ax,
            sl["N"],
            sl["draws"],
            color=color,
            label=f"C = {_sci(C)} FLOP" + (" (table's C)" if sl["table_budget"] else ""),
            inner=False,
            alpha=0.22,
            band_label=False,
        )
        ax.scatter(
            obs["N"][near],
            obs["loss"][near],
            color=color,
            s=18,
            edgecolors="white",
            linewidths=0.4,
            gid="observed",
            zorder=3,
        )
        nq = np.quantile(sl["N_opt"], [0.05, 0.5, 0.95])
        lq = float(np.median(sl["loss_opt"]))
        ax.errorbar(
            [nq[1]],
            [lq],
            xerr=[[nq[1] - nq[0]], [nq[2] - nq[1]]],
            fmt="D",
            color=color,
            mec="black",
            mew=0.8,
            ms=6,
            capsize=3,
            zorder=4,
            gid="N_opt",
        )
    # legend proxies for the encodings shared by all slices
    ax.fill_between([], [], [], color="0.6", alpha=0.4, label="90% credible band")
    ax.errorbar(
        [], [], xerr=[], fmt="D", color="0.6", mec="black", label="N*(C): median, 90% interval"
    )
    ax.scatter([], [], color="0.6", s=18, label=f"observed runs (C within ×{within:g})")
    ax.set_xscale("log")
    _loss_axis(ax)
    ax.set_xlabel(LABEL_N)
    ax.set_ylabel(LABEL_LOSS)
    ax.set_title(_title(idata, "IsoFLOP slices"), fontsize=10)
    title = None
    if series and series[0]["table_budget"]:
        r = _budget_ratio(obs)
        title = f"C as the table counts it (6ND = {r.min():.2f}-{r.max():.2f} × C)"
    leg = ax.legend(fontsize=8, loc="upper right", ncol=2, title=title)
    if title:
        leg.get_title().set_fontsize(8)
    ax.grid(True, which="major", alpha=0.3)
    return fig


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _reference_allocations(C: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Published allocations as ``{label: {"N_opt", "D_opt", "tokens_per_param"}}``."""
    from .laws import chinchilla_optimal_N

    kap_N = KAPLAN_N_AT_PFDAY * (C / PF_DAY) ** KAPLAN_EXPONENT
    hof_N = np.asarray(chinchilla_optimal_N(HOFFMANN_APPROACH3, C))
    rule_N = np.sqrt(C / (6.0 * CHINCHILLA_TOKENS_PER_PARAM))
    out = {}
    for label, N in (
        (f"Kaplan et al. 2020: N ∝ C^{KAPLAN_EXPONENT}", kap_N),
        ("Hoffmann et al. 2022, Approach 3: N ∝ C^0.4565", hof_N),
        (f"{CHINCHILLA_TOKENS_PER_PARAM:g} tokens/parameter rule", rule_N),
    ):
        D = C / (6.0 * N)
        out[label] = {"N_opt": N, "D_opt": D, "tokens_per_param": D / N}
    return out


REFERENCE_STYLES = (
    {"color": OKABE_ITO["vermillion"], "ls": "--"},
    {"color": OKABE_ITO["green"], "ls": "-."},
    {"color": OKABE_ITO["black"], "ls": ":"},
)


def plot_allocation(
    idata: Any, *, extrapolate_decades: float = 2.0, n_budgets: int = 80, references: bool = True
) -> Figure:
    """Compute-optimal allocation: ``N*(C)``, ``D*(C)`` and tokens per parameter vs ``C``.

    Parameters
    ----------
    idata
        A posterior from :func:`bayescale.fit`.
    extrapolate_decades
        How far beyond the largest observed budget to draw, in decades of C.
    n_budgets
        Number of budgets on the grid.
    references
        Draw the published Kaplan (``N ∝ C^0.73``), Hoffmann Approach 3 (``N ∝ C^0.4565``)
        and 20-tokens-per-parameter allocations.

    Returns
    -------
    matplotlib.figure.Figure
        Three axes sharing ``C``: each with the posterior median, 50% and 90% bands and the
        references (gid ``"reference"``).
    """
    from .posterior import optimal_draws

    obs = _observed(idata)
    c_max = obs["C"].max()
    grid = _logspace(obs["C"].min() / 3, c_max * 10**extrapolate_decades, n_budgets)
    dr = optimal_draws(idata, grid)
    refs = _reference_allocations(grid) if references else {}
    fig, axes = _figure(1, 3, width=13.0, height=4.6, sharex=True)
    panels = (
        ("N_opt", "N*, optimal parameters"),
        ("D_opt", "D*, optimal training tokens"),
        ("tokens_per_param", "D*/N*, tokens per parameter"),
    )
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        _bands(ax, grid, dr[key], color=POSTERIOR_COLOR, label="this posterior (median)")
        for (label, ref), style in zip(refs.items(), REFERENCE_STYLES, strict=False):
            ax.plot(grid, ref[key], lw=1.5, label=label, gid="reference", **style)
        ax.axvline(c_max, color="0.35", ls=":", lw=1.0, label="largest observed budget")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(LABEL_C)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle(_title(idata, "Compute-optimal allocation"), fontsize=11)
    return fig


def plot_slices(
    idata: Any, *, n_slices: int = 3, within: float = 1.5, n_points: int = 60
) -> Figure:
    """Loss vs N at fixed D, and loss vs D at fixed N, with 90% bands and nearby runs.

    Parameters
    ----------
    idata
        A posterior from :func:`bayescale.fit`.
    n_slices
        How many fixed values of D (left) and of N (right), log-spaced across the data.
    within
        Runs whose D (left) or N (right) is within this factor of a slice are drawn on it.
    n_points
        Grid points per slice.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: loss vs N (one curve per D) and loss vs D (one curve per N).
    """
    from .posterior import predict_draws

    obs = _observed(idata)
    cmap = _colormap(DATA_CMAP)
    fig, axes = _figure(1, 2, width=12.0, height=4.8)
    for ax, (x_name, fixed_name, x_label, fixed_label) in zip(
        axes[0], (("N", "D", LABEL_N, "D"), ("D", "N", LABEL_D, "N")), strict=True
    ):
        x_obs, f_obs = obs[x_name], obs[fixed_name]
        fixed = _default_budgets(f_obs, n_slices)
        x = _logspace(x_obs.min() / 2, x_obs.max() * 2, n_points)
        for j, f in enumerate(fixed):
            color = cmap(0.9 * j / max(n_slices - 1, 1))
            fx = np.full_like(x, f)
            N, D = (x, fx) if x_name == "N" else (fx, x)
            dr = predict_draws(idata, N, D, noise=False)
            _bands(
                ax,
                x,
                dr,
                color=color,
                label=f"{fixed_label} = {_sci(f)}",
                inner=False,
                alpha=0.22,
                band_label=False,
            )
            near = _within(f_obs, f, within)
            ax.scatter(
                x_obs[near],
                obs["loss"][near],
                color=color,
                s=18,
                edgecolors="white",
                linewidths=0.4,
                gid="observed",
                zorder=3,
            )
        ax.fill_between([], [], [], color="0.6", alpha=0.4, label="90% credible band")
        ax.scatter([], [], color="0.6", s=18, label=f"runs with {fixed_label} within ×{within:g}")
        ax.set_xscale("log")
        _loss_axis(ax)
        ax.set_xlabel(x_label)
        ax.set_ylabel(LABEL_LOSS)
        ax.set_title(f"loss vs {x_name} at fixed {fixed_name}", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(_title(idata, "Scaling slices"), fontsize=11)
    return fig


def _law_params(idata: Any) -> list[str]:
    from .laws import PARAM_NAMES

    return list(PARAM_NAMES[_meta(idata)["law"]])


LOG_SCALE_PARAMS = ("A", "B", "N_c", "D_c")


def _prior_of(idata: Any, names: Sequence[str], n: int, seed: int) -> dict[str, np.ndarray] | None:
    """Prior draws of ``names``: the file's ``prior`` group where it has them, else drawn afresh
    from the priors and anchors the metadata records (what the fit drew them from)."""
    if "prior" in idata.groups() and all(v in idata.prior for v in names):
        return {v: np.asarray(idata.prior[v].values, float).ravel() for v in names}
    m = _meta(idata)
    if "anchors" not in m or "priors" not in m:
        return None
    import jax

    from .inference import prior_draws
    from .models import Anchors

    dr = prior_draws(m["law"], Anchors(**m["anchors"]), m["priors"], n, jax.random.PRNGKey(seed))
    return {v: np.asarray(dr[v], float).ravel() for v in names} if all(v in dr for v in names) else None


def plot_pairs(
    idata: Any, *, var_names: Sequence[str] | None = None, max_points: int = 1500, seed: int = 0,
    law: str | None = None,
) -> Figure:
    """Posterior pairs of the law's parameters, with prior draws behind them (ArviZ ``plot_pair``,
    called on the prior group, then on the posterior group over it).

    Amplitudes (``A``, ``B``, ``N_c``, ``D_c``) are shown as log10, where their posteriors are
    compact. Limits follow the posterior (its 0.5-99.5% range, widened) rather than ArviZ's
    autoscaling, which would fit the prior's far wider range and shrink the posterior to a dot; the
    prior shows where it falls inside them, so a flat grey background means the data, not the
    prior, decided.

    Parameters
    ----------
    idata
        A posterior from :func:`bayescale.fit` (its ``prior`` group, or the recorded priors).
    var_names
        Parameters to show; default the law's natural parameters.
    max_points
        Draws per scatter (subsampled for legibility).
    seed
        Seed of the subsampling (and of the prior draws when the file has none).
    law
        For an averaged posterior, the law to show (default: the one of highest weight).

    Returns
    -------
    matplotlib.figure.Figure
        A lower-triangular grid: marginal densities on the diagonal, scatters below.
    """
    from matplotlib.lines import Line2D

    from ._arviz import az

    idata = _one_law(idata, law)
    names = list(var_names) if var_names is not None else _law_params(idata)
    post = idata.posterior
    missing = [n for n in names if n not in post]
    if missing:
        raise InputError(
            f"no posterior variable(s) {', '.join(missing)}; available: "
            f"{', '.join(map(str, post.data_vars))}",
            field="var_names",
        )
    rng = np.random.default_rng(seed)
    lab = {n: f"log10 {n}" if n in LOG_SCALE_PARAMS else n for n in names}

    def shown(x: np.ndarray, name: str) -> np.ndarray:
        return np.log10(x) if name in LOG_SCALE_PARAMS else x

    P = {n: shown(np.asarray(post[n].values, float).ravel(), n) for n in names}
    raw_prior = _prior_of(idata, names, max_points, seed)
    Q = {n: shown(raw_prior[n], n) for n in names} if raw_prior is not None else None
    lims = {}
    for n in names:
        lo, hi = np.quantile(P[n], [0.005, 0.995])
        pad = 0.6 * (hi - lo)
        lims[n] = (lo - pad, hi + pad)
    pi = rng.choice(P[names[0]].size, min(max_points, P[names[0]].size), replace=False)
    groups = {"posterior": {lab[n]: P[n][pi][None, :] for n in names}}
    if Q is not None:
        with np.errstate(invalid="ignore"):  # keep only finite prior draws (a log of a draw at 0)
            ok = np.all([np.isfinite(Q[n]) for n in names], axis=0)
        qi = rng.permutation(np.flatnonzero(ok))[:max_points]
        groups["prior"] = {lab[n]: Q[n][qi][None, :] for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        both = az.from_dict(**groups)
    k = len(names)
    fig, axes = _figure(k, k, width=2.0 * k + 1, height=2.0 * k + 0.6)
    scatter = {"s": 4, "marker": "o", "alpha": 0.35, "edgecolors": "none", "rasterized": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for group, color, line in (("prior", PRIOR_COLOR, {"linestyle": "--", "linewidth": 1.5, "color": "0.3"}),
                                   ("posterior", POSTERIOR_COLOR, {"linewidth": 1.8})):
            if group not in both.groups():
                continue
            az.plot_pair(both, group=group, var_names=[lab[n] for n in names], kind="scatter", marginals=True,
                         ax=axes, scatter_kwargs={**scatter, "color": color},
                         marginal_kwargs={"color": color, "plot_kwargs": line}, show=False)
    for i, yn in enumerate(names):
        for j, xn in enumerate(names):
            ax = axes[i, j]
            if j > i:
                continue
            ax.set_xlim(lims[xn])
            if i == j:
                ax.set_ylim(0, None)
                ax.set_yticks([])
            else:
                ax.set_ylim(lims[yn])
            ax.set_xlabel(lab[xn] if i == k - 1 else "", fontsize=9)
            ax.set_ylabel(lab[yn] if j == 0 and i > 0 else "", fontsize=9)
            ax.tick_params(labelsize=7, labelbottom=i == k - 1, labelleft=j == 0 and i > 0)
    handles = [Line2D([], [], color=POSTERIOR_COLOR, lw=1.8), Line2D([], [], marker="o", ls="", ms=4,
                                                                    color=POSTERIOR_COLOR)]
    labels = ["posterior density", "posterior draws"]
    if Q is not None:
        handles += [Line2D([], [], color="0.3", ls="--", lw=1.5),
                    Line2D([], [], marker="o", ls="", ms=4, color=PRIOR_COLOR)]
        labels += ["prior density", "prior draws"]
    fig.legend(handles, labels, loc="upper right", fontsize=9, bbox_to_anchor=(0.98, 0.9))
    fig.suptitle(_title(idata, "Posterior pairs, with the prior"), fontsize=11)
    return fig


def plot_trace(idata: Any, *, var_names: Sequence[str] | None = None, law: str | None = None) -> Figure:
    """Per-chain densities and rank histograms (ArviZ ``plot_trace(kind="rank_bars")``).

    Uniform rank bars in every chain mean the chains agree; a chain piling up at one end
    has not mixed.

    Parameters
    ----------
    idata
        A posterior from :func:`bayescale.fit`.
    var_names
        Parameters to show; default the law's natural parameters and ``sigma``.
    law
        For an averaged posterior, the law to show (default: the one of highest weight).

    Returns
    -------
    matplotlib.figure.Figure
        ``len(var_names)`` rows of (density, rank bars).
    """
    from ._arviz import az
    from ._idata import as_arviz

    idata = _one_law(idata, law)
    names = list(var_names) if var_names is not None else [*_law_params(idata), "sigma"]
    k = len(names)
    fig, axes = _figure(k, 2, width=10.0, height=1.7 * k + 0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz: layout/tight_layout notes
        az.plot_trace(
            as_arviz(idata),
            var_names=names,
            kind="rank_bars",
            axes=axes,
            compact=False,
            backend_kwargs={},
            show=False,
        )
    for row in axes:
        for ax in row:
            ax.title.set_fontsize(9)
            ax.tick_params(labelsize=7)
        row[0].set_xlabel("value", fontsize=8)
        row[1].set_xlabel("rank (all chains)", fontsize=8)
        row[1].set_ylabel("chain", fontsize=8)
    n_chains = idata.posterior.sizes["chain"]
    fig.suptitle(_title(idata, f"Sampler diagnostics ({n_chains} chains)"), fontsize=11)
    return fig


def plot_ppc(idata: Any, *, seed: int = 0) -> Figure:
    """Posterior predictive check: observed vs predicted loss, and residuals vs N and D.

    Parameters
    ----------
    idata
        A posterior from :func:`bayescale.fit`.
    seed
        Seed of the observation-noise draws.

    Returns
    -------
    matplotlib.figure.Figure
        Three axes: observed vs predicted (predictive median with a 90% interval per run,
        and the line y = x), and ``log(observed / predicted median)`` vs N and vs D with
        the 90% predictive interval of that residual.
    """
    from .posterior import predict_draws

    obs = _observed(idata)
    dr = predict_draws(idata, obs["N"], obs["D"], noise=True, seed=seed)
    q = _quantiles(dr)
    inside = np.mean((obs["loss"] >= q["q05"]) & (obs["loss"] <= q["q95"]))
    fig, axes = _figure(1, 3, width=14.0, height=4.6)
    ax = axes[0, 0]
    ax.errorbar(
        q["q50"],
        obs["loss"],
        xerr=[q["q50"] - q["q05"], q["q95"] - q["q50"]],
        fmt="o",
        ms=3,
        color=POSTERIOR_COLOR,
        ecolor=POSTERIOR_COLOR,
        elinewidth=0.6,
        alpha=0.7,
        label=f"runs: predictive median, 90% interval ({100 * inside:.0f}% cover)",
        gid="observed",
    )
    lo = min(q["q05"].min(), obs["loss"].min())
    hi = max(q["q95"].max(), obs["loss"].max())
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="observed = predicted")
    _loss_axis(ax, "x")
    _loss_axis(ax)
    ax.set_xlabel("predicted " + LABEL_LOSS)
    ax.set_ylabel("observed " + LABEL_LOSS)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("observed vs predicted", fontsize=10)
    resid = np.log(obs["loss"] / q["q50"])
    r_lo, r_hi = np.log(q["q05"] / q["q50"]), np.log(q["q95"] / q["q50"])
    for ax, name, label in ((axes[0, 1], "N", LABEL_N), (axes[0, 2], "D", LABEL_D)):
        xr = np.array([obs[name].min(), obs[name].max()])
        ax.fill_between(
            xr,
            np.full(2, np.median(r_lo)),
            np.full(2, np.median(r_hi)),
            color=PRIOR_COLOR,
            alpha=0.3,
            lw=0,
            gid="band90",
            label="90% predictive interval",
        )
        ax.scatter(
            obs[name],
            resid,
            s=10,
            color=POSTERIOR_COLOR,
            edgecolors="none",
            gid="observed",
            label="runs",
        )
        ax.axhline(0.0, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("residual, log(observed / predicted)")
        ax.set_title(f"residuals vs {name}", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(_title(idata, "Posterior predictive check"), fontsize=11)
    return fig


def loo_pit(idata: Any, *, seed: int = 0) -> dict[str, Any]:
    """Leave-one-out probability integral transforms of the runs' losses, from the draws alone.

    The pointwise log-likelihood is recomputed from the posterior draws
    (:func:`bayescale.inference.pointwise_log_lik`), not read from the file, which need not store
    it; Pareto-smoothed importance weights (ArviZ ``psislw``) turn the posterior predictive into
    each run's leave-one-out predictive, and ArviZ's ``loo_pit`` reads the observed log loss against
    it. For an averaged posterior each law's draws are weighted within the law and the laws by
    their weights (the mixture the other figures draw); inside the runs there is no discrepancy.
    A calibrated model gives PIT values uniform on [0, 1]: piled at both ends means intervals too
    narrow, in the middle too wide, at one end a biased law.

    Returns
    -------
    dict
        ``pit`` (one per run, in [0, 1]), ``pareto_k`` (the largest over the laws, per run),
        ``y`` and ``y_hat`` (observed log loss, and its predictive draws, (runs, draws)),
        ``log_weights`` (normalised per run, (runs, draws)), and ``ks`` and ``ks_p``: the
        Kolmogorov-Smirnov distance of the PIT values from uniform and its p-value.
    """
    from scipy import stats

    from ._arviz import az
    from .averaging import noise_draws
    from .inference import pointwise_log_lik
    from .models import SAMPLED_SITES, Anchors
    from .posterior import mixture

    obs = _observed(idata)
    y = np.log(obs["loss"])
    lN, lD = np.log(obs["N"]), np.log(obs["D"])
    se = np.asarray(idata.constant_data["se"].values, float) if "se" in idata.constant_data else None
    mix = mixture(idata)
    rng = np.random.default_rng(seed)
    y_hat, log_w, k_max = [], [], np.full(y.size, -np.inf)
    for law, view, idx in mix.parts:
        post = view.posterior
        samples = {v: np.asarray(post[v].values, float).reshape(-1)[idx] for v in SAMPLED_SITES[law]}
        m = _meta(view)
        ll = pointwise_log_lik(law, samples, lN, lD, y, anchors=Anchors(**m["anchors"]),
                               likelihood=mix.likelihood, nu=mix.nu, se=se)  # (draws, runs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # high Pareto k: reported per run below
            lw, k = az.psislw(-ll.T)  # normalised over this law's draws, per run
        log_w.append(np.asarray(lw) + np.log(idx.size / mix.size))
        k_max = np.maximum(k_max, np.asarray(k))
        mu = np.log(np.asarray(_law_loss(law, view, idx, obs["N"], obs["D"])))
        scale = samples["sigma"][:, None] * np.ones_like(y)[None, :]
        if se is not None:
            scale = np.sqrt(scale**2 + se[None, :] ** 2)
        y_hat.append((mu + noise_draws(scale, rng, likelihood=mix.likelihood, nu=mix.nu)).T)
    y_hat_all, log_w_all = np.concatenate(y_hat, axis=1), np.concatenate(log_w, axis=1)
    pit = np.asarray(az.loo_pit(y=y, y_hat=y_hat_all, log_weights=log_w_all), float)
    ks = stats.kstest(pit, "uniform")
    return {"pit": pit, "pareto_k": k_max, "y": y, "y_hat": y_hat_all, "log_weights": log_w_all,
            "ks": float(ks.statistic), "ks_p": float(ks.pvalue)}


def _law_loss(law: str, view: Any, idx: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """The law's mean loss under draws ``idx`` of ``view`` at each run, (draws, runs)."""
    from .laws import broadcast_draws, loss
    from .posterior import _law_params

    return np.asarray(loss(law, broadcast_draws(_law_params(view, law, idx)), N[None, :], D[None, :]))


def plot_loo_pit(idata: Any, *, seed: int = 0, hdi_prob: float = 0.9) -> Figure:
    """LOO-PIT calibration (ArviZ ``plot_loo_pit``), beside the posterior predictive check.

    Two panels from the same PIT values (:func:`loo_pit`): their density against densities of as
    many uniform draws (what ArviZ draws by default), and the ECDF's difference from uniform with
    its ``hdi_prob`` band, which reads better with few runs. A third panel puts each run's PIT
    against its compute, since a law that bends away from the runs shows as a trend there rather
    than in the marginal. The title gives the Kolmogorov-Smirnov test against uniform.
    """
    from matplotlib.colors import to_hex

    from ._arviz import az

    res = loo_pit(idata, seed=seed)
    obs = _observed(idata)
    fig, axes = _figure(1, 3, width=14.0, height=4.4)
    kw = {"y": res["y"], "y_hat": res["y_hat"], "log_weights": res["log_weights"], "color": to_hex(POSTERIOR_COLOR),
          "show": False}
    # ArviZ draws its uniform references from NumPy's global generator: seed it, then put it back
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        az.plot_loo_pit(ax=axes[0, 0], **kw)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    az.plot_loo_pit(ax=axes[0, 1], ecdf=True, hdi_prob=hdi_prob, **kw)
    axes[0, 0].set_title("density of the LOO-PIT values", fontsize=10)
    axes[0, 0].set_ylabel("density")
    axes[0, 1].set_title("ECDF minus uniform", fontsize=10)
    axes[0, 1].set_ylabel("ECDF(PIT) - PIT")
    for ax in axes[0, :2]:
        ax.set_xlabel("LOO-PIT (share of the predictive below the run)")
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8, loc="upper right")
    ax = axes[0, 2]
    bad = res["pareto_k"] > 0.7
    ax.scatter(obs["C"][~bad], res["pit"][~bad], s=12, color=POSTERIOR_COLOR, edgecolors="none", gid="pit",
               label="runs")
    if bad.any():
        ax.scatter(obs["C"][bad], res["pit"][bad], s=22, marker="x", color=OKABE_ITO["vermillion"], gid="pit",
                   label=f"Pareto k > 0.7 ({int(bad.sum())}): PIT unreliable")
    for level in (0.05, 0.5, 0.95):
        ax.axhline(level, color="0.5", lw=0.8, ls="-" if level == 0.5 else ":")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(LABEL_C)
    ax.set_ylabel("LOO-PIT")
    ax.set_title("LOO-PIT vs compute", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="major", alpha=0.3)
    p = f"{res['ks_p']:.2f}" if res["ks_p"] >= 0.01 else f"{res['ks_p']:.1e}"
    fig.suptitle(_title(idata, f"LOO-PIT calibration (uniform if calibrated: KS {res['ks']:.3f}, p = {p})"),
                 fontsize=11)
    return fig


# --------------------------------------------------------------------------------------------
# all at once

def dress_frontier_pair(axes: Any, c_max: float, *, loss_title: str) -> None:
    """Axes of a side-by-side ``L*(C)`` and ``N*(C)`` figure: log C, the largest observed budget,
    labels and titles (the laws figure and ``compare``'s overlay)."""
    for ax in axes[0]:
        ax.axvline(c_max, color="0.35", ls=":", lw=1.0, label="largest observed budget")
        ax.set_xscale("log")
        ax.set_xlabel(LABEL_C)
        ax.grid(True, which="major", alpha=0.3)
    _loss_axis(axes[0, 0])
    axes[0, 0].set_ylabel("L*(C), " + LABEL_LOSS)
    axes[0, 0].set_title(loss_title, fontsize=10)
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_ylabel("N*, optimal parameters")
    axes[0, 1].set_title("compute-optimal model size", fontsize=10)


def plot_laws(idata: Any, *, extrapolate_decades: float = 2.0, n_budgets: int = 60) -> Figure:
    """An averaged posterior's laws side by side: each law's frontier ``L*(C)`` and ``N*(C)`` with
    its 90% band, and the weighted mixture (what the other figures and commands use) over them.

    Where the laws' bands part, the choice of law is the uncertainty; the mixture's band (with
    the model discrepancy) spans what the weights and the forward validation allow.
    """
    from .posterior import optimal_draws
    from .store import is_averaged, law_view, laws_of, weights_of

    if not is_averaged(idata):
        raise InputError("this posterior holds one law; the laws figure needs an averaged fit "
                         "(`bayescale fit` without --law)", field="MODEL")
    obs = _observed(idata)
    c_max = obs["C"].max()
    grid = _logspace(obs["C"].min() / 3, c_max * 10**extrapolate_decades, n_budgets)
    colors = [OKABE_ITO[c] for c in ("vermillion", "green", "orange", "purple", "sky")]
    w = weights_of(idata)
    fig, axes = _figure(1, 2, width=12.0, height=4.8, sharex=True)
    for i, law in enumerate(laws_of(idata)):
        dr = optimal_draws(law_view(idata, law), grid)
        for ax, key in zip(axes[0], ("loss", "N_opt"), strict=True):
            _bands(ax, grid, dr[key], color=colors[i % len(colors)], label=f"{law} law (weight {w[law]:.2f})",
                   inner=False, alpha=0.15, lw=1.4, band_label=False)
    mix = optimal_draws(idata, grid)
    for ax, key in zip(axes[0], ("loss", "N_opt"), strict=True):
        q = _quantiles(mix[key])
        ax.plot(grid, q["q50"], color="black", lw=2.0, label="weighted mixture, with discrepancy", gid="median")
        for b in ("q05", "q95"):
            ax.plot(grid, q[b], color="black", lw=1.0, ls="--", gid="mixture90",
                    label="mixture 90% band" if b == "q05" else None)
    dress_frontier_pair(axes, c_max, loss_title="compute-optimal loss")
    axes[0, 1].legend(fontsize=8, loc="upper left")
    fig.suptitle(_title(idata, "The laws and their mixture"), fontsize=11)
    return fig


#: figures drawn once per law for an averaged posterior (they show one law's parameters)
PER_LAW = ("pairs", "trace")

FIGURES: dict[str, Callable[..., Figure]] = {
    "frontier": plot_frontier,
    "laws": plot_laws,
    "isoflops": plot_isoflops,
    "allocation": plot_allocation,
    "slices": plot_slices,
    "pairs": plot_pairs,
    "trace": plot_trace,
    "ppc": plot_ppc,
    "loo_pit": plot_loo_pit,
}
FORMATS = ("png", "svg", "pdf")


def plot_groups(idata: Any, *, extrapolate_decades: float = 1.0, n_budgets: int = 40, max_groups: int = 24,
                seed: int = 0) -> Figure:
    """A grouped posterior, one panel per group: the group's runs (loss against compute) and its
    compute-optimal loss L*(C) (median, 50% and 90% bands), over the population's band for a
    group with no runs (grey: what a new dataset or evaluation set would get).

    Parameters
    ----------
    idata
        A grouped posterior (``bayescale fit --group``).
    extrapolate_decades
        How far beyond the largest observed budget to draw, in decades of C.
    max_groups
        At most this many panels (the first groups by name); the title says if some are left out.
    """
    from .posterior import optimal_draws
    from .store import NEW_GROUP, group_view, groups_of

    names = groups_of(idata)
    if not names:
        raise InputError("the posterior has no groups; this figure is for `bayescale fit --group` posteriors")
    shown = names[:max_groups]
    obs = _observed(idata)
    grid = _logspace(obs["C"].min() / 3, obs["C"].max() * 10**extrapolate_decades, n_budgets)
    population = optimal_draws(group_view(idata, NEW_GROUP, seed=seed), grid)["loss"]
    ncols = min(6, len(shown))
    nrows = -(-len(shown) // ncols)
    fig, axes = _figure(nrows, ncols, width=2.6 * ncols + 0.6, height=2.3 * nrows + 1.0, sharex=True)
    groups_of_runs = idata.constant_data["group"].values.astype(str)
    for ax, g in zip(axes.ravel(), shown, strict=False):
        _bands(ax, grid, population, color="0.55", inner=False, line=False, alpha=0.25,
               band_label=ax is axes[0, 0])
        view = group_view(idata, g)
        _bands(ax, grid, optimal_draws(view, grid)["loss"], color=POSTERIOR_COLOR, lw=1.4,
               label="L*(C), this group (median)", band_label=False)
        mine = groups_of_runs == g
        ax.scatter(obs["C"][mine], obs["loss"][mine], s=9, color="black", zorder=3,
                   label="runs" if ax is axes[0, 0] else None)
        ax.set_xscale("log")
        lo, hi = np.quantile(obs["loss"][mine], [0.0, 1.0])
        ax.set_ylim(lo / 1.25, hi * 1.1)
        _loss_axis(ax)
        ax.set_title(g, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes.ravel()[len(shown):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("C (FLOP)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(LABEL_LOSS, fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    labels = [("90% band, a new group (population)" if lab == "90% credible band" else lab) for lab in labels]
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    more = f" (first {len(shown)} of {len(names)} groups)" if len(shown) < len(names) else ""
    fig.suptitle(_title(idata, f"Per group{more}"), fontsize=10)
    return fig


def figure_jobs(idata: Any) -> list[tuple[str, Callable[[], Figure]]]:
    """The figures of :data:`FIGURES` that apply to ``idata``, as ``(name, draw)``: an averaged
    posterior gets ``laws`` and one ``pairs-LAW`` and ``trace-LAW`` per law; a one-law posterior
    gets no ``laws``; a group with no runs (``--group new``) gets no ``loo_pit``."""
    from .store import is_averaged, laws_of

    averaged = is_averaged(idata)
    # a group with no runs (drawn from the population) has no runs of its own to leave out
    no_runs = "(no runs" in str(_meta(idata).get("group", ""))
    jobs: list[tuple[str, Callable[[], Figure]]] = []
    for name, func in FIGURES.items():
        if name == "loo_pit" and no_runs:
            continue
        if averaged and name in PER_LAW:
            jobs += [(f"{name}-{law}", lambda f=func, law=law: f(idata, law=law)) for law in laws_of(idata)]
        elif name != "laws" or averaged:
            jobs.append((name, lambda f=func: f(idata)))
    return jobs


def plot_all(
    idata: Any, out_dir: str | os.PathLike[str], fmt: str = "png", *, dpi: int = 110,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Path]:
    """Write every figure that applies (:func:`figure_jobs`) to ``out_dir/<name>.<fmt>``.

    Parameters
    ----------
    idata
        A posterior from :func:`bayescale.fit`.
    out_dir
        Directory (created if missing).
    fmt
        ``"png"``, ``"svg"`` or ``"pdf"``.
    dpi
        Resolution of raster output.
    progress
        Called as ``progress(name, i, n)`` before the ``i``-th of ``n`` figures is drawn.

    Returns
    -------
    list of pathlib.Path
        The files written, in :data:`FIGURES` order.
    """
    if fmt not in FORMATS:
        raise InputError(f"expected one of {', '.join(FORMATS)}, got {fmt!r}", field="--format")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", file=str(out), field="--out")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    jobs = figure_jobs(idata)
    for i, (name, make) in enumerate(jobs, 1):
        if progress is not None:
            progress(name, i, len(jobs))
        path = out / f"{name}.{fmt}"
        make().savefig(path, dpi=dpi)
        paths.append(path)
    return paths
