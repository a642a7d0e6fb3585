"""Train one run to its own token budget, crash-safe, and write ``run.json`` + ``curve.csv``.

Rules across sizes (used when ``batch_size`` / ``lr`` are left at 0):

- batch size (sequences) = the largest power of two not above ``D / (4000 context)``,
  clipped to [8, 1024]: a run takes at least ~2000 optimizer steps unless its batch is
  already at the floor of 8 sequences. Small models are far below their critical batch size,
  so at a fixed token budget fewer, larger steps cost loss: on the default corpus (BPE 512,
  context 64, 2 layers x 64, D = 1e6) batches of 4, 8, 16 and 32 sequences gave final losses
  3.48, 3.49, 3.61 and 4.02 nats, and an earlier rule that gave every run ~200 steps lost
  0.3-0.5 nats at D >= 3e5. At GPT-2 scale (context 1024, D = 2.5e9) the rule gives 512
  sequences, 0.5M tokens per step.
- peak learning rate = ``min(1e-2, 3e-3 * 128 / d_model)`` (muP-like 1/width scaling).
- warm-up over 5% of the steps (at least 1), then cosine decay to 10% of the peak at the last
  step: the schedule length is the run's own token budget, so its final loss is valid.

Gradient accumulation: ``micro_batch`` splits each rank's share of a step into forward/backward
passes of that many sequences, with the gradients summed before the one optimizer step. The step
is the same mathematically (the mean loss over the batch), so a run may resume with another
``micro_batch``; only the order of floating-point sums changes. At GPT-2 scale the rule's 512
sequences of 1024 tokens hold about 200 GB of activations and logits, far beyond one GPU: there
``micro_batch`` is what makes the rule usable.

Data order: the training split is cut into disjoint ``context + 1`` windows, shuffled once by
``seed``; step ``i`` takes the next ``batch_size`` windows. No run sees a training token twice,
and the batch at any step is a function of (seed, step) alone, so a resumed run is exact.

Evaluation: on the fixed held-out set every ``eval_every`` steps and once after the last step.
A scheduled evaluation less than half an interval before the last step is left to the final
one (1953 steps at the default 390 used to evaluate at 1950 and again at 1953), so consecutive
evaluations are between 0.5 and 1.5 intervals apart. The logged tok/s is training throughput:
time spent evaluating is left out of it (and counted in the ETA and in ``wall_seconds``).

Reproducibility: the same configuration and seed on the same machine, with the same torch build
and the same CPU thread count (``threads``), gives bit-identical losses and curves, resumed or
not. Across machines it does not: a different CPU kernel set (AVX2 vs AVX-512, another BLAS or
oneDNN build), torch version or thread count changes the order of floating-point sums, and the
losses then agree to about 1e-4 relative, not bitwise (the shipped ``l2-d64-h2-c64-t1e6-s0``
run: 3.50377 on the machine that made it, 3.50383 re-run on another). CUDA runs (bf16
autocast, TF32 matmuls, kernels that need not be deterministic) are not promised to be bitwise
reproducible even on one GPU. ``env`` in ``run.json`` records the device, CPU kernel set, torch
build and threads a run was made with.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import InputError
from ..runs import RUN_SCHEMA, write_run_record
from .data import Corpus, eval_windows, train_windows
from .model import ModelConfig, Transformer, flops_per_token, non_embedding_params

CURVE_HEADER = ["step", "tokens", "lr", "train_loss", "val_loss"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train one run; 0 means "use the rule in the module docstring"."""

    tokens: int = 200_000  # token budget D (rounded down to whole steps)
    batch_size: int = 0  # sequences per optimizer step (global, across ranks); 0: rule
    lr: float = 0.0  # peak learning rate; 0: rule
    warmup_frac: float = 0.05  # fraction of steps for linear warm-up
    min_lr_frac: float = 0.1  # cosine decays to this fraction of the peak
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm
    seed: int = 0  # init, data order and dropout
    eval_tokens: int = 32_768  # size of the fixed held-out set (targets)
    eval_every: int = 0  # steps between evaluations; 0: about 5 per run (always once at the end)
    ckpt_seconds: float = 180.0  # checkpoint at most this often (and on SIGTERM/SIGINT)
    ckpt_steps: int = 0  # also checkpoint every this many steps (0: off; used by tests)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the model (CUDA)
    attention: str = "auto"  # scaled-dot-product attention kernel: auto | flash | cudnn | efficient | math
    micro_batch: int = 0  # sequences per forward/backward pass on each rank; 0: the whole batch
    threads: int = 0  # CPU threads for torch; 0: leave torch's default (bitwise results need the same count)


def resolve_batch_size(tokens: int, context: int) -> int:
    b = tokens / (4000 * context)
    return int(min(1024, max(8, 2 ** math.floor(math.log2(max(b, 1.0))))))


def resolve_lr(d_model: int) -> float:
    return min(1e-2, 3e-3 * 128 / d_model)


def lr_at(step: int, total: int, peak: float, warmup: int, min_frac: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine to ``min_frac * peak`` at ``total - 1``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - 1 - warmup)
    p = min(1.0, (step - warmup) / span)
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def eval_due(step: int, steps: int, every: int) -> bool:
    """Evaluate after optimizer step ``step`` (1-based) of ``steps``, evaluating every ``every``?

    Always after the last step; a scheduled evaluation less than half an interval before it is
    skipped, so the final evaluation is never preceded by a near-duplicate a few steps earlier.
    """
    if step == steps:
        return True
    return step % every == 0 and 2 * (steps - step) >= every


def evals_after(step: int, steps: int, every: int) -> int:
    """How many evaluations :func:`eval_due` schedules after step ``step`` (the final one included)."""
    if step >= steps:
        return 0
    last_scheduled = steps - (every + 1) // 2  # the latest s with 2 * (steps - s) >= every
    return max(0, last_scheduled // every - step // every) + 1


def format_tokens(n: float) -> str:
    """Compact token count for run ids: 2000000 -> '2e6', 250000 -> '2.5e5'."""
    e = int(math.floor(math.log10(n)))
    m = n / 10**e
    ms = f"{m:.2f}".rstrip("0").rstrip(".")
    return f"{ms}e{e}"


def run_id_for(m: ModelConfig, t: TrainConfig) -> str:
    shape = f"l{m.n_layer}-d{m.d_model}-h{m.n_head}-c{m.context}"
    return f"{shape}-t{format_tokens(t.tokens)}-s{t.seed}"


class _Stop(Exception):
    pass


def _dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (1 process without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise InputError(f"expected auto, cpu or cuda, got {name!r}", field="device")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but is not available", field="device")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _read_curve(path: Path) -> list[list[Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[1:]


def _write_curve(path: Path, rows: list[list[Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CURVE_HEADER)
        w.writerows(rows)
    os.replace(tmp, path)


class RunBusy(InputError):
    """Another live process is training this run (its ``.lock`` file names the process)."""


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Any:
    """Hold ``run_dir/.lock`` (host and pid) while training, so two workers never train one run.

    A lock left by a process that no longer exists on this host is stale and taken over; a lock
    from another host is respected (delete it by hand if that machine is gone).
    """
    import socket

    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            host, _, pid = lock.read_text().strip().rpartition(" ")
            alive = True
            if host == socket.gethostname() and pid.isdigit():
                try:
                    os.kill(int(pid), 0)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    pass
            if alive:
                raise RunBusy(f"is being trained by process {pid} on {host or '?'}; if that process "
                              "is gone, delete this file and re-run", file=str(lock)) from None
            lock.unlink(missing_ok=True)  # stale: its owner died without cleaning up
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created and not any(run_dir.iterdir()):  # refused before writing anything: leave no trace
            run_dir.rmdir()


#: ``--attention`` choices: PyTorch's own pick (auto) or one scaled-dot-product attention kernel
ATTENTION_KERNELS = ("auto", "flash", "cudnn", "efficient", "math")


def attention_backend(name: str, device: torch.device) -> Any:
    """The ``torch.nn.attention.SDPBackend`` named ``name`` (None for auto), checked against the device."""
    if name not in ATTENTION_KERNELS:
        raise InputError(f"expected one of {', '.join(ATTENTION_KERNELS)}, got {name!r}", field="attention")
    if name == "auto":
        return None
    if name != "math" and device.type != "cuda":
        raise InputError(f"the {name} attention kernel needs CUDA; on the CPU use auto or math",
                         field="attention")
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def autocast_for(device: torch.device, attention: str = "auto") -> Any:
    """The training precision context: bf16 autocast on CUDA, full precision elsewhere.

    With ``attention`` other than auto, attention runs on that kernel alone (an error, not a
    silent fallback, where the kernel cannot take the inputs).
    """
    stack = contextlib.ExitStack()
    if device.type == "cuda":
        stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
    backend = attention_backend(attention, device)
    if backend is not None:
        from torch.nn.attention import sdpa_kernel

        stack.enter_context(sdpa_kernel(backend))
    return stack


def optimizer_step(train_model: torch.nn.Module, params: list[torch.Tensor], opt: torch.optim.Optimizer,
                   xy: torch.Tensor, *, micro_batch: int = 0, grad_clip: float = 1.0,
                   autocast=contextlib.nullcontext) -> torch.Tensor:
    """One optimizer step on ``xy`` (``B x (T+1)`` token ids), in micro-batches of ``micro_batch``.

    Returns the batch's mean training loss as a 0-d tensor on the device (no host sync here).
    Each micro-batch's loss is weighted by its share of the batch, so the summed gradient is the
    gradient of the batch mean whatever the split; under DDP, gradients are all-reduced on the
    last micro-batch only.
    """
    b = xy.shape[0]
    m = micro_batch if 0 < micro_batch < b else b
    chunks = xy.split(m)
    total = torch.zeros((), device=xy.device, dtype=torch.float32)
    opt.zero_grad(set_to_none=True)
    for i, c in enumerate(chunks):
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext() if last or not hasattr(train_model, "no_sync") else train_model.no_sync()
        with sync:
            with autocast():
                _, loss = train_model(c[:, :-1], c[:, 1:])
            w = c.shape[0] / b
            (loss * w).backward()
        total += loss.detach().float() * w
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return total


#: Dense bf16 tensor-core peak FLOP/s by the vendors' datasheets (no sparsity), for MFU; the
#: SXM parts unless the name says otherwise.
PEAK_BF16 = {"H100": 989.4e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989.4e12,
             "GH200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def peak_flops_for(name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``name`` (as CUDA reports it), or None if unknown."""
    padded = f" {name} ".replace("-", " ")
    for key in sorted(PEAK_BF16, key=len, reverse=True):  # the most specific name first
        if f" {key} " in padded:
            return PEAK_BF16[key]
    return None


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak (:func:`peak_flops_for`); None on CPUs and unknown GPUs."""
    if device.type != "cuda":
        return None
    return peak_flops_for(torch.cuda.get_device_name(device))


def throughput(intervals: list[tuple[int, float]], fpt: dict[str, float],
               device: torch.device) -> dict[str, Any]:
    """Training throughput of a run, evaluation excluded, with model FLOP utilisation on GPUs.

    The first logged interval holds compilation and warm-up; with two or more it is left out, so
    the figure is the steady rate. MFU counts ``C_full`` FLOPs per token (attention and the
    output projection included; :func:`flops_per_token`) against the datasheet peak.
    """
    steady = intervals[1:] if len(intervals) > 1 else intervals
    tok, sec = sum(t for t, _ in steady), sum(s for _, s in steady)
    tps = tok / max(sec, 1e-9)
    out: dict[str, Any] = {"tokens_per_second": round(tps, 1), "tokens_timed": int(tok),
                           "first_interval_left_out": len(intervals) > 1,
                           "model_flops_per_second": tps * fpt["full"]}
    peak = peak_flops(device)
    if peak:
        out["peak_flops"] = peak
        out["mfu"] = round(tps * fpt["full"] / peak, 4)
    return out


def train_run(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    corpus: Corpus,
    runs_dir: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    log=None,
) -> dict[str, Any]:
    """Train one run (or resume it from ``ckpt.pt``) and return its run record.

    A run whose ``run.json`` already says ``completed`` is not trained again; its record is
    returned. While it trains, ``<run>/.lock`` keeps other workers (sweep shards, array jobs
    given overlapping entries) off it: they get :class:`RunBusy`. Progress lines go to ``log``
    (a callable taking a string; None for silence).
    """
    rank = _dist_info()[0]
    run_id = run_id or run_id_for(model_cfg, train_cfg)
    if rank != 0:
        return _train_run(model_cfg, train_cfg, corpus, runs_dir, run_id=run_id, log=log)
    with _run_lock(Path(runs_dir) / run_id):
        return _train_run(model_cfg, train_cfg, corpus, runs_dir, run_id=run_id, log=log)


def _train_run(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    corpus: Corpus,
    runs_dir: str | os.PathLike[str],
    *,
    run_id: str,
    log=None,
) -> dict[str, Any]:
    t_start = time.time()
    rank, local_rank, world = _dist_info()
    master = rank == 0
    say = (log if (log and master) else (lambda s: None))
    if model_cfg.vocab_size < corpus.vocab_size:
        raise InputError(f"vocab_size {model_cfg.vocab_size} < the corpus's {corpus.vocab_size}",
                         field="vocab_size")
    T = model_cfg.context
    B = train_cfg.batch_size or resolve_batch_size(train_cfg.tokens, T)
    if B % world:
        raise InputError(f"batch size {B} is not divisible by WORLD_SIZE={world}",
                         field="batch_size")
    if train_cfg.micro_batch < 0:
        raise InputError(f"expected a micro-batch of 0 (the whole batch) or more sequences, got "
                         f"{train_cfg.micro_batch}", field="micro_batch")
    lr_peak = train_cfg.lr or resolve_lr(model_cfg.d_model)
    steps = train_cfg.tokens // (B * T)
    if steps < 1:
        raise InputError(f"token budget {train_cfg.tokens} is below one step ({B * T} tokens)",
                         field="tokens")
    n_win = train_windows(corpus.train.size, T)
    if steps * B > n_win:
        raise InputError(
            f"token budget {train_cfg.tokens} needs {steps * B} windows of {T + 1} tokens but the "
            f"training split has {n_win} ({corpus.train.size} tokens); each token is used at most "
            "once, so lower --tokens or bring a larger corpus", field="tokens")
    D = steps * B * T
    warmup = max(1, round(train_cfg.warmup_frac * steps))
    eval_every = train_cfg.eval_every or max(1, steps // 5)

    run_dir = Path(runs_dir) / run_id
    run_json, curve_path = run_dir / "run.json", run_dir / "curve.csv"
    ckpt_path = run_dir / "ckpt.pt"
    import json

    if run_json.exists():
        old = json.loads(run_json.read_text())
        if old.get("status") == "completed":
            say(f"[{run_id}] already completed (loss {old.get('loss'):.4f}); skipping")
            return old

    device = _pick_device(train_cfg.device, local_rank)
    attention_backend(train_cfg.attention, device)  # an unusable kernel is refused before any step
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    ddp = world > 1
    if ddp:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True

    torch.manual_seed(train_cfg.seed)
    model = Transformer(model_cfg).to(device)
    N = model.num_params(non_embedding=True)
    assert N == non_embedding_params(model_cfg)
    N_total = model.num_params(non_embedding=False)
    fpt = flops_per_token(model_cfg)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "wpe" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train_cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr_peak, betas=(train_cfg.beta1, train_cfg.beta2),
        fused=device.type == "cuda",
    )
    params = list(model.parameters())
    train_model: torch.nn.Module = model
    if train_cfg.compile:
        train_model = torch.compile(model)  # type: ignore[assignment]
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            train_model, device_ids=[local_rank] if device.type == "cuda" else None)
    autocast = partial(autocast_for, device, train_cfg.attention)

    # data order: a permutation of disjoint windows, a function of the seed alone
    perm = np.random.default_rng(train_cfg.seed).permutation(n_win)[: steps * B]
    ev = torch.from_numpy(eval_windows(corpus.val, T, train_cfg.eval_tokens))
    ev_targets = ev[:, 1:].numpy()

    config = {
        "model": model_cfg.to_dict(),
        "train": {**asdict(train_cfg), "batch_size": B, "lr": lr_peak, "steps": steps,
                  "warmup_steps": warmup, "world_size": world,
                  "schedule": "linear warm-up, cosine to min_lr_frac at the last step",
                  "embeddings": "tied input/output"},
        "data": {**corpus.info, "eval_tokens": int(ev_targets.size),
                 "order": "disjoint context+1 windows, shuffled by seed, each used once"},
    }
    # what bitwise reproducibility depends on (see the module docstring)
    env = {"device": device.type, "torch": torch.__version__, "bayescale": __version__,
           "threads": torch.get_num_threads(), "world_size": world, "cpu": _cpu_kind()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    record: dict[str, Any] = {
        "schema": RUN_SCHEMA, "run_id": run_id, "status": "running", "group": corpus.name,
        "N": N, "N_total": N_total, "D": D, "C": fpt["6N"] * D, "C_full": fpt["full"] * D,
        "loss": None, "bits_per_byte": None, "seed": train_cfg.seed,
        "config": config, "env": env, "wall_seconds": 0.0,
    }

    # resume
    step, curve, wall_before, resumed_acc = 0, [], 0.0, (0.0, 0)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck["config"] != json.loads(json.dumps({"model": config["model"],
                                                  "train": _resume_key(config["train"])})):
            raise InputError("ckpt.pt was made with a different configuration; remove the run "
                             "folder or change --runs", file=str(ckpt_path))
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in ck:
            torch.cuda.set_rng_state(ck["rng_cuda"], device)
        step, wall_before = int(ck["step"]), float(ck["wall_seconds"])
        resumed_acc = (float(ck.get("train_loss_acc", 0.0)), int(ck.get("n_acc", 0)))
        curve = _read_curve(curve_path)
        curve = [r for r in curve if int(r[0]) <= step]
        say(f"[{run_id}] resuming at step {step}/{steps}")
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_record(run_dir, record)

    def save_ckpt() -> None:
        if not master:
            return
        ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
              "train_loss_acc": train_loss_acc, "n_acc": n_acc,
              "rng_cpu": torch.get_rng_state(), "wall_seconds": wall_before + time.time() - t_start,
              "config": json.loads(json.dumps({"model": config["model"],
                                               "train": _resume_key(config["train"])}))}
        if device.type == "cuda":
            ck["rng_cuda"] = torch.cuda.get_rng_state(device)
        tmp = ckpt_path.with_suffix(".pt.tmp")
        torch.save(ck, tmp)
        os.replace(tmp, ckpt_path)
        _write_curve(curve_path, curve)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        tot, n = 0.0, 0
        for i in range(0, ev.shape[0], 64):
            x = ev[i:i + 64].to(device)
            with autocast():
                _, loss = model(x[:, :-1], x[:, 1:])
            tot += float(loss) * x[:, 1:].numel()
            n += x[:, 1:].numel()
        model.train()
        return tot / n

    stop = {"sig": 0}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["sig"] = signum

    old_handlers = {}
    if master and _main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            old_handlers[s] = signal.signal(s, on_signal)

    B_local = B // world
    last_ckpt = time.time()
    t_log, tok_log = time.time(), 0  # training time and tokens since the last log line
    intervals: list[tuple[int, float]] = []  # (tokens, training seconds) per logged interval
    train_loss_acc, n_acc = resumed_acc
    status, reason = "completed", None
    try:
        model.train()
        while step < steps:
            lr = lr_at(step, steps, lr_peak, warmup, train_cfg.min_lr_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            # dropout RNG is a function of (seed, step) so that a resumed run is exact
            torch.manual_seed(train_cfg.seed * 1_000_003 + step)
            idx = perm[step * B + rank * B_local: step * B + (rank + 1) * B_local]
            starts = idx.astype(np.int64) * (T + 1)
            batch = np.stack([corpus.train[s:s + T + 1] for s in starts]).astype(np.int64)
            xy = torch.from_numpy(batch).to(device, non_blocking=True)
            # the loss is read back once per step, after the update was queued: a non-finite one
            # stops the run below, and the NaN weights are never checkpointed
            lv_t = optimizer_step(train_model, params, opt, xy, micro_batch=train_cfg.micro_batch,
                                  grad_clip=train_cfg.grad_clip, autocast=autocast)
            if ddp:  # every rank must see the same loss, so that all stop together on a bad one
                import torch.distributed as dist

                dist.all_reduce(lv_t)
                lv_t /= world
            lv = float(lv_t)
            if not math.isfinite(lv):
                status, reason = "diverged", f"non-finite training loss ({lv}) at step {step}"
                break
            step += 1
            train_loss_acc += lv
            n_acc += 1
            tok_log += B * T
            last = step == steps
            if eval_due(step, steps, eval_every):
                # every rank evaluates the same held-out set on the same (synchronised) weights,
                # so all of them hold the curve and agree on divergence; only rank 0 writes
                t_eval = time.time()
                dt = t_eval - t_log  # training time since the last log line, evaluation excluded
                vl = evaluate()
                eval_s = time.time() - t_eval
                if not math.isfinite(vl):
                    status, reason = "diverged", f"non-finite held-out loss ({vl}) at step {step}"
                    break
                curve.append([step, step * B * T, f"{lr:.6g}", f"{train_loss_acc / n_acc:.6f}",
                              f"{vl:.6f}"])
                train_loss_acc, n_acc = 0.0, 0
                tps = tok_log / max(dt, 1e-9)  # training throughput
                intervals.append((tok_log, dt))
                eta = ((steps - step) * B * T / max(tps, 1e-9)
                       + evals_after(step, steps, eval_every) * eval_s)
                say(f"[{run_id}] step {step}/{steps} tokens {step * B * T:.3g} train {lv:.4f} "
                    f"val {vl:.4f} lr {lr:.3g} {tps:,.0f} tok/s ETA {eta:.0f}s")
                t_log, tok_log = time.time(), 0
            if last:
                break
            want = bool(stop["sig"]) or (time.time() - last_ckpt > train_cfg.ckpt_seconds) or (
                train_cfg.ckpt_steps and step % train_cfg.ckpt_steps == 0)
            if ddp:
                import torch.distributed as dist

                flag = torch.tensor([int(bool(want)), stop["sig"]], device=device)
                dist.broadcast(flag, 0)
                want, stop["sig"] = bool(flag[0]), int(flag[1])
            if want:
                save_ckpt()
                last_ckpt = time.time()
            if stop["sig"]:
                raise _Stop()
    except _Stop:
        say(f"[{run_id}] stopped by signal {stop['sig']} at step {step}; checkpoint saved, "
            "re-run the same command to resume")
        raise KeyboardInterrupt from None
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)

    wall = wall_before + time.time() - t_start
    record["wall_seconds"] = round(wall, 3)
    if intervals:
        record["throughput"] = throughput(intervals, fpt, device)
    record["status"] = status
    if status == "completed":
        final = float(curve[-1][4])
        record["loss"] = final
        record["bits_per_byte"] = corpus.bits_per_byte(final, ev_targets)
    else:
        record["reason"] = reason
    if master:
        _write_curve(curve_path, curve)
        write_run_record(run_dir, record)
        if ckpt_path.exists():
            ckpt_path.unlink()
        say(f"[{run_id}] {status}: loss {record['loss']} N {N} D {D} in {wall:.1f}s")
    return record


def _resume_key(train: dict[str, Any]) -> dict[str, Any]:
    """The training settings a checkpoint must agree on (not device or checkpoint cadence).

    ``threads`` may change across a resume; the run is then valid but matches an uninterrupted
    one only to float tolerance, not bitwise.
    """
    skip = {"device", "ckpt_seconds", "ckpt_steps", "threads", "compile", "micro_batch", "attention"}
    return {k: v for k, v in train.items() if k not in skip}


def _cpu_kind() -> str:
    """Architecture and the CPU kernel set torch dispatches to, e.g. ``x86_64 AVX512``."""
    cap = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    return f"{platform.machine() or '?'} {cap}"


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
