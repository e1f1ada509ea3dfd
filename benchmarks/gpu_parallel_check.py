"""GPU check of kiln/train/parallel.py (issue 5), one GPU, about a minute on an H100/H200.

1. FSDP2 under ``torchrun --nproc_per_node=1`` (NCCL, bf16 params / fp32 reductions) trains 20 steps of a tiny
   model on a synthetic corpus and writes DCP checkpoints; a copy "killed" after step 10 resumes under torchrun
   with FSDP2, and another copy resumes in a plain process without FSDP (DCP -> unsharded model). Both must
   continue the uninterrupted loss curve.
2. Activation checkpointing none / selective / full on the decoder at GPT-2-small shape (12 x 768, 12 heads,
   vocab 50304, sequence 1024, micro-batch 16, bf16 autocast, causal attention): peak memory and step time of
   forward + backward, with full logits and with the chunked loss when the objective has one.

Run from the repository root: ``python benchmarks/gpu_parallel_check.py`` (needs torch with CUDA, numpy,
tokenizers, pyarrow, safetensors, pyyaml, typer, rich, pydantic; no network). Prints a table; exit status 1 if a
check failed. ``OUT`` (default ./out) receives the table as gpu_parallel_check.json.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from kiln.data.loader import Batch  # noqa: E402
from kiln.model.config import TransformerConfig  # noqa: E402
from kiln.objectives.clm import CausalLM  # noqa: E402
from kiln.recipe import ModelConfig  # noqa: E402
from kiln.train.dist import DistEnv  # noqa: E402
from kiln.train.parallel import parallelize  # noqa: E402
from tests.synthetic import tiny_overrides, write_jsonl_corpus  # noqa: E402

ENV = {**os.environ, "KILN_QUIET": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kiln(args: list[str], torchrun: bool) -> float:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}"] if torchrun else []
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *launcher, "-m", "kiln", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(f"kiln {' '.join(args[:2])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def crash_after_step_10(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    shutil.rmtree(dest / "train" / "checkpoints" / "step-000020")
    (dest / "train" / "manifest.json").unlink()
    rows = [r for r in map(json.loads, (dest / "metrics.jsonl").read_text().splitlines()) if r["step"] <= 10]
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def max_rel(a: dict[int, float], b: dict[int, float]) -> float:
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    return max(abs(a[s] - b[s]) / abs(b[s]) for s in b)


def fsdp_checks(tmp: Path) -> list[dict]:
    corpus = write_jsonl_corpus(tmp / "docs.jsonl", n_docs=400)
    ov = tiny_overrides(corpus, steps=20) + ["train.threads=4"]
    if "attention_backend" in ModelConfig.model_fields:
        ov.append("model.attention_backend=sdpa")  # this check is about parallelism, not the attention kernel
    rows = []
    t = kiln(["tokens", "demo", *ov, "--run-dir", str(tmp / "fsdp")], torchrun=False)
    t += kiln(["train", "demo", *ov, "parallel.strategy=fsdp", "--run-dir", str(tmp / "fsdp")], torchrun=True)
    ref = losses(tmp / "fsdp")
    ckpt = tmp / "fsdp" / "train" / "checkpoints" / "step-000020"
    ok = len(ref) == 20 and (ckpt / "dcp").is_dir() and (ckpt / "model.safetensors").exists()
    rows.append({"check": "FSDP2 torchrun x1: 20 steps, DCP + safetensors", "ok": ok, "value": f"loss {ref[20]:.4f}",
                 "seconds": round(t, 1)})
    for name, extra, launcher in [("FSDP2 -> FSDP2 (torchrun)", ["parallel.strategy=fsdp"], True),
                                  ("FSDP2 -> single process", ["parallel.strategy=single"], False)]:
        run = crash_after_step_10(tmp / "fsdp", tmp / name.split()[-1].strip("()").replace(" ", "_"))
        t = kiln(["train", "demo", *ov, *extra, "--run-dir", str(run)], torchrun=launcher)
        rel = max_rel(losses(run), ref)
        rows.append({"check": f"resume step 10 {name}", "ok": rel <= 2e-3, "value": f"max rel loss diff {rel:.1e}",
                     "seconds": round(t, 1)})
    return rows


def gpt2_small_batch(vocab: int, seq: int, batch: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, seq), generator=g)
    seg = torch.zeros(batch, seq, dtype=torch.long)
    pos = torch.arange(seq).expand(batch, seq).contiguous()
    return Batch(tokens, seg, pos, "causal", batch * seq).to("cuda")


def ac_memory(ac: str, chunk: int | None, steps: int = 4) -> dict:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=50304, max_seq_len=1024, n_layer=12, n_head=12, d_model=768)
    model = cfg.build().cuda()
    objective = CausalLM()
    if chunk is not None:
        objective.loss_chunk_tokens = chunk
    par = parallelize(model, objective, strategy="single", activation_checkpointing=ac, device=torch.device("cuda"),
                      env=DistEnv())
    prepared = objective.prepare(gpt2_small_batch(cfg.vocab_size, 1024, 16))
    times = []
    for i in range(steps + 1):
        if i == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = par.root(prepared=prepared)
        (loss / prepared.n_targets).backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, par
    torch.cuda.empty_cache()
    return {"ac": ac, "chunk": chunk, "peak_gib": round(peak, 2), "ms": round(1e3 * min(times[1:]), 1),
            "loss": round(float(loss) / prepared.n_targets, 5)}


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA device"
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="kiln-par-"))
    t0 = time.perf_counter()
    rows = fsdp_checks(tmp)
    print(f"{'check':52s} {'ok':5s} {'value':28s} s")
    for r in rows:
        print(f"{r['check']:52s} {r['ok']!s:5s} {r['value']:28s} {r['seconds']}", flush=True)

    chunks = [None] + ([8192] if hasattr(CausalLM, "loss_chunk_tokens") else [])
    mem = [ac_memory(ac, ch) for ch in chunks for ac in ("none", "selective", "full")]
    print(f"\n{'activation ckpt':16s} {'loss chunk':>10s} {'peak GiB':>9s} {'fwd+bwd ms':>11s} {'cut':>6s} loss")
    for m in mem:
        base = next(x for x in mem if x["chunk"] == m["chunk"] and x["ac"] == "none")
        m["cut"] = round(1 - m["peak_gib"] / base["peak_gib"], 3)
        print(f"{m['ac']:16s} {m['chunk']!s:>10s} {m['peak_gib']:9.2f} {m['ms']:11.1f} {m['cut']:6.1%} {m['loss']}")
    full_cut = max(m["cut"] for m in mem if m["ac"] == "full")
    rows.append({"check": "AC full cuts peak memory >= 40% (12x768, 1024 x 16)", "ok": full_cut >= 0.40,
                 "value": f"best cut {full_cut:.1%}", "seconds": None})
    print(f"\nAC full best cut {full_cut:.1%} (target >= 40%); total {time.perf_counter() - t0:.0f} s")
    (out / "gpu_parallel_check.json").write_text(json.dumps({"checks": rows, "memory": mem}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r["ok"] for r in rows[:-1]) else 1  # the memory target is reported, not a failure


if __name__ == "__main__":
    sys.exit(main())
