#!/usr/bin/env bash
# The device check, as one script: the trainer's CUDA path (bf16 autocast, fused AdamW,
# torch.compile) on the GPT-2-small shape with each attention kernel, its MFU, the trainer run
# on the fastest kernel, and a hierarchical posterior fitted by JAX on the GPU. Run from the
# repository root on a CUDA machine whose python3 has torch, jax and numpyro; missing
# pure-Python packages come from wheels in .whl/ and the data from .gpucache/ (a BPE-8192
# tokenisation of the default corpus, and Gadre's models_loss.csv as gadre.csv).
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
python3 -c "import torch, jax, numpyro, arviz; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'jax', jax.__version__, jax.devices(), 'numpyro', numpyro.__version__, 'arviz', arviz.__version__)"

step "1. bench: the trainer's step on GPT-2 small (12 x 768, context 1024, vocab 8192, 64 sequences), eager and compiled, per attention kernel"
timeout 300 python3 bench/train_throughput.py --device cuda --sizes 12x768x12 --compile --profile --batch 64 \
  --steps 20 --vocab 8192 --attention auto,flash,cudnn --json "$OUT/bench.json" | tee "$OUT/bench.txt"
BEST=$(python3 - "$OUT/bench.json" <<'PY'
import json, sys
try:
    rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["compiled"]]
    print(max(rows, key=lambda r: r["tokens_per_s"])["attention"])
except Exception:
    print("auto")
PY
)
echo "fastest compiled attention kernel: $BEST"

step "2. trainer: bayescale train --compile --attention $BEST, 64 x 1024 per step, 2.2M tokens of the default corpus (2.3M in its training split)"
T0=$(date +%s)
timeout 150 python3 -m bayescale train --data .gpucache/corpus8k --n-layer 12 --d-model 768 --n-head 12 \
  --context 1024 --tokens 2.2e6 --batch-size 64 --eval-every 8 --device cuda --compile --attention "$BEST" \
  --runs "$OUT/runs" --json > "$OUT/train_compiled.json"
echo "rc $? wall $(( $(date +%s) - T0 )) s"
python3 - "$OUT/train_compiled.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r.get(k) for k in ("status", "N", "N_total", "D", "loss", "wall_seconds")}, r["env"].get("gpu"))
print("throughput", r.get("throughput"))
PY

step "3. a hierarchical posterior with JAX on the GPU: Gadre c4_val, chinchilla law, 3 groups"
T0=$(date +%s)
timeout 150 python3 -m bayescale fit .gpucache/data/gadre.csv --columns N=N_params_no_embed,D=D_tokens,loss=loss_c4_val \
  --group dataset --law chinchilla --target-accept 0.95 --out "$OUT/gadre-hier.nc" -q
echo "hierarchical fit rc $? wall $(( $(date +%s) - T0 )) s"
bs optimal "$OUT/gadre-hier.nc" --compute 1e21 --group rpj --json > "$OUT/gadre-hier-optimal.json"
bs summary "$OUT/gadre-hier.nc" | head -40
cp "$OUT"/runs/*/curve.csv "$OUT/curve.csv" 2>/dev/null
rm -rf "$OUT/runs"  # run folders are two deep; the JSON and curve above hold the record
ls -la "$OUT"
