"""The ``bayescale`` command.

Every subcommand takes ``--json`` and then prints exactly one JSON object on stdout; progress
and logs go to stderr (and are silent under ``--json`` and ``--quiet``). Exit status: 0 success, 2 bad input
(a one-line message naming the file or field), 1 anything else. Heavy libraries (JAX,
NumPyro, ArviZ, PyTorch) are imported inside the commands, so ``bayescale --help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import __version__
from .errors import InputError

DEFAULT_MODELS_DIR = "models"


# --------------------------------------------------------------------------------------------
# output helpers


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN: undefined numbers (e.g. R-hat of a single chain) become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _emit_json(obj: Any) -> None:
    obj = _finite_or_none(json.loads(json.dumps(obj, default=_json_default)))
    sys.stdout.write(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _fmt(x: float) -> str:
    """Four significant digits, scientific notation for large or small magnitudes."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    ax = abs(x)
    return f"{x:.4g}" if 1e-3 <= ax < 1e5 else f"{x:.3e}"


def _table(rows: list[list[str]], header: list[str], *, left: tuple[int, ...] = (0,)) -> str:
    """Aligned text table: columns in ``left`` (default the first) left-aligned, others right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if j in left else str(c).rjust(w)  # noqa: E731
                               for j, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _interval_row(name: str, s: dict[str, float], extra: list[str] | None = None) -> list[str]:
    return [name, _fmt(s["mean"]), _fmt(s["sd"]), _fmt(s["q05"]), _fmt(s["q50"]), _fmt(s["q95"]),
            *(extra or [])]


INTERVAL_HEADER = ["", "mean", "sd", "q05", "q50", "q95"]


def _quiet(args: argparse.Namespace) -> bool:
    """No chatter on stderr: ``--json`` keeps the terminal for its one object, ``--quiet`` asks for it."""
    return bool(getattr(args, "json", False) or getattr(args, "quiet", False))


def _log(args: argparse.Namespace, msg: str) -> None:
    if not _quiet(args):
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# fit


def _parse_priors(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    priors: dict[str, str] = {}
    if args.priors_file:
        from ._compat import tomllib

        path = Path(args.priors_file)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise InputError("no such file; expected a TOML file with a [priors] table", file=str(path)) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"not valid TOML: {e}", file=str(path)) from None
        table = data.get("priors", data)
        for k, v in table.items():
            if not isinstance(v, str):
                raise InputError(f"expected a string like \"LogNormal(-1.2, 0.5)\", got {v!r}",
                                 file=str(path), field=f"priors.{k}")
            priors[k] = v
    for item in args.prior or []:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise InputError(f"expected NAME=DISTRIBUTION, e.g. alpha=LogNormal(-1.2, 0.5); got {item!r}",
                             field="--prior")
        priors[name.strip()] = spec.strip()
    return tuple(priors.items())


def _default_out(source: str, law: str | None) -> Path:
    stem = Path(source.rstrip("/\\")).stem or "runs"
    return Path(DEFAULT_MODELS_DIR) / (f"{stem}-{law}.nc" if law else f"{stem}.nc")


def _check_out(out: Path) -> dict[str, Any] | None:
    """Refuse to overwrite a file that is not a bayescale posterior (nothing the user had is lost).

    Returns the metadata of the posterior already at ``out``, or None if there is none.
    """
    if out.is_dir():
        raise InputError("is a directory; expected a path for the .nc posterior", file=str(out), field="--out")
    if out.exists():
        from .store import load_posterior, metadata

        try:
            return metadata(load_posterior(out))
        except InputError:
            raise InputError("exists and is not a bayescale posterior; refusing to overwrite it "
                             "(choose another --out)", file=str(out), field="--out") from None
    return None


#: FitConfig fields that are command-line options, by the option's name
_CONFIG_OPTIONS = {"law": "--law", "chains": "--chains", "warmup": "--warmup", "draws": "--draws", "seed": "--seed",
                   "likelihood": "--likelihood", "nu": "--nu", "target_accept": "--target-accept",
                   "priors": "--prior", "pool": "--pool", "share": "--share", "separate": "--separate"}


def _refit_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What makes a fit with metadata ``new`` another fit than the posterior with metadata ``old``.

    Empty when ``new`` re-runs the command that wrote ``old`` (same source, same loaded table, same
    filter, grouping and options, seed included): it reproduces the file, so it may replace it.
    Library versions are not compared: a re-run after an upgrade is still the same fit asked for.
    """
    show = lambda v: "none" if v in (None, []) else v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    diffs: list[str] = []

    def differ(name: str, was: Any, now: Any) -> None:
        if was != now:
            diffs.append(f"{name} {show(was)}, now {show(now)}")

    src = [old.get("source"), new.get("source")]
    if os.path.normpath(str(src[0])) != os.path.normpath(str(src[1])):
        differ("source", *src)
    differ("--filter", old.get("filter"), new.get("filter"))
    differ("--group", *(",".join(m.get("group_columns") or []) or None for m in (old, new)))
    oc, nc = old.get("config", {}), new.get("config", {})
    for k in [*nc, *(k for k in oc if k not in nc)]:
        differ(_CONFIG_OPTIONS.get(k, k), oc.get(k), nc.get(k))
    if old.get("data_sha256") != new.get("data_sha256"):
        diffs.append("other data" if diffs else "other data (the table loaded from the same source has changed)")
    return diffs


def _check_priors(runs: Any, cfg: Any) -> None:
    """Check the prior overrides as the fit will (names, distributions): a bad --prior is then the
    error a user sees, before whether the fit may replace an existing file."""
    from .models import Anchors, law_overrides, resolve_priors
    from .store import AVERAGED

    anchors = Anchors.from_data(*(runs[c].to_numpy(float) for c in ("N", "D", "loss")))
    if cfg.law != AVERAGED:
        resolve_priors(cfg.law, anchors, dict(cfg.priors))
        return
    for law in cfg.family:
        resolve_priors(law, anchors, law_overrides(law, dict(cfg.priors), tuple(cfg.family)))


def _check_overwrite(out: Path, old: dict[str, Any] | None, new: dict[str, Any], force: bool) -> None:
    """Refuse, before any sampling, to replace a posterior that this fit would not reproduce."""
    if old is None or force:
        return
    if "data_sha256" not in old:
        raise InputError("exists and records no fingerprint of the data it was fitted to (an older bayescale "
                         "wrote it), so this fit cannot be shown to reproduce it; refusing to overwrite it: "
                         "--force replaces it, or choose another --out", file=str(out), field="--out")
    new = json.loads(json.dumps(new, default=_json_default))  # tuples as lists, numbers as the file has them
    diffs = _refit_differences(old, new)
    if diffs:
        raise InputError(f"exists and holds another fit ({'; '.join(diffs)}); refusing to overwrite it: "
                         "--force replaces it, or choose another --out", file=str(out), field="--out")


def cmd_fit(args: argparse.Namespace) -> int:
    from .runs import LoadReport, group_labels, load_runs

    report = LoadReport(source=args.source)
    runs = load_runs(args.source, filter=args.filter, skip_invalid=args.skip_invalid, report=report,
                     columns=args.columns)
    if args.group:
        cols = [c.strip() for c in args.group.split(",") if c.strip()]
        for c in cols:
            if c not in runs.columns:
                raise InputError(f"no column {c!r}; columns are {', '.join(map(str, runs.columns))}",
                                 field="--group")
        runs["group"] = group_labels(runs, cols)
        runs.attrs["group_columns"] = cols
    if not args.quiet:
        for line in report.lines():
            print(f"bayescale: {line}", file=sys.stderr)
    out = Path(args.out) if args.out else _default_out(args.source, args.law)
    if out.suffix != ".nc":
        raise InputError("expected a path ending in .nc", file=str(out), field="--out")
    existing = _check_out(out)

    from .inference import MIN_RUNS, FitConfig, diagnostics, fit, run_metadata
    from .store import AVERAGED, save_posterior

    cfg = FitConfig(law=args.law or AVERAGED, chains=args.chains, warmup=args.warmup, draws=args.draws,
                    seed=args.seed, likelihood=args.likelihood, nu=args.nu, target_accept=args.target_accept,
                    priors=_parse_priors(args), pool=tuple(args.pool or ()), share=tuple(args.share or ()),
                    separate=tuple(args.separate or ()), structured_discrepancy=not args.no_structured_discrepancy)
    if existing is not None and not args.force and len(runs) >= MIN_RUNS:  # fewer: fit refuses before sampling
        _check_priors(runs, cfg)
        # decided before sampling: a refusal costs nothing
        _check_overwrite(out, existing, run_metadata(runs, cfg, source=args.source, filter=args.filter), False)
    t0 = time.perf_counter()
    idata = fit(runs, cfg, quiet=_quiet(args), source=args.source, filter=args.filter)
    try:
        save_posterior(idata, out)
    except OSError as e:
        raise InputError(f"could not write the posterior: {e.strerror or e}", file=str(out), field="--out") from None
    seconds = time.perf_counter() - t0
    diag = diagnostics(idata)
    result = {"law": cfg.law, "n_obs": int(len(runs)), "seconds": round(seconds, 3),
              "divergences": diag["divergences"], "out": str(out), **_posterior_summary(idata),
              "diagnostics": {k: v for k, v in diag.items() if k != "per_param"}, "skipped": report.lines()}
    if args.json:
        _emit_json(result)
        return 0
    what = f"{cfg.law} law" if cfg.law != AVERAGED else f"{len(result['laws'])} laws, averaged,"
    if "groups" in result:
        what += f" per group ({len(result['groups'])} groups, {_pooling_text(result['pooling'])})"
    print(f"{what} fitted to {len(runs)} runs from {args.source} in {seconds:.1f} s -> {out}")
    _print_posterior(result)
    print(f"\ndiagnostics: {_verdict(diag)}")
    return 0


def _gp_posterior(law_meta: dict[str, Any]) -> dict[str, Any] | None:
    """Median and 90% interval of a law's discrepancy hyperparameters over their posterior draws
    (None in a file written before they were drawn)."""
    import numpy as np

    from .discrepancy import DRAWS_KEY

    d = law_meta.get(DRAWS_KEY)
    if not d:
        return None
    ls = np.asarray(d["length_scales"], float)
    cols = {"amplitude": d["amplitude"], "noise": d["noise"], "length_N": ls[:, 0], "length_D": ls[:, 1]}
    out: dict[str, Any] = {k: dict(zip(("q05", "median", "q95"),
                                       np.quantile(np.asarray(v, float), [0.05, 0.5, 0.95]).tolist(), strict=True))
                           for k, v in cols.items()}
    out["importance_ess"] = d.get("importance_ess")
    return out


def _gp_cell(mode: dict[str, Any], post: dict[str, Any] | None, key: str, scale: float) -> str:
    """A summary cell: the hyperparameter's posterior median and 90% interval (the mode without draws)."""
    if post is None:
        v = mode["length_scales"][0 if key == "length_N" else 1] if key.startswith("length") else mode[key]
        return f"{scale * v:.2f}"
    q = post[key]
    return f"{scale * q['median']:.2f} [{scale * q['q05']:.2f}, {scale * q['q95']:.2f}]"


def _posterior_summary(idata: Any) -> dict[str, Any]:
    """``params`` (``LAW.NAME`` keys for an averaged posterior), ``compute_optimal`` (the mixture's
    exponents) and, for an averaged posterior, ``laws`` (weight, params, forward scores) and
    ``averaging`` (cuts, discrepancy rate): what ``fit`` and ``summary`` report."""
    from .posterior import exponents, param_summary, summarize
    from .store import AVERAGED, laws_of, metadata

    meta = metadata(idata)
    grouped = _group_summary(idata)
    # a grouped posterior's exponents differ by group: `optimal --group G` gives each
    expo = {} if grouped else {k: summarize(v) for k, v in exponents(idata).items()}
    if meta["law"] != AVERAGED:
        return {"params": param_summary(idata), "compute_optimal": expo, **grouped}
    laws = {law: {"weight": meta["laws"][law]["weight"], "params": param_summary(idata, law=law),
                  "lfo": meta["laws"][law]["lfo"], "discrepancy_gp": meta["laws"][law].get("discrepancy_gp"),
                  "discrepancy_gp_posterior": _gp_posterior(meta["laws"][law])}
            for law in laws_of(idata)}
    params = {f"{law}.{k}": v for law, d in laws.items() for k, v in d["params"].items()}
    av = meta["averaging"]
    disc = av["discrepancy"]
    averaging = {"method": av["method"], "cuts": av["cuts"], "distance": av["distance"],
                 "discrepancy_rate": {"mean": disc["rate_mean"], "q05": disc["rate_q05"], "q95": disc["rate_q95"],
                                      "prior": disc["rate_prior"]}}
    if "note" in av:
        averaging["note"] = av["note"]
    return {"params": params, "compute_optimal": expo, "laws": laws, "averaging": averaging, **grouped}


def _group_summary(idata: Any) -> dict[str, Any]:
    """For a grouped posterior: ``pooling``, the spreads between groups (``spreads``, on the log
    scale of each coordinate) and every group's parameters (``groups``); empty otherwise."""
    from .posterior import param_summary, summarize
    from .store import AVERAGED, group_view, groups_of, laws_of, metadata

    names = groups_of(idata)
    if not names:
        return {}
    meta = metadata(idata)
    post = idata.posterior
    spreads = {}
    for v in post.data_vars:
        if str(v).rpartition(".")[2].startswith("tau_"):
            for f in post[v].coords["factor"].values:
                spreads[f"{v}[{f}]"] = summarize(post[v].sel(factor=f).values)
    groups = {}
    for g in names:
        view = group_view(idata, g)
        if meta["law"] != AVERAGED:
            groups[g] = param_summary(view)
        else:
            groups[g] = {f"{law}.{k}": v for law in laws_of(view) for k, v in param_summary(view, law=law).items()}
    return {"pooling": meta.get("pooling", {}), "spreads": spreads, "groups": groups}


def _pooling_text(pooling: dict[str, str]) -> str:
    by: dict[str, list[str]] = {}
    for k, m in pooling.items():
        by.setdefault(m, []).append(k)
    return "; ".join(f"{m}: {', '.join(ks)}" for m, ks in by.items())


def _print_posterior(res: dict[str, Any]) -> None:
    """Parameters (per law, with weights and forward scores, when averaged) and exponents."""
    ph = [*INTERVAL_HEADER, "r_hat", "ess_bulk"]
    row = lambda k, v: _interval_row(k, v, [f"{v['r_hat']:.3f}", f"{v['ess_bulk']:.0f}"])  # noqa: E731
    if "laws" not in res:
        print(_table([row(k, v) for k, v in res["params"].items()], ph))
    else:
        av = res["averaging"]
        print("weights (stacking of forward-validation scores): "
              + ", ".join(f"{law} {d['weight']:.3f}" for law, d in res["laws"].items()))
        print("forward validation: cuts at C = " + (", ".join(_fmt(c) for c in av["cuts"]) or "none")
              + (f" ({av['note']})" if "note" in av else ""))
        rows = []
        for law, d in res["laws"].items():
            for c in d["lfo"]:
                k = "" if c["pareto_k"] is None else f"{c['pareto_k']:.2f}"
                rows.append([law, _fmt(c["cut"]), str(c["n_fit"]), str(c["n_scored"]), c["method"], k,
                             f"{c['mean_distance']:.2f}", _fmt(c["elpd"]), _fmt(c["elpd_with_discrepancy"])])
        if rows:
            print(_table(rows, ["law", "cut C", "fitted", "scored", "method", "pareto_k", "distance",
                                "elpd", "elpd+discrepancy"]))
        r = av["discrepancy_rate"]
        print(f"model discrepancy: {100 * r['mean']:.2f}% of the loss per decade beyond the runs "
              f"(90% [{100 * r['q05']:.2f}%, {100 * r['q95']:.2f}%]; prior {r['prior']})")
        gp_rows = [[law, *(_gp_cell(g, p, k, scale) for k, scale in
                           (("amplitude", 100), ("noise", 100), ("length_N", 1), ("length_D", 1)))]
                   for law, d in res["laws"].items() if (g := d.get("discrepancy_gp"))
                   for p in [d.get("discrepancy_gp_posterior")]]
        if gp_rows:
            print("structured discrepancy (each law's misfit over log10 N, log10 D, a Gaussian process on its "
                  "residuals; the noise is what it leaves; hyperparameters: posterior median [90%], or the mode "
                  "where the file has no draws):")
            print(_table(gp_rows, ["law", "misfit sd %", "noise %", "length N (decades)", "length D (decades)"]))
        for law, d in res["laws"].items():
            print(f"\n{law} law (weight {d['weight']:.3f}):")
            print(_table([row(k, v) for k, v in d["params"].items()], ph))
    if "groups" in res:
        print(f"\n{len(res['groups'])} groups ({_pooling_text(res['pooling'])}); the parameters above are the "
              "population's (a typical group). Spreads between groups (sd on each coordinate's log scale):")
        print(_table([_interval_row(k, v) for k, v in res["spreads"].items()], INTERVAL_HEADER))
        first = next(iter(res["groups"].values()))
        keys = [k for k in first if not k.endswith("sigma")] + [k for k in first if k.endswith("sigma")]
        print("\nper group (posterior medians):")
        print(_table([[g, *(_fmt(p[k]["q50"]) for k in keys)] for g, p in res["groups"].items()], ["group", *keys]))
    if res["compute_optimal"]:
        print()
        print("compute-optimal exponents (N_opt ∝ C^a, D_opt ∝ C^b)"
              + (", the mixture's:" if "laws" in res else ":"))
        print(_table([_interval_row(k, v) for k, v in res["compute_optimal"].items()], INTERVAL_HEADER))


def _verdict(diag: dict[str, Any]) -> str:
    base = (f"max R-hat {diag['max_r_hat']:.4f}, min ESS bulk {diag['min_ess_bulk']:.0f} / tail "
            f"{diag['min_ess_tail']:.0f}, {diag['divergences']} divergences, max tree depth {diag['max_tree_depth']}")
    if not diag["warnings"]:
        return "OK (" + base + ")"
    return "CHECK (" + base + ")\n  " + "\n  ".join(diag["warnings"])


# --------------------------------------------------------------------------------------------
# summary / optimal / predict


def cmd_summary(args: argparse.Namespace) -> int:
    from .inference import diagnostics
    from .store import load_posterior, metadata

    idata = load_posterior(args.model)
    meta = metadata(idata)
    diag = diagnostics(idata)
    res = _posterior_summary(idata)
    if args.json:
        priors = ({law: v["priors"] for law, v in meta["laws"].items()} if "laws" in meta else meta["priors"])
        _emit_json({"model": args.model, "law": meta["law"], "n_obs": meta["n_obs"], "source": meta["source"],
                    "filter": meta["filter"], "priors": priors, "config": meta["config"],
                    "versions": meta["versions"], **res,
                    "diagnostics": {k: v for k, v in diag.items() if k != "per_param"}})
        return 0
    cfg = meta["config"]
    what = (f"{meta['law']} law" if "laws" not in meta
            else f"{len(meta['laws'])} laws averaged ({', '.join(meta['laws'])})")
    print(f"{args.model}: {what}, {meta['n_obs']} runs from {meta['source']}"
          + (f" (filter: {meta['filter']})" if meta["filter"] else ""))
    print(f"likelihood {cfg['likelihood']}" + (f" (nu={cfg['nu']})" if cfg["likelihood"] == "student_t" else "")
          + f" on log loss; {cfg['chains']} chains x {cfg['draws']} draws after {cfg['warmup']} warm-up;"
          f" seed {cfg['seed']}")
    if "laws" not in meta:
        print("priors: " + ", ".join(f"{k} ~ {v}" for k, v in meta["priors"].items()))
    else:
        for law, v in meta["laws"].items():
            print(f"priors ({law}): " + ", ".join(f"{k} ~ {p}" for k, p in v["priors"].items()))
    print()
    _print_posterior(res)
    print(f"\ndiagnostics: {_verdict(diag)}")
    return 0


def _usable(idata: Any, args: argparse.Namespace) -> None:
    """Refuse an unconverged posterior (exit 2, with what to do) unless --allow-unconverged."""
    from .inference import convergence_problem, diagnostics

    problem = convergence_problem(diagnostics(idata))
    if problem is None:
        return
    if getattr(args, "allow_unconverged", False):
        _log(args, f"warning: using an unconverged posterior ({problem}), as --allow-unconverged asks")
        return
    raise InputError(f"the posterior has not converged ({problem}); its intervals would be wrong. Refit with "
                     "more warm-up and draws (e.g. --warmup 2000 --draws 2000) or a higher --target-accept, "
                     "or pass --allow-unconverged to use it anyway", file=args.model)


def _flags(e: dict[str, Any], *, short: bool = False) -> str:
    """Text of a row's extrapolation: how far beyond the runs it is (``short``: for narrow tables)."""
    if not e["extrapolating"]:
        return "inside the runs" if not short else "no"
    parts = []
    if e["compute_ratio"] > 1:
        parts.append(f"C x{e['compute_ratio']:.3g}" + ("" if short else " the largest run"))
    if e.get("below_smallest_compute"):
        parts.append("C below the runs")
    out = [n for n, k in (("N", "N_outside"), ("D", "D_outside")) if e[k]]
    if out:
        parts.append(" and ".join(out) + (" outside" if short else " outside the runs' range"))
    if e.get("beyond_corpus"):
        parts.append("D > corpus" if short else "D beyond the corpus")
    return "; ".join(parts) + f" ({e['distance_decades']:.2f} decades)"


def _group_views(idata: Any, args: argparse.Namespace, *, all_groups: bool) -> list[tuple[str | None, Any]]:
    """``[(group, posterior)]`` that a command works on: ``--group G`` picks one group of a
    grouped posterior (any name the fit did not see, such as ``new``, gets the population
    predictive); without it, every group where ``all_groups`` allows, else a clear refusal."""
    from .store import NEW_GROUP, group_view, groups_of

    names = groups_of(idata)
    g = getattr(args, "group", None)
    if not names:
        if g is not None:
            raise InputError("this posterior was fitted without groups; drop --group (or refit with --group COL)",
                             file=args.model, field="--group")
        return [(None, idata)]
    if g is None:
        if all_groups:
            return [(name, group_view(idata, name)) for name in names]
        raise InputError(f"this posterior has {len(names)} groups ({', '.join(names[:6])}"
                         f"{', ...' if len(names) > 6 else ''}); say which with --group NAME, or --group "
                         f"{NEW_GROUP} for a group with no runs", file=args.model, field="--group")
    if g not in names:
        _log(args, f"group {g!r} has no runs in this fit: using the population predictive "
                   "(parameters drawn from the spread between groups)")
    return [(g, group_view(idata, g, seed=getattr(args, "seed", 0)))]


def cmd_optimal(args: argparse.Namespace) -> int:
    from .posterior import optimal
    from .store import load_posterior

    idata = load_posterior(args.model)
    _usable(idata, args)
    res = []
    for g, view in _group_views(idata, args, all_groups=True):
        res += [({"group": g} if g is not None else {}) | r for r in optimal(view, args.compute)]
    if args.json:
        _emit_json({"model": args.model, "optimal": res})
        return 0
    rows = []
    for r in res:
        head = (f"{r['group']}  " if "group" in r else "") + f"C={_fmt(r['compute'])}"
        for k in ("N_opt", "D_opt", "loss", "tokens_per_param"):
            label = f"{head}  {k}" if k == "N_opt" else f"{'':>{len(head)}}  {k}"
            rows.append(_interval_row(label, r[k], [_flags(r["extrapolation"]) if k == "N_opt" else ""]))
    print(_table(rows, ["budget (FLOP)", "mean", "sd", "q05", "q50", "q95", "beyond the runs?"], left=(0, 6)))
    return 0


def _table_groups(table: Any, meta: dict[str, Any], path: Any) -> list[str]:
    """Each row's group in a ``predict --at`` table: from the group column(s) the fit used, or
    a ``group`` column."""
    from .runs import group_labels

    cols = meta.get("group_columns") or []
    if cols and all(c in table.columns for c in cols):
        return list(group_labels(table, cols))
    if "group" in table.columns:
        return list(table["group"].astype(str))
    want = ", ".join(cols) if cols else "group"
    raise InputError(f"the posterior has groups: give each row's group in column(s) {want}, or one group for "
                     "every row with --group NAME", file=str(path), field="--group")


def cmd_predict(args: argparse.Namespace) -> int:
    from .posterior import predict
    from .store import load_posterior

    C = None
    if args.at is not None:
        if args.N is not None or args.D is not None:
            raise InputError("give either --N and --D, or --at TABLE, not both", field="--at")
        from .runs import _read_table, resolve_source

        path = resolve_source(args.at)
        table = _read_table(path)
        missing = [c for c in ("N", "D") if c not in table.columns]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)}; expected N and D", file=str(path),
                             field=missing[0])
        N, D = table["N"].to_numpy(), table["D"].to_numpy()
        C = table["C"].to_numpy() if "C" in table.columns else None
    else:
        if args.N is None or args.D is None:
            raise InputError("give --N and --D (or --at TABLE)", field="--N" if args.N is None else "--D")
        N, D = args.N, args.D
    idata = load_posterior(args.model)
    _usable(idata, args)
    from .store import groups_of, metadata

    row_groups = None
    if args.at is not None and groups_of(idata) and args.group is None:
        row_groups = _table_groups(table, metadata(idata), path)
    try:
        if row_groups is None:
            [(g, view)] = _group_views(idata, args, all_groups=False)
            res = predict(view, N, D, C=C, noise=not args.no_noise, seed=args.seed)
        else:  # each row under its own group's law, in the table's order
            from .store import group_view

            res = [None] * len(N)
            for g in dict.fromkeys(row_groups):
                idx = [i for i, r in enumerate(row_groups) if r == g]
                view = group_view(idata, g, seed=args.seed)
                for i, r in zip(idx, predict(view, N[idx], D[idx], C=None if C is None else C[idx],
                                             noise=not args.no_noise, seed=args.seed), strict=True):
                    res[i] = {"group": g, **r}
    except (TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"expected numbers: {e}", field="--at" if args.at else "--N") from None
    if args.json:
        _emit_json({"model": args.model, "predictions": res})
        return 0
    g = [[r["group"]] if "group" in r else [] for r in res]
    print(_table([[*gi, _fmt(r["N"]), _fmt(r["D"]), _fmt(r["mean"]), _fmt(r["sd"]), _fmt(r["q05"]), _fmt(r["q50"]),
                   _fmt(r["q95"]), _flags(r["extrapolation"])] for gi, r in zip(g, res, strict=True)],
                 [*(["group"] if g[0] else []), "N", "D", "mean", "sd", "q05", "q50", "q95", "beyond the runs?"],
                 left=(0, 8) if g[0] else (7,)))
    kind = "posterior predictive (with observation noise)" if not args.no_noise else "posterior of the mean loss"
    print(f"({kind}; loss in nats/token)")
    return 0


# --------------------------------------------------------------------------------------------
# check


def cmd_check(args: argparse.Namespace) -> int:
    from .check import COVER_RANGE, P_MIN, RANK_DRAWS, plot_ranks, sbc
    from .store import load_posterior

    idata = load_posterior(args.model)
    from .store import groups_of

    if groups_of(idata):  # the simulations would draw one law for all the runs and ignore the groups
        raise InputError("check --sbc works on ungrouped posteriors for now; fit the design without --group "
                         "(e.g. one group's runs) and check that", file=args.model, field="--sbc")
    if args.sbc < 20:
        raise InputError(f"expected at least 20 replicates (ranks of fewer say little), got {args.sbc}", field="--sbc")

    def progress(law: str, done: int, total: int) -> None:
        if not _quiet(args) and (done == total or done % max(1, total // 10) < 4):
            print(f"  {law}: {done}/{total} replicates", file=sys.stderr, flush=True)

    _log(args, f"simulation-based calibration of {args.model}: {args.sbc} replicates per law at its "
               f"{int(idata.constant_data['N'].size)} runs")
    checks = sbc(idata, replicates=args.sbc, compute=args.compute, laws=args.law, seed=args.seed, progress=progress)
    out = Path(args.out) if args.out else Path(str(Path(args.model).with_suffix("")) + "-check")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"could not create the directory: {e.strerror or e}", file=str(out), field="--out") from None
    fig_path = out / "sbc-ranks.png"
    plot_ranks(checks).savefig(fig_path, dpi=100)
    res = {"model": args.model, "sbc": {law: c.summary() for law, c in checks.items()}, "figure": str(fig_path)}
    res["verdict"] = "calibrated" if all(v["verdict"] == "calibrated" for v in res["sbc"].values()) else "check"
    if args.json:
        _emit_json(res)
        return 0
    for law, v in res["sbc"].items():
        print(f"{law} law: {v['replicates']} replicates, {v['replicates_with_divergences']} with divergences, "
              f"{v['seconds']:.0f} s -> {v['verdict'].upper()}")
        print(_table([[k, f"{q['chi2']:.1f}", f"{q['p']:.3f}", f"{q['coverage90']:.3f}", "ok" if q["ok"] else "NO"]
                      for k, q in v["quantities"].items()], ["quantity", "chi2", "p (uniform ranks)", "90% cover",
                                                             ""]))
    print(f"(ranks of the truth among {RANK_DRAWS} thinned posterior draws; ok: p > {P_MIN} and 90% coverage in "
          f"[{COVER_RANGE[0]}, {COVER_RANGE[1]}])")
    print(f"figure: {fig_path}\nverdict: {res['verdict']}")
    return 0



# --------------------------------------------------------------------------------------------
# parser and entry point


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s!r}")
    return v


def add_quiet(p: argparse.ArgumentParser) -> None:
    """The option that silences a command's progress and notes on stderr (errors still go there)."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on stderr but errors: no progress, notes or warnings")


class ShowDefaults(argparse.HelpFormatter):
    """Help that ends each option's text with its default, unless the text already speaks of it.

    Applied to every command once all are registered (:func:`show_defaults`), so an option added
    anywhere (the trainer's, the figures') says what it does when not given without each module
    repeating the number, and a changed default cannot leave its help out of date. A default of
    None, False or SUPPRESS means "off" or "not given" and is left to the text.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if (action.option_strings and text is not argparse.SUPPRESS and d is not None and d is not False
                and d is not argparse.SUPPRESS and "default" not in text.lower()):
            text += " (default: %(default)s)"
        return text


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every command under it the :class:`ShowDefaults` help, keeping any
    other formatter a command chose (e.g. raw descriptions) beneath it."""
    parsers, seen = [parser], set()
    while parsers:
        q = parsers.pop()
        if id(q) in seen:
            continue
        seen.add(id(q))
        if not issubclass(q.formatter_class, ShowDefaults):
            base = q.formatter_class
            q.formatter_class = (ShowDefaults if base is argparse.HelpFormatter
                                 else type(f"ShowDefaults{base.__name__}", (ShowDefaults, base), {}))
        for a in q._actions:
            if isinstance(a, argparse._SubParsersAction):
                parsers.extend(a.choices.values())


def add_allow_unconverged(p: argparse.ArgumentParser) -> None:
    """The option that lets a command use a posterior that failed the convergence checks."""
    p.add_argument("--allow-unconverged", action="store_true",
                   help="use the posterior even if max R-hat > 1.05 or > 1%% of transitions diverged "
                        "(default: refuse, exit 2)")


def build_parser() -> argparse.ArgumentParser:
    from .laws import LAWS

    """The ``bayescale`` argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(prog="bayescale", description="Bayesian scaling-law inference for language models.")
    p.add_argument("--version", action="version", version=f"bayescale {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    f = sub.add_parser("fit", help="fit a scaling law by NUTS and save the posterior (.nc)")
    f.add_argument("source", metavar="SOURCE",
                   help="runs directory, a table (CSV, TSV, JSON lines, Parquet) with N, D, loss, or a shipped "
                        "example name (chinchilla)")
    f.add_argument("--law", choices=list(LAWS), default=None,
                   help="fit one law only (default: the whole family, averaged by forward validation)")
    f.add_argument("--group", metavar="COL[,COL...]",
                   help="column(s) naming each run's group (e.g. dataset,eval_set): one law per group, partially "
                        "pooled (default: no groups)")
    f.add_argument("--columns", metavar="N=..,D=..,loss=..",
                   help="map the table's own column names onto N, D, loss (and C, group, loss_se, loss_lo95, "
                        "loss_hi95), e.g. N=params,D=tokens,loss=val_loss (default: the names as they are)")
    for flag, what in (("--pool", "pooled across groups: per group, around a learned population value (the default "
                                  "for every parameter)"),
                       ("--share", "shared: one value for every group ('all': one law for all groups)"),
                       ("--separate", "separate: per group, independent ('all': separate fits)")):
        f.add_argument(flag, nargs="+", metavar="NAME",
                       help=f"with --group, parameters {what}; names: L0, A, B, alpha, beta, sigma (chinchilla, "
                            "shared laws), L0, E, N_c, alpha_N, alpha_D, sigma (kaplan), or all")
    f.add_argument("--filter", metavar="QUERY",
                   help='pandas query over the table, e.g. "kept_by_epoch == 1" (default: every row)')
    f.add_argument("--out", metavar="PATH.nc",
                   help="where to save the posterior (default: models/<source>.nc, or models/<source>-<law>.nc "
                        "with --law); an existing posterior of another fit is kept unless --force")
    f.add_argument("--force", action="store_true",
                   help="replace the posterior at --out even if it came from other data or options (without it, "
                        "only a re-run of the same fit may replace it)")
    f.add_argument("--chains", type=_positive_int, default=4,
                   help="NUTS chains, run in parallel where JAX has a CPU device per chain")
    f.add_argument("--warmup", type=_positive_int, default=1000,
                   help="warm-up (adaptation) iterations per chain, not kept")
    f.add_argument("--draws", type=_positive_int, default=1000, help="posterior draws kept per chain")
    f.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same draws")
    f.add_argument("--likelihood", choices=["student_t", "gaussian"], default="student_t",
                   help="noise on log loss: Student-t (robust to the odd bad run) or Gaussian")
    f.add_argument("--nu", type=_positive_float, default=4.0, help="Student-t degrees of freedom (default 4)")
    f.add_argument("--no-structured-discrepancy", action="store_true",
                   help="averaged fits: leave out each law's Gaussian-process misfit over (log N, log D) "
                        "(only the discrepancy growing with distance beyond the runs remains)")
    f.add_argument("--target-accept", type=float, default=0.9,
                   help="NUTS target acceptance probability; raise it (e.g. 0.95-0.99) against divergences")
    f.add_argument("--prior", action="append", metavar="NAME=DIST",
                   help="override a prior, e.g. alpha='LogNormal(-1.2, 0.5)' (every law with an alpha) or "
                        "kaplan.alpha_D='...' (one law); repeatable")
    f.add_argument("--priors-file", metavar="TOML",
                   help="a TOML file with a [priors] table of NAME = \"DIST\" (--prior overrides it)")
    f.add_argument("--skip-invalid", action="store_true",
                   help="load the valid runs and report the invalid ones (default: refuse the whole load)")
    f.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_quiet(f)
    f.set_defaults(func=cmd_fit)

    s = sub.add_parser("summary", help="parameters, exponents and diagnostics of a saved posterior")
    s.add_argument("model", metavar="MODEL.nc", help="a posterior written by bayescale fit")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.set_defaults(func=cmd_summary)

    o = sub.add_parser("optimal", help="posterior of the compute-optimal N*, D*, loss at given budgets")
    o.add_argument("model", metavar="MODEL.nc", help="a posterior written by bayescale fit")
    o.add_argument("--compute", type=_positive_float, nargs="+", required=True, metavar="C",
                   help="budget(s) in FLOP (C = 6ND)")
    add_allow_unconverged(o)
    o.add_argument("--group", metavar="NAME", help="a grouped posterior's group (any other name, e.g. new: a group "
                   "with no runs, from the population); default: every group")
    o.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_quiet(o)
    o.set_defaults(func=cmd_optimal)

    pr = sub.add_parser("predict", help="posterior predictive loss at given (N, D)")
    pr.add_argument("model", metavar="MODEL.nc", help="a posterior written by bayescale fit")
    pr.add_argument("--N", type=_positive_float, nargs="+", help="non-embedding parameters (one or more)")
    pr.add_argument("--D", type=_positive_float, nargs="+", help="training tokens (pairs with --N)")
    pr.add_argument("--at", metavar="TABLE", help="CSV/Parquet with columns N, D (and C, if compute is not 6ND)")
    pr.add_argument("--no-noise", action="store_true",
                    help="interval of the mean loss, without observation noise (default: with it)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the predictive noise draws")
    pr.add_argument("--group", metavar="NAME", help="a grouped posterior's group for every row (new: a group with "
                    "no runs); default: each --at row's own group column(s)")
    add_allow_unconverged(pr)
    pr.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_quiet(pr)
    pr.set_defaults(func=cmd_predict)

    c = sub.add_parser("check", help="simulation-based calibration of a fit: simulate from the prior, refit, "
                                     "rank the truth")
    c.add_argument("model", metavar="MODEL.nc", help="a posterior written by bayescale fit")
    c.add_argument("--sbc", type=_positive_int, default=200, metavar="R",
                   help="replicates per law (default 200; about a minute per law on the Chinchilla design here)")
    c.add_argument("--law", nargs="+", choices=list(LAWS), help="laws to check (default: every law in the file)")
    c.add_argument("--compute", type=_positive_float, metavar="C",
                   help="budget of the log N*(C) check (default: 100 x the largest run's)")
    c.add_argument("--out", metavar="DIR", help="where to write the rank histograms (default MODEL-check/)")
    c.add_argument("--seed", type=int, default=0, help="seed of the simulations and refits (default 0)")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_quiet(c)
    c.set_defaults(func=cmd_check)

    _add_optional_commands(sub)
    show_defaults(p)  # after every command is registered, wherever it came from
    return p


def _add_optional_commands(sub: argparse._SubParsersAction) -> None:
    """Commands that live in other modules (trainer, figures), registered when present.

    A module that is absent is skipped; one that is present but broken fails loudly.
    """
    from importlib import import_module
    from importlib.util import find_spec

    for name in ("bayescale.train.cli", "bayescale.plot_cli", "bayescale.design_cli", "bayescale.loop_cli"):
        if find_spec(name) is not None:
            import_module(name).add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bayescale`` console script."""
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed command with the CLI's contract for failures: bad input exits 2 with one line
    (and, with ``--json``, one error object on stdout), an internal error exits 1 without a
    traceback unless ``BAYESCALE_DEBUG`` is set."""
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"bayescale {args.command}: error: {e}", file=sys.stderr)
        if getattr(args, "json", False):  # the --json promise holds for errors too: one object on stdout
            _emit_json({"error": e.detail, "field": e.field, "file": e.file})
        return 2
    except KeyboardInterrupt:
        print(f"bayescale {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:  # an internal error: say so, and how to see the traceback
        if os.environ.get("BAYESCALE_DEBUG"):
            traceback.print_exc()
        else:
            print(f"bayescale {args.command}: internal error: {type(e).__name__}: {e} "
                  "(set BAYESCALE_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
