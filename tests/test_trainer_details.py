"""Trainer details from issue 11: one final evaluation, training-only tok/s, what a run records."""

import re
import time

import numpy as np
import pytest

from tests.conftest import write_toy_corpus

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from bayescale.train.data import load_corpus  # noqa: E402
from bayescale.train.model import ModelConfig, Transformer  # noqa: E402
from bayescale.train.trainer import TrainConfig, train_run  # noqa: E402

MODEL = dict(n_layer=1, d_model=16, n_head=2, context=16, vocab_size=300)
B, T = 8, 16  # sequences per step, context: 128 tokens per step
TRAIN = dict(batch_size=B, eval_tokens=256, threads=1, ckpt_seconds=1e9)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_toy_corpus(root / "txt")
    return load_corpus(str(root / "txt"), vocab_size=300, cache=root / "cache")


@pytest.fixture
def evals(monkeypatch):
    """Counts evaluations (the trainer's evaluate() starts with model.eval()); ``sleep`` slows each."""
    state = {"n": 0, "sleep": 0.0}

    def counting_eval(self):
        state["n"] += 1
        time.sleep(state["sleep"])
        return torch.nn.Module.eval(self)

    monkeypatch.setattr(Transformer, "eval", counting_eval)
    return state


def _run(corpus, runs, steps, log=None, **over):
    t = TrainConfig(**{**TRAIN, "tokens": steps * B * T, **over})
    return train_run(ModelConfig(**MODEL), t, corpus, runs, log=log)


def _curve_steps(runs, rec):
    lines = (runs / rec["run_id"] / "curve.csv").read_text().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines]


@pytest.mark.parametrize(("steps", "every", "want"), [
    (7, 3, [3, 7]),                  # 6 was a near-duplicate of the final evaluation at 7
    (61, 0, [12, 24, 36, 48, 61]),   # default interval 61 // 5 = 12: 60 and 61 before
    (60, 0, [12, 24, 36, 48, 60]),   # a multiple of the interval: unchanged
    (14, 5, [5, 10, 14]),            # 4 steps left >= half an interval: 10 stays
])
def test_final_evaluation_runs_once(corpus, tmp_path, evals, steps, every, want):
    rec = _run(corpus, tmp_path, steps, eval_every=every)
    assert rec["status"] == "completed"
    got = _curve_steps(tmp_path, rec)
    assert got == want
    assert evals["n"] == len(want)  # one evaluation per curve row, none thrown away
    assert rec["loss"] == float((tmp_path / rec["run_id"] / "curve.csv").read_text()
                                .splitlines()[-1].split(",")[-1])


def test_eval_due_schedule():
    from bayescale.train.trainer import eval_due, evals_after

    def due(steps, every):
        return [s for s in range(1, steps + 1) if eval_due(s, steps, every)]

    assert due(1953, 390) == [390, 780, 1170, 1560, 1953]  # the shipped 2-layer run's schedule
    assert due(5, 1) == [1, 2, 3, 4, 5]
    assert due(3, 10) == [3]
    for steps in range(1, 80):
        for every in range(1, 30):
            pts = due(steps, every)
            assert pts[-1] == steps and len(set(pts)) == len(pts)
            gaps = np.diff([0, *pts])
            # no evaluation is repeated a few steps later: gaps within [every/2, 1.5 every)
            assert all(g < 1.5 * every for g in gaps)
            assert all(2 * g >= every for g in gaps[1:]) or len(pts) == 1
            # the ETA's count of evaluations still to come
            for step in (0, 1, every - 1, every, steps // 2, steps - 1, steps):
                assert evals_after(step, steps, every) == sum(p > step for p in pts), (step, steps, every)


def test_logged_throughput_excludes_evaluation(corpus, tmp_path, evals):
    sleep = 0.5
    evals["sleep"] = sleep
    lines: list[str] = []
    rec = _run(corpus, tmp_path, 7, log=lines.append, eval_every=3)
    logged = [(int(m[1]), float(m[2].replace(",", "")))
              for m in (re.search(r" step (\d+)/7 .* ([\d,]+) tok/s", s) for s in lines) if m]
    assert [st for st, _ in logged] == _curve_steps(tmp_path, rec)
    prev = 0
    for st, tps in logged:
        # counting the evaluation's sleep alone would cap tok/s at tokens / sleep; the 1-3
        # training steps of this tiny model take milliseconds, so the real rate is far above it
        bound = (st - prev) * B * T / sleep
        assert tps > bound, (st, tps, bound, lines)
        prev = st
    assert rec["wall_seconds"] >= evals["n"] * sleep  # wall time still counts the evaluations


def test_record_names_what_bitwise_reproducibility_depends_on(corpus, tmp_path):
    a = _run(corpus, tmp_path / "a", 12, eval_every=4)
    b = _run(corpus, tmp_path / "b", 12, eval_every=4)
    # same machine, torch build and thread count: bit-identical
    assert a["loss"] == b["loss"]
    assert (tmp_path / "a" / a["run_id"] / "curve.csv").read_text() == (
        tmp_path / "b" / b["run_id"] / "curve.csv").read_text()
    env = a["env"]
    assert env["torch"] == torch.__version__ and env["threads"] == 1 and env["device"] == "cpu"
    import platform

    arch, cap = env["cpu"].split(" ")
    assert arch == platform.machine() and cap == torch.backends.cpu.get_cpu_capability()
