"""Posterior file size and the start-up of a command that does not plot, each against its baseline.

Run from the repository root::

    python bench/small_files.py                 # fits the 240 Chinchilla rows (one law) first
    python bench/small_files.py --model M.nc    # measures an existing posterior instead

1. **File size**: the posterior as ``bayescale fit`` saves it (no pointwise log likelihood,
   which :func:`bayescale.inference.with_log_likelihood` recomputes from the draws) against the
   same posterior written with that group, as files were before issue 11. The recomputation is
   timed too: it is what ``compare`` and the LOO-PIT figure pay instead.
2. **Start-up**: ``bayescale summary MODEL`` in a new process, against the same command in a new
   process that imports ArviZ first (what every command paid before issue 11: ArviZ 0.23
   imports matplotlib's pyplot and scipy.stats). Alternated, ``--repeats`` each, medians shown.

Prints human-readable lines, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIT = ["fit", "chinchilla", "--filter", "kept_by_epoch == 1", "--law", "chinchilla", "--json", "--force"]


def _seconds(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an existing posterior (default: fit the 240 Chinchilla rows into a temp dir)")
    p.add_argument("--repeats", type=int, default=5, help="new processes per variant (default 5)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else Path(tmp) / "chinchilla.nc"
        if not args.model:
            print("fitting the 240 Chinchilla rows (one law) ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "bayescale.cli", *FIT, "--out", str(model)], check=True,
                           capture_output=True)
        import bayescale as bs
        from bayescale.inference import with_log_likelihood

        idata = bs.load_posterior(model)
        t0 = time.perf_counter()
        full = with_log_likelihood(idata)
        recompute = time.perf_counter() - t0
        with_ll = Path(tmp) / "with-pointwise.nc"
        full.to_netcdf(with_ll)
        size, size_before = model.stat().st_size, with_ll.stat().st_size
        runs = idata.constant_data.sizes["run"]
        draws = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
        print(f"file: {size / 1e6:.2f} MB as saved, {size_before / 1e6:.2f} MB with the pointwise log likelihood "
              f"({draws} draws x {runs} runs): {size_before / size:.1f}x smaller; recomputing it took "
              f"{recompute:.3f} s")

        cmd = f"from bayescale.cli import main; main(['summary', {str(model)!r}])"
        plain, with_arviz = [], []
        for _ in range(args.repeats):
            plain.append(_seconds(cmd))
            with_arviz.append(_seconds("import warnings; warnings.simplefilter('ignore'); import arviz; " + cmd))
        a, b = statistics.median(plain), statistics.median(with_arviz)
        print(f"`bayescale summary` in a new process: {a:.2f} s; importing ArviZ as well (as before): {b:.2f} s "
              f"(median of {args.repeats}; {b - a:.2f} s saved, {b / a:.2f}x)")
        print(json.dumps({"file_bytes": size, "file_bytes_with_pointwise": size_before,
                          "recompute_seconds": recompute, "summary_seconds": a,
                          "summary_seconds_importing_arviz": b}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
