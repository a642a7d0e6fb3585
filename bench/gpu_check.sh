#!/usr/bin/env bash
# The device check, as one script: the trainer's CUDA path (bf16 autocast, fused AdamW,
# torch.compile, gradient accumulation) on the GPT-2-small shape, its MFU, and posteriors fitted
# by JAX on the GPU. Run from the repository root on a CUDA machine whose python3 has torch, jax
# and numpyro; missing pure-Python packages come from wheels in .whl/ and the data from
# .gpucache/ (a BPE-8192 tokenisation of the default corpus, and the Gadre table).
# Everything it reports is written under $OUT (default /tmp/gpu-check).
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false BAYESCALE_JAX_CACHE=off
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
bs() { python3 -m bayescale "$@"; }
step() { echo; echo "=== $* ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, jax, numpyro, arviz; print('torch', torch.__version__, 'jax', jax.__version__, jax.devices(), 'numpyro', numpyro.__version__, 'arviz', arviz.__version__)"

step "1. trainer: GPT-2-small shape (12 x 768, context 1024), bf16, fused AdamW, torch.compile"
T0=$(date +%s)
timeout 240 python3 -m bayescale train --data .gpucache/corpus8k --n-layer 12 --d-model 768 --n-head 12 \
  --context 1024 --tokens 2.2e6 --batch-size 32 --eval-every 10 --device cuda --compile \
  --runs "$OUT/runs" --json > "$OUT/train_compiled.json"
echo "rc $? wall $(( $(date +%s) - T0 )) s"
python3 - "$OUT/train_compiled.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r.get(k) for k in ("status", "N", "N_total", "D", "loss", "wall_seconds")}, r["env"].get("gpu"))
print("throughput", r.get("throughput"))
PY

step "2. trainer: the same run in micro-batches of 8 (gradient accumulation), eager"
timeout 150 python3 -m bayescale train --data .gpucache/corpus8k --n-layer 12 --d-model 768 --n-head 12 \
  --context 1024 --tokens 2.2e6 --batch-size 32 --micro-batch 8 --eval-every 10 --device cuda \
  --runs "$OUT/runs-micro" --json > "$OUT/train_micro.json"
echo "rc $?"
python3 -c "import json,sys; r=json.load(open('$OUT/train_micro.json')); print(r['status'], r['loss'], r.get('throughput'))"

step "3. bench: the trainer's step, eager vs compiled, in one process (random tokens)"
timeout 200 python3 bench/train_throughput.py --device cuda --sizes 12x768x12 --compile --batch 32 \
  --steps 20 --vocab 8192 | tee "$OUT/bench.txt"

step "4. posteriors with JAX on the GPU"
T0=$(date +%s)
timeout 150 bash -c "python3 -m bayescale fit .gpucache/data/gadre.csv --columns N=N_params_no_embed,D=D_tokens,loss=loss_c4_val \
  --group dataset --law chinchilla --target-accept 0.95 --out $OUT/gadre-hier.nc -q"
echo "hierarchical fit rc $? wall $(( $(date +%s) - T0 )) s"
bs optimal "$OUT/gadre-hier.nc" --compute 1e21 --group rpj --json > "$OUT/gadre-hier-optimal.json"
bs summary "$OUT/gadre-hier.nc" | head -30
T0=$(date +%s)
timeout 200 python3 -m bayescale fit bayescale/data/chinchilla.csv --out "$OUT/chinchilla-avg.nc" -q
echo "averaged fit rc $? wall $(( $(date +%s) - T0 )) s"
bs optimal "$OUT/chinchilla-avg.nc" --compute 1e24 --json > "$OUT/chinchilla-avg-optimal.json"
bs summary "$OUT/chinchilla-avg.nc" | head -30
rm -rf "$OUT/runs" "$OUT/runs-micro"  # run folders are two deep; the JSON above holds the records
ls -la "$OUT"
