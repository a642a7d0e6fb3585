"""The command line as a new user meets it: help that gives every default, nothing overwritten by
surprise, progress on a terminal only, and --quiet."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from bayescale.cli import build_parser, main

from .conftest import TRUE_CHINCHILLA, simulate

# --------------------------------------------------------------------------------------------
# help


def _commands(parser: argparse.ArgumentParser):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            yield from a.choices.items()


def _default_shown(default, text: str) -> bool:
    """Whether ``text`` states ``default``: a number equal to it, or its words, after 'default'."""
    after = text[text.lower().index("default"):]
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        nums = re.findall(r"[-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?", after)
        return any(float(n) == float(default) for n in nums)
    words = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    return words in after


def test_every_option_says_what_it_does_and_its_default():
    parser = build_parser()
    problems = []
    commands = dict(_commands(parser))
    assert {"fit", "summary", "optimal", "predict", "check", "train", "sweep"} <= set(commands)
    for name, sp in commands.items():
        formatter = sp._get_formatter()
        for a in sp._actions:
            if a.option_strings and set(a.option_strings) <= {"-h", "--help"}:
                continue
            where = f"{name} {'/'.join(a.option_strings) or a.dest}"
            if not a.help or a.help is argparse.SUPPRESS or not a.help.strip():
                problems.append(f"{where}: no help")
                continue
            text = formatter._expand_help(a)
            d = a.default
            if a.option_strings and d not in (None, False, argparse.SUPPRESS):
                if "default" not in text.lower() or not _default_shown(d, text):
                    problems.append(f"{where}: default {d!r} not shown in {text!r}")
    assert not problems, "\n".join(problems)


def test_rendered_help_appends_defaults_once():
    fit = dict(_commands(build_parser()))["fit"]
    text = " ".join(fit.format_help().split())  # unwrapped
    assert "posterior draws kept per chain (default: 1000)" in text
    assert "Student-t degrees of freedom (default 4)" in text  # said by the text: not repeated
    assert "(default: 4.0)" not in text
    assert "--force" in text and "--quiet" in text
    assert "--skip-invalid load the valid runs and report the invalid ones (default: refuse the whole load)" in text
    # store_true options and options without a default get nothing appended
    assert "print one JSON object on stdout (default" not in text


def test_every_command_that_logs_takes_quiet():
    commands = dict(_commands(build_parser()))
    for name in ("fit", "optimal", "predict", "check", "train", "sweep"):
        opts = {s for a in commands[name]._actions for s in a.option_strings}
        assert {"-q", "--quiet"} <= opts, name


# --------------------------------------------------------------------------------------------
# nothing overwritten by surprise

TINY = ["--law", "chinchilla", "--chains", "2", "--warmup", "40", "--draws", "30"]


@pytest.fixture
def table(tmp_path):
    src = tmp_path / "sim.csv"
    simulate("chinchilla", TRUE_CHINCHILLA, 30, 0.02, 7).to_csv(src, index=False)
    return src


def _fit(src, out, *extra):
    return main(["fit", str(src), *TINY, "--out", str(out), *extra])


def _refused(capsys, argv, out, before: bytes, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(out) in err and "--force" in err
    for w in words:
        assert w in err, (w, err)
    assert out.read_bytes() == before  # the old posterior is untouched
    return err


@pytest.mark.slow
def test_refit_same_command_replaces_other_fit_refuses(table, tmp_path, capsys, monkeypatch):
    import bayescale as bs
    from bayescale.store import metadata

    monkeypatch.delenv("BAYESCALE_PROGRESS", raising=False)
    out = tmp_path / "m.nc"
    assert _fit(table, out) == 0
    capsys.readouterr()
    first = bs.load_posterior(out)
    meta = metadata(first)
    assert len(meta["data_sha256"]) == 64
    alpha = first.posterior["alpha"].values.copy()

    # the same command again reproduces the file, so it may replace it; with progress forced on (as
    # on a terminal) it shows the sampler's stages and still gives the same draws
    monkeypatch.setenv("BAYESCALE_PROGRESS", "1")
    assert _fit(table, out) == 0
    err = capsys.readouterr().err
    frames = [s.strip() for line in err.splitlines() for s in line.split("\r") if s.strip()]
    assert any(f.startswith("chinchilla law: warm-up ") for f in frames)
    assert any(f.startswith("chinchilla law: sampling [####################] 30/30 (2 chains)") for f in frames)
    np.testing.assert_array_equal(bs.load_posterior(out).posterior["alpha"].values, alpha)
    monkeypatch.delenv("BAYESCALE_PROGRESS")
    # `runs/` and `runs` are the same source
    assert _fit(f"{table}/".rstrip("/"), out) == 0
    capsys.readouterr()

    before = out.read_bytes()
    _refused(capsys, ["fit", str(table), *TINY, "--out", str(out), "--seed", "1"], out, before, "--seed 0, now 1")
    _refused(capsys, ["fit", str(table), *TINY, "--out", str(out), "--filter", "N > 0"], out, before,
             "--filter none, now N > 0")
    law = [*TINY]
    law[1] = "kaplan"
    _refused(capsys, ["fit", str(table), *law, "--out", str(out)], out, before, "--law chinchilla, now kaplan")
    _refused(capsys, ["fit", str(table), *TINY, "--draws", "31", "--out", str(out)], out, before, "--draws 30, now 31")
    # other data at the same path: caught by the fingerprint of the loaded table
    df = simulate("chinchilla", TRUE_CHINCHILLA, 30, 0.02, 7)
    df.loc[3, "loss"] *= 1.01
    df.to_csv(table, index=False)
    _refused(capsys, ["fit", str(table), *TINY, "--out", str(out)], out, before, "other data")
    # --json: the refusal is one JSON object on stdout
    assert main(["fit", str(table), *TINY, "--out", str(out), "--json"]) == 2
    cap = capsys.readouterr()
    obj = json.loads(cap.out)
    assert obj["file"] == str(out) and obj["field"] == "--out" and "other data" in obj["error"]
    assert out.read_bytes() == before

    # --force replaces it (and --quiet leaves stderr empty even with progress forced on)
    monkeypatch.setenv("BAYESCALE_PROGRESS", "1")
    assert _fit(table, out, "--seed", "1", "--force", "--quiet") == 0
    cap = capsys.readouterr()
    assert cap.err == "" and "fitted to 30 runs" in cap.out
    new = metadata(bs.load_posterior(out))
    assert new["config"]["seed"] == 1 and new["data_sha256"] != meta["data_sha256"]


@pytest.mark.slow
def test_default_output_path_is_protected_and_old_files_refused(table, tmp_path, capsys, monkeypatch):
    import bayescale as bs
    from bayescale.store import metadata

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BAYESCALE_PROGRESS", raising=False)
    assert main(["fit", str(table), *TINY, "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: nothing on stderr for a successful fit
    out = tmp_path / "models" / "sim-chinchilla.nc"
    before = out.read_bytes()
    _refused(capsys, ["fit", str(table), *TINY, "--seed", "2"], out.relative_to(tmp_path), before, "--seed 0, now 2")
    # a bad --prior is the error a user sees first, not the file it would replace
    assert main(["fit", str(table), *TINY, "--prior", "alpha=Wibble(1)"]) == 2
    err = capsys.readouterr().err
    assert "Wibble" in err and "--force" not in err and out.read_bytes() == before

    # a posterior written before fingerprints: refused unless --force, saying why
    idata = bs.load_posterior(out)
    meta = metadata(idata)
    del meta["data_sha256"]
    idata.posterior.attrs["bayescale"] = json.dumps(meta)
    old = tmp_path / "old.nc"
    bs.save_posterior(idata, old)
    err = _refused(capsys, ["fit", str(table), *TINY, "--out", str(old)], old, old.read_bytes(), "fingerprint")
    assert "older bayescale" in err
    assert main(["fit", str(table), *TINY, "--out", str(old), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(old)
    assert "data_sha256" in metadata(bs.load_posterior(old))


def test_overwrite_check_compares_fits(tmp_path):
    """The comparison itself, on metadata: what counts as the same fit."""
    import bayescale as bs
    from bayescale.cli import _refit_differences
    from bayescale.inference import run_metadata

    runs = simulate("chinchilla", TRUE_CHINCHILLA, 12, 0.02, 3)
    runs["C"] = 6 * runs["N"] * runs["D"]
    cfg = bs.FitConfig(law="chinchilla", seed=0)
    as_file = lambda m: json.loads(json.dumps(m))  # noqa: E731
    old = as_file(run_metadata(runs, cfg, source="runs/", filter=None))
    assert _refit_differences(old, as_file(run_metadata(runs, cfg, source="runs", filter=None))) == []
    new = run_metadata(runs, bs.FitConfig(law="chinchilla", seed=0, priors=(("alpha", "LogNormal(-1, 0.5)"),)),
                       source="runs", filter=None)
    assert _refit_differences(old, as_file(new)) == ['--prior none, now [["alpha", "LogNormal(-1, 0.5)"]]']
    other = runs.copy()
    other.loc[0, "N"] *= 1 + 1e-12  # any change of a number fitted is other data
    assert _refit_differences(old, as_file(run_metadata(other, cfg, source="runs", filter=None))) == [
        "other data (the table loaded from the same source has changed)"]
    grouped = runs.assign(group=["a", "b"] * 6)
    assert run_metadata(grouped, cfg, source="runs", filter=None)["data_sha256"] != old["data_sha256"]
    assert _refit_differences(old, as_file(run_metadata(runs, cfg, source="other.csv", filter="N > 0"))) == [
        "source runs/, now other.csv", "--filter none, now N > 0"]


@pytest.mark.slow
def test_train_quiet_prints_nothing_on_stderr(tmp_path, capsys):
    pytest.importorskip("torch")
    from .conftest import write_toy_corpus

    write_toy_corpus(tmp_path / "src")
    argv = ["train", "--data", str(tmp_path / "src"), "--tokens", "2e4", "--n-layer", "1", "--d-model", "16",
            "--n-head", "2", "--context", "16", "--vocab-size", "300", "--threads", "1"]
    assert main([*argv, "--runs", str(tmp_path / "a"), "-q"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and cap.out == ""
    assert main([*argv, "--runs", str(tmp_path / "b")]) == 0
    assert "step 156/156" in capsys.readouterr().err  # without -q the trainer logs its steps
    rec = json.loads((tmp_path / "a" / "l1-d16-h2-c16-t2e4-s0" / "run.json").read_text())
    assert rec["status"] == "completed"
