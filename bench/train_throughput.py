"""Trainer throughput vs the device's own matmul ceiling, measured in the same process.

    python bench/train_throughput.py [--device auto|cpu|cuda] [--threads T] [--steps S]
                                     [--compile] [--sizes 12x768x12,...] [--batch B] [--micro-batch M]
                                     [--attention auto,cudnn,...] [--json FILE]

For each model size it times the trainer's own optimizer step (``trainer.optimizer_step``:
forward under bf16 autocast on CUDA, backward, clip, fused AdamW on CUDA) on random tokens and
reports tokens/s and achieved FLOP/s, counting FLOPs per token both as 6N and with attention
and the output projection (Kaplan et al. 2020, Table 1; see bayescale.train.model.flops_per_token).
The ceiling is a large square matmul measured in the same process: fp32 on CPU, bf16 on CUDA.
The ratio achieved / ceiling is the model FLOP utilisation (MFU); on a known GPU it is also given
against the datasheet peak (``trainer.PEAK_BF16``), the usual definition. With ``--compile`` each
size is timed eager and under ``torch.compile``; with ``--attention`` a list of kernels, under each
(``trainer.autocast_for``, as ``bayescale train --attention``). Every row prints its speed-up
over the shape's first row, timed in the same process.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import torch

from bayescale.train.model import ModelConfig, Transformer, flops_per_token, non_embedding_params
from bayescale.train.trainer import autocast_for, optimizer_step, peak_flops

SIZES = [  # (n_layer, d_model, n_head): CPU sizes up to the largest shipped in runs/
    (2, 64, 2),
    (4, 128, 4),
    (5, 160, 5),
]
GPU_SIZES = [(6, 512, 8), (12, 768, 12)]  # the last is GPT-2 small (85M non-embedding, 124M total)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        n, reps = 8192, 50
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(5):  # best of 5: on a shared machine the ceiling is the least-disturbed trial
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


#: kernel-name patterns (lower case) of the categories a profiled step is split into, first match wins
CATEGORIES = (("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
              ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul")),
              ("optimizer", ("adam", "multi_tensor", "foreach")),
              ("fused elementwise / norms (triton)", ("triton",)))


def kernel_shares(step, device: torch.device, steps: int = 3) -> None:
    """Print each category's share of the GPU kernel time of ``steps`` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync(device)
    totals: dict[str, float] = {}
    top: dict[str, float] = {}
    for e in prof.events():  # kernels are the events that ran on the device (no double counting)
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        t = float(e.time_range.elapsed_us())
        name = e.name.lower()
        cat = next((c for c, pats in CATEGORIES if any(p in name for p in pats)), "other")
        totals[cat] = totals.get(cat, 0.0) + t
        top[e.name] = top.get(e.name, 0.0) + t
    whole = sum(totals.values())
    if not whole:
        print("profile: no GPU kernel times recorded")
        return
    print(f"profile: {whole / steps / 1e3:.1f} ms of GPU kernels per step")
    for cat, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:<36} {t / whole:6.1%}")
    for k, t in sorted(top.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {t / whole:6.1%}  {k[:110]}")


def train_tokens_per_s(cfg: ModelConfig, device: torch.device, batch: int, steps: int,
                       *, compile: str = "", micro_batch: int = 0, attention: str = "auto",
                       profile: bool = False) -> float:
    """Tokens/s of the trainer's optimizer step; ``compile`` names a torch.compile mode ('' eager)."""
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), fused=device.type == "cuda")
    run = torch.compile(model, mode=None if compile == "default" else compile) if compile else model
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context + 1), device=device)

    def step() -> float:
        return float(optimizer_step(run, params, opt, x, micro_batch=micro_batch,
                                    autocast=partial(autocast_for, device, attention)))

    for _ in range(3):  # warm-up (and compilation)
        step()
    sync(device)
    if profile:
        kernel_shares(step, device)
    t = time.perf_counter()
    for _ in range(steps):
        step()  # reads the loss back once per step, as the trainer does
    sync(device)
    return batch * cfg.context * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=0, help="sequences per step (0: 64 on CPU, 16 on CUDA)")
    ap.add_argument("--micro-batch", type=int, default=0, help="sequences per forward/backward pass")
    ap.add_argument("--compile", action="store_true", help="also time each size under torch.compile")
    ap.add_argument("--compile-modes", default="default",
                    help="comma-separated torch.compile modes timed with --compile (e.g. "
                         "default,max-autotune-no-cudagraphs)")
    ap.add_argument("--profile", action="store_true",
                    help="print where the GPU time of each compiled size's step goes, by kernel category")
    ap.add_argument("--attention", default="auto",
                    help="comma-separated attention kernels to time (auto, flash, cudnn, efficient, math)")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--sizes", default="", help="comma-separated LxDxH shapes (default: by device)")
    ap.add_argument("--context", type=int, default=0, help="tokens per sequence (0: 64 CPU, 1024 CUDA)")
    ap.add_argument("--vocab", type=int, default=0, help="vocabulary (0: 512 CPU, 50304 CUDA)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer sets it
    sizes = ([tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")] if args.sizes
             else GPU_SIZES if cuda else SIZES)
    ctx = args.context or (1024 if cuda else 64)
    vocab = args.vocab or (50304 if cuda else 512)
    batch = args.batch or (16 if cuda else 64)
    peak = matmul_flops(device)
    rows = []
    for n_layer, d, h in sizes:
        cfg = ModelConfig(n_layer=n_layer, d_model=d, n_head=h, context=ctx, vocab_size=vocab)
        for comp in [""] + (args.compile_modes.split(",") if args.compile else []):
            for att in args.attention.split(","):
                tps = max(train_tokens_per_s(cfg, device, batch, args.steps, compile=comp,
                                             micro_batch=args.micro_batch, attention=att,
                                             profile=args.profile and rep == 0 and comp == "default")
                          for rep in range(2))
                rows.append((cfg, comp, att, tps))
        peak = max(peak, matmul_flops(device))  # re-measured beside each size, best kept
    sheet = peak_flops(device)
    print(f"device {torch.cuda.get_device_name(device) if cuda else 'cpu'}, threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}, batch {batch} x {ctx} tokens "
          f"(micro-batch {args.micro_batch or batch}), vocab {vocab}")
    print(f"matmul ceiling ({'bf16' if cuda else 'fp32'}, best trial): {peak / 1e9:,.1f} GFLOP/s"
          + (f"; datasheet peak {sheet / 1e12:,.1f} TFLOP/s" if sheet else ""))
    print(f"{'shape':>16} {'mode':>16} {'N':>11} {'tok/s':>11} {'GFLOP/s full':>13} "
          f"{'MFU 6N':>7} {'MFU full':>9}" + (f" {'MFU sheet':>10}" if sheet else ""))
    first: dict[str, float] = {}  # each shape's first row (eager, the first kernel): the baseline
    out = []
    for cfg, comp, att, tps in rows:
        f = flops_per_token(cfg)
        a6, af = tps * f["6N"], tps * f["full"]
        shape = f"l{cfg.n_layer}-d{cfg.d_model}-c{cfg.context}"
        mode = ({"": "eager", "default": "compiled"}.get(comp, comp.replace("max-autotune", "autotune"))
                + ("" if att == "auto" else f"+{att}"))
        line = (f"{shape:>16} {mode:>16} {non_embedding_params(cfg):>11,} "
                f"{tps:>11,.0f} {af / 1e9:>13.2f} {a6 / peak:>7.1%} {af / peak:>9.1%}")
        if sheet:
            line += f" {af / sheet:>10.1%}"
        if shape in first:
            line += f"   vs first row {tps / first[shape]:.2f}x"
        first.setdefault(shape, tps)
        print(line)
        out.append({"shape": shape, "compiled": comp or False, "attention": att, "tokens_per_s": tps,
                    "mfu_measured": af / peak, "mfu_sheet": af / sheet if sheet else None})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"batch": batch, "context": ctx, "vocab": vocab, "matmul_ceiling": peak,
                       "peak_sheet": sheet, "rows": out}, fh, indent=1)


if __name__ == "__main__":
    main()
