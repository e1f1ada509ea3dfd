"""CLM vs MLM vs ELECTRA vs UL2 vs CLM->MLM at equal training tokens on Shakespeare (both editions).

Every objective trains the same 4-layer, d=128 backbone (seq 128, 2048 tokens/step, the same steps, lr and
WSD schedule) on the same corpus, tokenizer and token shards (built once, copied into each run). Then, per
checkpoint: its own validation loss (``kiln.eval.objective_val``), bits per byte for the causal ones, and the
``edition`` probe (modern vs First Folio, split by play): linear probe and fine-tuning (``kiln.eval.probe``).

    python benchmarks/objective_comparison.py            # ~15 min on 2 idle CPU cores
    python benchmarks/objective_comparison.py --steps 20 # a smoke run

Prints a markdown table (and writes it with the raw numbers to RUNS/comparison.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from kiln.data.loader import iter_eval_batches
from kiln.data.packing import pack
from kiln.data.shards import open_split
from kiln.eval.lm import evaluate_lm
from kiln.eval.objective_val import objective_val_loss
from kiln.eval.probe import ProbeConfig
from kiln.eval.stage import final_checkpoint, run_probe
from kiln.objectives import build_objective
from kiln.recipe import load_recipe
from kiln.run import RunDir
from kiln.stages import run_pipeline
from kiln.tokenizer.special import PAD, SPECIAL_IDS
from kiln.tokenizer.train import load_token_bytes
from kiln.train.checkpoint import load_model

# name -> (recipe, model attention, causal: report bits per byte)
OBJECTIVES = {
    "CLM": ("demo", "causal", True),
    "MLM": ("mlm", "bidirectional", False),
    "ELECTRA": ("electra", "bidirectional", False),
    "UL2": ("ul2", "prefix", True),
    "CLM->MLM": ("clm-mlm", "causal", False),
}


def overrides(steps: int, threads: int, batch_tokens: int) -> list[str]:
    return [
        "corpus.sources=[{kind: shakespeare, editions: [modern, folio]}]", "corpus.min_chars=200",
        "corpus.val_fraction=0.05", "tokenizer.vocab_size=2048", "data.seq_len=128",
        "model.n_layer=4", "model.n_head=4", "model.d_model=128",
        f"train.steps={steps}", f"train.batch_tokens={batch_tokens}", "train.micro_batch_size=16", "train.lr=1.0e-3",
        "train.schedule=wsd", f"train.warmup_steps={max(1, steps // 20)}", "train.decay_fraction=0.3",
        f"train.eval_every={steps}", "train.eval_sequences=32", f"train.checkpoint_every={steps}",
        f"train.threads={threads}", "eval.max_sequences=128",
    ]


def measure(name: str, recipe, run: RunDir, causal: bool, probe: ProbeConfig) -> dict:
    device = torch.device("cpu")
    model = load_model(final_checkpoint(run), device)
    val = open_split(run.stage("tokens"), "val")
    packing = pack(val.doc_lengths(), recipe.data.seq_len, recipe.data.packing)

    def batches():
        return iter_eval_batches(val, packing, SPECIAL_IDS[PAD], recipe.data.attention, 16, max_rows=128)

    obj = build_objective(recipe.train.objective, **recipe.train.objective_args)
    obj.configure(vocab_size=model.config.vocab_size, seq_len=recipe.data.seq_len, total_steps=recipe.train.steps,
                  seed=1234)
    own = objective_val_loss(model, obj, batches(), device)
    row = {"objective": name, "recipe": recipe.name, "val_own_loss": own["loss"], "own": own}
    if causal:
        row["val_bpb"] = evaluate_lm(model, batches(), load_token_bytes(run.stage("tokenizer")), device)["bpb"]
    t = time.perf_counter()
    genre = run_probe(recipe, run, "genre", probe)
    edition = run_probe(recipe, run, "edition", probe, finetuned=False)
    row.update(genre_linear=genre["linear_acc"], genre_finetune=genre["finetune_acc"],
               genre_majority=genre["majority_acc"], genre_n_test=genre["n_test"],
               edition_linear=edition["linear_acc"], edition_majority=edition["majority_acc"],
               edition_n_test=edition["n_test"], probe_seconds=round(time.perf_counter() - t, 1))
    return row


def table(rows: list[dict], steps: int, batch_tokens: int) -> str:
    lines = [f"Budget per objective: {steps} steps x {batch_tokens} tokens = {steps * batch_tokens:,} training "
             "tokens; 4 layers, d 128, "
             "4 heads, seq 128, vocab 2048, lr 1e-3 WSD. Probes on held-out plays: `genre` (comedy / history / "
             "tragedy; linear probe and fine-tune) and `edition` (modern vs Folio; linear probe).", "",
             "| Objective | own val loss (what) | val bits/byte | genre linear | genre fine-tune | genre majority | "
             "edition linear | edition majority | train s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    what = {"CLM": "next-token CE", "MLM": "masked-token CE", "ELECTRA": "gen MLM + 50 x BCE / token",
            "UL2": "CE on denoiser targets", "CLM->MLM": "masked-token CE (30%)"}
    for r in rows:
        bpb = f"{r['val_bpb']:.3f}" if "val_bpb" in r else "—"
        lines.append(f"| {r['objective']} | {r['val_own_loss']:.3f} ({what[r['objective']]}) | {bpb} | "
                     f"{r['genre_linear']:.3f} | {r['genre_finetune']:.3f} | {r['genre_majority']:.3f} | "
                     f"{r['edition_linear']:.3f} | {r['edition_majority']:.3f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--runs", type=Path, default=Path("runs/objective-comparison"))
    ap.add_argument("--only", nargs="*", default=list(OBJECTIVES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    probe = ProbeConfig(seq_len=128, windows=2, finetune_steps=args.finetune_steps)
    rows, shared = [], None
    for name in args.only:
        recipe_name, attention, causal = OBJECTIVES[name]
        recipe = load_recipe(recipe_name, [*overrides(args.steps, args.threads, args.batch_tokens),
                                           f"model.attention={attention}"])
        run = RunDir.for_recipe(recipe, args.runs / recipe_name)
        if shared is None:
            run_pipeline(recipe, run, until="tokens")
            shared = run
        elif shared is not run:
            for stage in ("corpus", "tokenizer", "tokens"):  # same sections, same fingerprints: reused
                if not run.stage(stage).exists():
                    shutil.copytree(shared.stage(stage), run.stage(stage))
        manifest = run_pipeline(recipe, run, until="train")["train"]
        row = measure(name, recipe, run, causal, probe)
        row.update(train_seconds=manifest.get("seconds", 0.0), tokens=manifest.get("stats", {}).get("tokens"))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "own"}), flush=True)
    text = table(rows, args.steps, args.batch_tokens)
    print(text)
    (args.runs / "comparison.json").write_text(json.dumps({"rows": rows, "table": text}, indent=2))


if __name__ == "__main__":
    main()
