"""Training throughput: kiln's decoder vs Hugging Face Llama and GPT-2 of the same shape, one process.

    python benchmarks/gpu_throughput.py [--out DIR] [--budget-s 200]     # GPT-2-small shape on a GPU
    python benchmarks/gpu_throughput.py --smoke                          # tiny shape on CPU (import check)
    python benchmarks/gpu_throughput.py --profile [--profile-rows ...]   # + where the step time goes

Every row runs the same raw loop on the same random batch: forward under bf16 autocast (GPU), full
logits and fp32 cross-entropy, backward, AdamW (fused on CUDA), zero_grad. ``warmup`` steps (compile
included) then ``steps`` timed steps between synchronisations. MFU uses ONE formula for all three
models, :func:`kiln.model.flops.flops_per_token` of the kiln config (6 N + 12 L d T, PaLM appendix B):
the shapes are equal in matmul parameters (SwiGLU 3 x 768 x 2048 = GELU 2 x 768 x 3072), so tokens/s
is the comparison and MFU its scale. Rows:

- ``kiln`` causal; ``kiln doc`` packed documents (random lengths 64..768) with document masks:
  FlexAttention block masks on CUDA (kiln/model/flex.py), the boolean SDPA mask on CPU;
- ``kiln ... +ac``: full activation checkpointing of every block, applied here with
  ``torch.utils.checkpoint`` (non-reentrant) around each block's forward;
- ``hf-llama`` (``LlamaForCausalLM``), ``hf-gpt2`` (``GPT2LMHeadModel``, dropout 0), built from config,
  random init, ``attn_implementation="sdpa"``, tied embeddings like kiln;
- each ``eager`` and ``compiled`` (``torch.compile`` of the whole model; the loss stays outside);
  ``kiln compiled loss-in-graph`` compiles model + fp32 cross-entropy as one graph, as nanoGPT does, so
  inductor can fuse the cast and log-softmax instead of materialising fp32 logits (a candidate cause of the
  gap to nanoGPT);
- ``kiln trainer compiled``: what ``kiln train`` runs with ``parallel.compile: true``: the model through
  ``kiln.train.parallel.parallelize`` (each block compiled, and the LM head + fp32 cross-entropy compiled as
  one more graph) and the loss from the ``CausalLM`` objective (summed over targets, divided by their count);
  ``kiln trainer compiled eager-loss`` the same with the loss left eager (what the compiled loss adds).

Rows run in priority order and are skipped (reported as such) once ``--budget-s`` is spent.

``--profile``: ``torch.profiler`` breakdown of chosen rows (``gpu_profile.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere: kiln importable
from kiln.model.config import TransformerConfig  # noqa: E402
from kiln.model.flops import flops_per_token, peak_flops  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_profile import (  # noqa: E402
    PROFILE_ROWS,
    device_name,
    print_profile,
    profile_steps,
    sync_device,
    write_profile,
)


@dataclass
class Shape:
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    vocab: int = 50304
    seq: int = 1024
    batch: int = 16

    @property
    def ffn(self) -> int:  # SwiGLU width with the parameters of a 4 d GELU MLP (8/3 d, multiple of 64)
        return TransformerConfig(vocab_size=8, max_seq_len=8, d_model=self.d_model, n_head=self.n_head).ffn_hidden


GPT2_SMALL = Shape()
CPU_SMALL = Shape(n_layer=4, d_model=256, n_head=4, vocab=4096, seq=256, batch=8)
SMOKE = Shape(n_layer=2, d_model=64, n_head=4, vocab=512, seq=64, batch=4)

# (name, model kind, document masks, activation checkpointing, compiled), in priority order
ROWS: list[tuple[str, str, bool, bool, bool]] = [
    ("kiln compiled", "kiln", False, False, True),
    ("kiln trainer compiled", "kiln-trainer", False, False, True),  # parallelize(): per block + compiled loss
    ("kiln compiled loss-in-graph", "kiln", False, False, True),  # model + fp32 CE compiled as one graph
    ("hf-llama compiled", "llama", False, False, True),
    ("hf-gpt2 compiled", "gpt2", False, False, True),  # nanoGPT's architecture
    ("kiln doc compiled", "kiln", True, False, True),
    ("kiln trainer compiled eager-loss", "kiln-trainer", False, False, True),  # blocks compiled, loss eager
    ("kiln compiled +ac", "kiln", False, True, True),
    ("kiln doc compiled +ac", "kiln", True, True, True),
    ("kiln eager", "kiln", False, False, False),  # eager rows last: cheap, and measured before
    ("kiln doc eager", "kiln", True, False, False),
    ("hf-llama eager", "llama", False, False, False),
    ("hf-gpt2 eager", "gpt2", False, False, False),
]


def select_rows(names: str) -> list[tuple[str, str, bool, bool, bool]]:
    """The rows named in a comma-separated list, in that order; an unknown name is an error listing the rows."""
    by_name = {r[0]: r for r in ROWS}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows are: {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


def kiln_config(s: Shape) -> TransformerConfig:
    return TransformerConfig(vocab_size=s.vocab, max_seq_len=s.seq, n_layer=s.n_layer, n_head=s.n_head,
                             d_model=s.d_model)


def packed_documents(s: Shape, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(segments, positions) for rows packed with documents of 64..768 tokens (the last one cut)."""
    seg = torch.empty(s.batch, s.seq, dtype=torch.long)
    pos = torch.empty(s.batch, s.seq, dtype=torch.long)
    lo, hi = max(s.seq // 16, 2), max(3 * s.seq // 4, 3)
    for b in range(s.batch):
        i, k = 0, 0
        while i < s.seq:
            n = min(int(torch.randint(lo, hi, (1,), generator=gen)), s.seq - i)
            seg[b, i : i + n], pos[b, i : i + n] = k, torch.arange(n)
            i, k = i + n, k + 1
    return seg, pos


class _Checkpointed(nn.Module):
    """Full activation checkpointing of one block: recompute its forward during backward."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: object) -> torch.Tensor:
        return checkpoint(self.block, *args, use_reentrant=False)


def build(kind: str, s: Shape, ac: bool) -> tuple[nn.Module, Callable[..., torch.Tensor]]:
    """(model, logits_fn(model, tokens, segments, positions))."""
    if kind.startswith("kiln"):
        model = kiln_config(s).build()
        if ac and kind == "kiln":  # kiln-trainer: parallelize() applies it
            model.backbone.blocks = nn.ModuleList(_Checkpointed(b) for b in model.backbone.blocks)
        return model, lambda m, t, seg, pos: m(t, positions=pos, segments=seg)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=s.vocab, hidden_size=s.d_model, intermediate_size=s.ffn,
                          num_hidden_layers=s.n_layer, num_attention_heads=s.n_head, num_key_value_heads=s.n_head,
                          max_position_embeddings=s.seq, tie_word_embeddings=True, attn_implementation="sdpa")
        model = LlamaForCausalLM(cfg)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=s.vocab, n_positions=s.seq, n_embd=s.d_model, n_layer=s.n_layer, n_head=s.n_head,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                         attn_implementation="sdpa")
        model = GPT2LMHeadModel(cfg)
    if ac:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, lambda m, t, seg, pos: m(input_ids=t, use_cache=False).logits



def trainer_loss(model: nn.Module, device: torch.device, data: dict[str, torch.Tensor], doc: bool, ac: bool,
                 compiled: bool, compile_loss: bool = True) -> Callable[[], torch.Tensor]:
    """The mean loss as ``kiln train`` computes it: ``parallelize`` (checkpointing, compile of the blocks and
    the LM loss) and the ``CausalLM`` objective on a packed batch (the last position has no target)."""
    from kiln.data.loader import Batch
    from kiln.objectives.clm import CausalLM
    from kiln.train.dist import DistEnv
    from kiln.train.parallel import parallelize

    objective = CausalLM()
    par = parallelize(model, objective, strategy="single", activation_checkpointing="full" if ac else "none",
                      compile=compiled, device=device, env=DistEnv())
    objective.set_compile_loss(compiled and compile_loss)
    tokens = data["tokens"]
    if doc:
        batch = Batch(tokens, data["segments"], data["positions"], "document", tokens.numel())
    else:
        rows = torch.arange(tokens.shape[1], device=device).expand_as(tokens)
        batch = Batch(tokens, torch.zeros_like(tokens), rows, "causal", tokens.numel())
    prepared = objective.prepare(batch)
    return lambda: par.root(prepared=prepared)[0] / prepared.n_targets


def run_row(row: tuple[str, str, bool, bool, bool], s: Shape, device: torch.device, warmup: int, steps: int,
            data: dict[str, torch.Tensor], profile: bool = False) -> dict:
    name, kind, doc, ac, compiled = row
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, logits_fn = build(kind, s, ac)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda")
    seg, pos = (data["segments"], data["positions"]) if doc else (None, None)
    tokens, targets = data["tokens"], data["targets_doc" if doc else "targets"]
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())

    def model_loss(m: nn.Module) -> torch.Tensor:
        return F.cross_entropy(logits_fn(m, tokens, seg, pos).flatten(0, 1).float(), targets.flatten())

    if kind == "kiln-trainer":
        loss_fn = trainer_loss(model, device, data, doc, ac, compiled, compile_loss=not name.endswith("eager-loss"))
    elif name.endswith("loss-in-graph"):  # as nanoGPT: the loss inside the compiled graph, fp32 logits fused away
        loss_fn = torch.compile(lambda: model_loss(model))
    else:
        fwd = torch.compile(model) if compiled else model
        loss_fn = lambda: model_loss(fwd)  # noqa: E731

    def step() -> torch.Tensor:
        with amp:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    sync_device(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync_device(device)
    dt = (time.perf_counter() - t0) / steps
    n_params = sum(p.numel() for p in model.parameters())
    tps = s.batch * s.seq / dt
    fpt = flops_per_token(kiln_config(s), s.seq)
    peak = peak_flops(device)
    res = {"row": name, "model": kind, "doc_mask": doc, "act_ckpt": ac, "compiled": compiled,
           "params_m": round(n_params / 1e6, 2), "ms_per_step": round(dt * 1e3, 2), "tokens_per_s": round(tps),
           "mfu": round(tps * fpt / peak, 4) if peak else None, "warmup_s": round(warm_s, 1),
           "final_loss": round(float(loss.detach()), 4),
           "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None}
    if profile:  # after the timed steps, on the same (compiled) model: no second compile
        try:
            res["profile"] = {"row": name, **profile_steps(step, device, dt * 1e3)}
        except Exception as exc:
            res["profile"] = {"row": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return res


def run_suite(s: Shape, device: torch.device, rows: list[tuple[str, str, bool, bool, bool]], warmup: int,
              steps: int, budget_s: float, out: Path | None, label: str, profile_rows: tuple[str, ...] = ()
              ) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, s.vocab, (s.batch, s.seq + 1), generator=gen)
    seg, pos = packed_documents(s, gen)
    targets = tokens[:, 1:].clone()
    targets[:, :-1][seg[:, 1:] != seg[:, :-1]] = -100  # no target across a document boundary (doc rows only)
    data = {"tokens": tokens[:, :-1].to(device), "targets": tokens[:, 1:].to(device), "segments": seg.to(device),
            "positions": pos.to(device), "targets_doc": targets.to(device)}
    has_hf = _has_transformers()
    start, results, profiles = time.perf_counter(), [], []
    for row in rows:
        if row[1] != "kiln" and not has_hf:
            results.append({"row": row[0], "skipped": "transformers not installed"})
        elif time.perf_counter() - start > budget_s:
            results.append({"row": row[0], "skipped": f"time budget {budget_s:.0f} s spent"})
        else:
            try:
                results.append(run_row(row, s, device, warmup, steps, data, profile=row[0] in profile_rows))
            except Exception as exc:  # keep going: one failing row must not hide the others
                results.append({"row": row[0], "error": f"{type(exc).__name__}: {exc}"[:500]})
            gc.collect()  # the row's model and optimizer are gone with run_row's frame
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if "profile" in results[-1]:
            profiles.append(results[-1].pop("profile"))
            write_profile(out, s, device, profile_rows, profiles, results)  # now: a later row may time out
        print(_fmt(results[-1]), flush=True)
    meta = {"benchmark": label, "shape": asdict(s), "device": device_name(device), "torch": torch.__version__,
            "warmup": warmup, "steps": steps, "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
            "flops_per_token": flops_per_token(kiln_config(s), s.seq),
            "mfu_formula": "kiln.model.flops.flops_per_token(kiln config) for every row", "rows": results}
    try:
        meta["loss_memory"] = loss_memory(s, device)
    except Exception as exc:
        meta["loss_memory"] = f"{type(exc).__name__}: {exc}"[:500]
    print_table(results, meta)
    for p in profiles:
        print_profile(p)
    if profile_rows:
        write_profile(out, s, device, profile_rows, profiles, results)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{label}.json").write_text(json.dumps(meta, indent=2))
    return results


def loss_memory(s: Shape, device: torch.device, chunk_tokens: int = 4096, rounds: int = 5) -> list[dict]:
    """LM head + loss alone (forward + backward) at the shape's batch: full logits eager, full logits compiled
    as one graph (``parallel.compile``'s loss) and chunked cross-entropy (kiln/objectives/losses.py). Two warmup
    calls each, then ``rounds`` rounds that time one call of each variant in turn (so drift in the machine's
    speed hits all alike); the median ms per call and the peak memory above the inputs."""
    from kiln.objectives.losses import chunked_cross_entropy, compiled_cross_entropy, plain_cross_entropy

    gen = torch.Generator().manual_seed(0)
    n = s.batch * s.seq
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hidden = torch.randn(n, s.d_model, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(s.vocab, s.d_model, generator=gen) * 0.02).to(device).requires_grad_()
    targets = torch.randint(0, s.vocab, (n,), generator=gen).to(device)
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "full logits": lambda: plain_cross_entropy(hidden, weight, targets),
        "full logits, compiled": lambda: compiled_cross_entropy()(hidden, weight, targets),
        f"chunked ({chunk_tokens} tokens)": lambda: chunked_cross_entropy(hidden, weight, targets, chunk_tokens),
    }
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, float] = dict.fromkeys(variants, 0.0)
    values: dict[str, float] = {}
    for r in range(2 + rounds):
        for name, fn in variants.items():
            hidden.grad = weight.grad = None
            sync_device(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
            t0 = time.perf_counter()
            with amp:
                loss = fn()
            loss.backward()
            sync_device(device)
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
                if device.type == "cuda":
                    peaks[name] = max(peaks[name], (torch.cuda.max_memory_allocated() - base) / 1e9)
            values[name] = float(loss.detach()) / n
    out = []
    for name in variants:
        ms = sorted(times[name])[len(times[name]) // 2] * 1e3
        peak = round(peaks[name], 2) if device.type == "cuda" else None
        out.append({"loss": name, "tokens": n, "vocab": s.vocab, "ms": round(ms, 1), "peak_extra_gb": peak,
                    "value": round(values[name], 5)})
        print(f"loss memory: {name:24s} {ms:>8.1f} ms  peak above inputs {peak if peak is not None else '-'} GB  "
              f"(mean loss {out[-1]['value']})")
    return out


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True



def _fmt(r: dict) -> str:
    if "tokens_per_s" not in r:
        return f"{r['row']:28s} {r.get('skipped') or r.get('error')}"
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
    mem = f"{r['peak_mem_gb']:.1f} GB" if r["peak_mem_gb"] is not None else "-"
    return (f"{r['row']:28s} {r['tokens_per_s']:>10,} tok/s  {r['ms_per_step']:>8.1f} ms  MFU {mfu:>6s}  "
            f"mem {mem:>8s}  params {r['params_m']}M  warmup {r['warmup_s']} s")


def print_table(results: list[dict], meta: dict) -> None:
    print(f"\n{meta['benchmark']}: {meta['device']}, torch {meta['torch']}, shape {meta['shape']}, "
          f"{meta['warmup']} warmup + {meta['steps']} timed steps")
    for r in results:
        print(_fmt(r))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shape on CPU, 1 + 2 steps")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--budget-s", type=float, default=200.0, help="start no new row after this many seconds")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--profile", action="store_true", help="profile.json: kernels and groups of --profile-rows")
    ap.add_argument("--profile-rows", default=",".join(PROFILE_ROWS),
                    help="comma-separated rows to profile (with --smoke: their eager rows)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    shape = SMOKE if args.smoke or device.type == "cpu" else GPT2_SMALL
    rows = select_rows(args.rows) if args.rows else list(ROWS)
    if args.smoke:
        rows = rows if args.rows else [r for r in rows if not r[4]]  # compiled rows only when named
        args.warmup, args.steps = 1, 2
    prof = tuple(n.strip() for n in args.profile_rows.split(",") if n.strip()) if args.profile else ()
    if args.smoke:
        prof = tuple(dict.fromkeys(n.replace(" compiled", " eager") for n in prof))
    run_suite(shape, device, rows, args.warmup, args.steps, args.budget_s, args.out, "gpu_throughput",
              profile_rows=prof)


if __name__ == "__main__":
    main()
