"""Sampling progress: the line a terminal sees, and that showing it changes no draw."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from bayescale import sampler
from bayescale.sampler import ProgressBar, progress_enabled

from .conftest import TRUE_CHINCHILLA, simulate


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def shown(stream: io.StringIO) -> list[str]:
    """The successive states of a ``\\r``-rewritten line, trailing padding removed."""
    return [s.rstrip() for s in stream.getvalue().split("\r") if s.strip()]


def test_bar_aggregates_chains_and_phases():
    out = io.StringIO()
    bar = ProgressBar("kaplan law 2/3, forward cut 1/3", chains=3, warmup=100, draws=50, stream=out)
    bar.update(0, 40, 2, 0)
    bar.update(1, 60, 1, 0)
    bar.update(2, 20, 0, 0)
    # the slowest chain sets the count; divergences are summed over chains
    label = "kaplan law 2/3, forward cut 1/3: "
    assert bar.line() == label + "warm-up  [####................] 20/100 (3 chains), 3 divergent"
    bar.update(2, 10, 0, 0)  # a late report of an earlier iteration moves nothing back
    assert "20/100" in bar.line()
    for c, (i, dw, ds) in enumerate([(130, 2, 1), (150, 1, 2), (110, 0, 0)]):
        bar.update(c, i, dw, ds)
    # in sampling, the divergences that count are the sampling ones (warm-up's are adaptation)
    assert bar.line() == label + "sampling [####................] 10/50 (3 chains), 3 divergent"
    bar.update(2, 150, 0, 4)
    bar.update(0, 150, 2, 1)
    assert bar.line().endswith("[####################] 50/50 (3 chains), 7 divergent")
    bar.close()
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    states = shown(out)
    assert states[-1] == bar.line() and len(states) == 6  # a redraw per change of the line, none otherwise
    # a shorter line is padded to blank out the end of the longer one before it
    frames = text.rstrip("\n").split("\r")[1:]
    assert all(len(b) >= len(a.rstrip()) for a, b in zip(frames[:-1], frames[1:], strict=True))


def test_bar_single_chain_and_silent_close():
    out = io.StringIO()
    bar = ProgressBar("chinchilla law", chains=1, warmup=10, draws=10, stream=out)
    bar.close()  # nothing was drawn: nothing to end
    assert out.getvalue() == ""
    bar.update(0, 10, 0, 0)
    assert bar.line() == "chinchilla law: sampling [....................] 0/10 (1 chain), 0 divergent"


def test_report_without_a_bar_is_ignored():
    sampler._report(np.int64(0), np.int64(5), np.array([0, 0]))  # a callback after its run ended


def test_progress_enabled(monkeypatch):
    monkeypatch.delenv(sampler.PROGRESS_ENV, raising=False)
    assert progress_enabled(False, Tty()) is True
    assert progress_enabled(False, io.StringIO()) is False  # a pipe or a file: no bar
    assert progress_enabled(True, Tty()) is False  # --quiet / --json
    monkeypatch.setenv(sampler.PROGRESS_ENV, "1")
    assert progress_enabled(False, io.StringIO()) is True
    assert progress_enabled(True, io.StringIO()) is False
    monkeypatch.setenv(sampler.PROGRESS_ENV, "0")
    assert progress_enabled(False, Tty()) is False


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    import bayescale as bs

    path = tmp_path_factory.mktemp("progress") / "sim.csv"
    simulate("chinchilla", TRUE_CHINCHILLA, 40, 0.02, 11).to_csv(path, index=False)
    return bs.load_runs(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("chains", [2, 5], ids=["parallel", "vectorized"])
def test_progress_changes_no_draw(small_runs, chains, capsys):
    """With 4 host devices, 2 chains run pmap'ed and 5 vmapped: the callback serves both."""
    import bayescale as bs

    cfg = bs.FitConfig(law="chinchilla", chains=chains, warmup=60, draws=40, seed=3)
    plain = bs.fit(small_runs, cfg, quiet=True)
    assert capsys.readouterr().err == ""
    shown_ = bs.fit(small_runs, cfg, quiet=True, progress=True)
    err = capsys.readouterr().err
    assert sorted(plain.posterior.data_vars) == sorted(shown_.posterior.data_vars)
    for v in plain.posterior.data_vars:
        np.testing.assert_array_equal(plain.posterior[v].values, shown_.posterior[v].values)
    np.testing.assert_array_equal(plain.sample_stats["diverging"].values, shown_.sample_stats["diverging"].values)

    states = [s.rstrip() for line in err.splitlines() for s in line.split("\r") if s.strip()]
    assert any("chinchilla law: warm-up  [" in s and f"/60 ({chains} chains)" in s for s in states)
    last = states[-1]
    # the last state counts every chain to its end, with all the sampling divergences of the draws
    assert last.startswith("chinchilla law: sampling [####################] 40/40") and f"({chains} chains)" in last
    assert int(re.search(r"(\d+) divergent$", last).group(1)) == int(shown_.sample_stats["diverging"].sum())
    assert err.endswith("\n")
