import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_toy_corpus

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from bayescale.errors import InputError  # noqa: E402
from bayescale.runs import load_runs  # noqa: E402
from bayescale.train.data import load_corpus  # noqa: E402
from bayescale.train.model import ModelConfig  # noqa: E402
from bayescale.train.trainer import TrainConfig, lr_at, train_run  # noqa: E402

MODEL = dict(n_layer=1, d_model=16, n_head=2, context=16, vocab_size=300)
TRAIN = dict(tokens=16 * 8 * 60, batch_size=8, eval_tokens=512, threads=1, ckpt_seconds=1e9)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_toy_corpus(root / "txt")
    return root


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return load_corpus(str(corpus_dir / "txt"), vocab_size=300, cache=corpus_dir / "cache")


def _run(corpus, runs, **over):
    t = TrainConfig(**{**TRAIN, **over})
    return train_run(ModelConfig(**MODEL), t, corpus, runs)


def test_schedule():
    assert lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_tiny_run_writes_valid_record(corpus, tmp_path):
    rec = _run(corpus, tmp_path)
    assert rec["status"] == "completed"
    run_dir = tmp_path / rec["run_id"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["curve.csv", "run.json"]
    on_disk = json.loads((run_dir / "run.json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert rec["D"] == 16 * 8 * 60 and rec["C"] == 6 * rec["N"] * rec["D"]
    assert rec["C_full"] > rec["C"] and 0 < rec["bits_per_byte"] < rec["loss"]
    df = load_runs(tmp_path)
    assert len(df) == 1 and df["loss"].iloc[0] == pytest.approx(rec["loss"])
    lines = (run_dir / "curve.csv").read_text().splitlines()
    assert lines[0] == "step,tokens,lr,train_loss,val_loss" and lines[-1].startswith("60,7680,")
    # the loss went down, and a rerun of a completed run is skipped
    assert float(lines[-1].split(",")[-1]) < float(lines[1].split(",")[-1])
    assert _run(corpus, tmp_path)["wall_seconds"] == rec["wall_seconds"]


def test_huge_lr_is_recorded_as_diverged(corpus, tmp_path):
    rec = _run(corpus, tmp_path, lr=1e12, grad_clip=1e30)
    assert rec["status"] == "diverged" and "non-finite" in rec["reason"]
    assert json.loads((tmp_path / rec["run_id"] / "run.json").read_text())["status"] == "diverged"


def test_budget_beyond_training_split_is_refused(corpus, tmp_path):
    with pytest.raises(InputError, match="at most"):
        _run(corpus, tmp_path, tokens=10**8)
    assert list(tmp_path.iterdir()) == []  # no empty run folder left behind


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(corpus, corpus_dir, tmp_path):
    ref = _run(corpus, tmp_path / "ref", tokens=16 * 8 * 150)
    runs = tmp_path / "killed"
    code = (
        "import sys, os\n"
        "from pathlib import Path\n"
        "from bayescale.train.data import load_corpus\n"
        "from bayescale.train.model import ModelConfig\n"
        "from bayescale.train.trainer import TrainConfig, train_run\n"
        f"c = load_corpus({str(corpus_dir / 'txt')!r}, vocab_size=300, "
        f"cache=Path({str(corpus_dir / 'cache')!r}))\n"
        f"t = TrainConfig(**{ {**TRAIN, 'tokens': 16 * 8 * 150, 'ckpt_steps': 5}!r})\n"
        f"train_run(ModelConfig(**{MODEL!r}), t, c, {str(runs)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    ckpt = runs / ref["run_id"] / "ckpt.pt"
    deadline = time.time() + 60
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # let it get a few steps past the checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    proc.stderr.close()
    assert json.loads((runs / ref["run_id"] / "run.json").read_text())["status"] == "running"
    assert ckpt.exists()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step < 150
    resumed = _run(corpus, runs, tokens=16 * 8 * 150)
    assert resumed["status"] == "completed"
    assert resumed["loss"] == ref["loss"]
    assert not ckpt.exists()
    assert (runs / ref["run_id"] / "curve.csv").read_text() == (
        tmp_path / "ref" / ref["run_id"] / "curve.csv").read_text()


def test_cli_train_json(corpus_dir, tmp_path, capsys):
    import argparse

    from bayescale.train.cli import add_commands

    ap = argparse.ArgumentParser()
    add_commands(ap.add_subparsers())
    os.environ["BAYESCALE_CACHE"] = str(corpus_dir / "cache")
    try:
        args = ap.parse_args(["train", "--data", str(corpus_dir / "txt"), "--vocab-size", "300",
                              "--n-layer", "1", "--d-model", "16", "--n-head", "2", "--context",
                              "16", "--tokens", "2048", "--batch-size", "8", "--eval-tokens",
                              "256", "--runs", str(tmp_path), "--json", "--threads", "1",
                              "--micro-batch", "4"])
        assert args.func(args) == 0
    finally:
        del os.environ["BAYESCALE_CACHE"]
    out = capsys.readouterr().out
    rec = json.loads(out)
    assert rec["status"] == "completed" and out.count("\n") == 1
    assert Path(tmp_path, rec["run_id"], "run.json").exists()
    assert rec["config"]["train"]["micro_batch"] == 4 and rec["config"]["train"]["batch_size"] == 8


def test_lock_keeps_a_second_worker_off_a_live_run(corpus, tmp_path):
    import socket

    from bayescale.train.trainer import RunBusy, run_id_for

    run_dir = tmp_path / run_id_for(ModelConfig(**MODEL), TrainConfig(**TRAIN))
    run_dir.mkdir()
    (run_dir / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}")  # a live process
    with pytest.raises(RunBusy, match="being trained by process"):
        _run(corpus, tmp_path)
    assert not (run_dir / "run.json").exists()  # nothing written while another worker holds it

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".lock").write_text(f"{socket.gethostname()} {dead.pid}")  # stale: owner exited
    rec = _run(corpus, tmp_path)
    assert rec["status"] == "completed"
    assert not (run_dir / ".lock").exists()  # released at the end


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one(corpus_dir, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo on CPU) gives one record and the single-process loss."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this Python")
    args = ["train", "--data", str(corpus_dir / "txt"), "--vocab-size", "300", "--n-layer", "1",
            "--d-model", "16", "--n-head", "2", "--context", "16", "--tokens", str(16 * 8 * 60),
            "--batch-size", "8", "--eval-tokens", "512", "--threads", "1", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "bayescale.cli",
                          *args, "--runs", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "bayescale.cli", *args, "--runs", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    r2, r1 = json.loads(ddp.stdout), json.loads(one.stdout)  # exactly one JSON document each
    assert r2["env"]["world_size"] == 2 and r1["env"]["world_size"] == 1
    assert r2["D"] == r1["D"] and r2["status"] == "completed"
    # same global batch, gradients averaged across ranks: equal up to float summation order
    assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-3)


def test_sweep_eta_from_timed_runs():
    from bayescale.train.model import flops_per_token
    from bayescale.train.sweep import _eta

    def entry(d, tokens):
        return {"model": ModelConfig(n_layer=2, d_model=d, n_head=2, context=64, vocab_size=512),
                "train": TrainConfig(tokens=tokens)}

    small, big = entry(32, 10**6), entry(128, 10**6)
    f_s, f_b = flops_per_token(small["model"])["full"], flops_per_token(big["model"])["full"]
    assert _eta([big], []) == "?"
    # seconds per token = 1e-12 * f^0.7 exactly: the fit recovers it and predicts the big run
    timed = [(f, 1e-8 * f**0.7) for f in (f_s, 2 * f_s, 4 * f_s)]
    assert float(_eta([big], timed)[:-1]) == pytest.approx(1e6 * 1e-8 * f_b**0.7, rel=0.01)
    # one timed size: proportional to FLOPs
    assert float(_eta([big], [(f_s, 2e-6)])[:-1]) == pytest.approx(1e6 * 2e-6 * f_b / f_s, rel=0.01)


@pytest.mark.parametrize("micro", [2, 3])
def test_micro_batches_accumulate_to_the_whole_batch_step(corpus, tmp_path, micro):
    """Gradient accumulation is the same optimizer step: 8 sequences as 4 x 2 or as 3 + 3 + 2
    (uneven shares weighted by their size) reach the whole-batch loss up to float sum order."""
    whole = _run(corpus, tmp_path / "whole")
    acc = _run(corpus, tmp_path / "acc", micro_batch=micro)
    assert acc["status"] == whole["status"] == "completed"
    assert acc["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert acc["loss"] != pytest.approx(whole["loss"] * 1.01, rel=1e-3)  # a real comparison
    def train_losses(runs, rec):
        rows = (runs / rec["run_id"] / "curve.csv").read_text().splitlines()[1:]
        return [float(r.split(",")[3]) for r in rows]

    a, w = train_losses(tmp_path / "acc", acc), train_losses(tmp_path / "whole", whole)
    assert len(a) == len(w) >= 2 and a == pytest.approx(w, rel=1e-5)  # the logged training losses are batch means too
    assert whole["throughput"]["tokens_per_second"] > 0 and "mfu" not in whole["throughput"]


def test_negative_micro_batch_is_refused(corpus, tmp_path):
    with pytest.raises(InputError, match="micro-batch"):
        _run(corpus, tmp_path, micro_batch=-1)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_attention_kernel_choice(corpus, tmp_path):
    """``--attention math`` forces PyTorch's reference kernel: on the CPU it is the kernel auto
    picks for these shapes, so the run is the same to float rounding; a GPU-only kernel is
    refused on the CPU before anything is written, naming the field."""
    auto = _run(corpus, tmp_path / "auto")
    math_ = _run(corpus, tmp_path / "math", attention="math")
    assert math_["status"] == "completed" and math_["loss"] == pytest.approx(auto["loss"], rel=1e-4)
    for name in ("cudnn", "flash", "efficient"):
        with pytest.raises(InputError, match=f"field 'attention'.*{name} attention kernel needs CUDA"):
            _run(corpus, tmp_path / name, attention=name)
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())
    with pytest.raises(InputError, match="expected one of auto, flash, cudnn, efficient, math"):
        _run(corpus, tmp_path / "bad", attention="fast")


def test_datasheet_peaks_by_gpu_name():
    from bayescale.train.trainer import peak_flops_for

    assert peak_flops_for("NVIDIA H200") == 989.4e12
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for("NVIDIA GH200 480GB") == 989.4e12
    assert peak_flops_for("NVIDIA L4") == 121e12
    assert peak_flops_for("NVIDIA GeForce RTX 4090") is None  # unknown: no MFU rather than a wrong one
