"""Generation: the KV cache agrees with full recomputation; sampling filters; stopping rules."""

from __future__ import annotations

import json

import pytest
import torch

from kiln.infer.generate import KVCache, generate, sample_next
from kiln.infer.kind import encoder_reason
from kiln.infer.stage import opening, resolve_prompts
from kiln.model.config import TransformerConfig
from kiln.model.heads import LanguageModel
from kiln.recipe import GenerateConfig
from kiln.run import RunDir

PROMPT = [3, 14, 15, 92, 65, 35]


@pytest.fixture(params=[4, 2], ids=["mha", "gqa"])
def model(request) -> LanguageModel:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=101, max_seq_len=48, n_layer=2, n_head=4, n_kv_head=request.param, d_model=32)
    return cfg.build().eval()


def greedy_by_recompute(model: LanguageModel, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    seq, logits = list(prompt), []
    for _ in range(n):
        last = model(torch.tensor([seq]))[0, -1]
        logits.append(last)
        seq.append(int(last.argmax()))
    return seq[len(prompt) :], logits


def test_kv_cache_matches_recompute(model):
    expected, expected_logits = greedy_by_recompute(model, PROMPT, 12)
    assert generate(model, PROMPT, 12, temperature=0) == expected

    cache = KVCache.for_model(model)
    seq = list(PROMPT)
    step_logits = model(torch.tensor([seq]), kv_cache=cache)[0, -1]
    for i in range(12):
        assert (step_logits - expected_logits[i]).abs().max() <= 1e-4
        seq.append(int(step_logits.argmax()))
        step_logits = model(torch.tensor([[seq[-1]]]), kv_cache=cache)[0, -1]
    assert cache.length == len(PROMPT) + 12


def test_kv_cache_chunked_prefill(model):
    """Several tokens after a non-empty cache (chunked prefill) see the cache and stay causal."""
    tokens = torch.tensor([PROMPT + [7, 8, 9, 10]])
    full = model(tokens)
    cache = KVCache.for_model(model)
    first = model(tokens[:, :4], kv_cache=cache)
    rest = model(tokens[:, 4:], kv_cache=cache)
    assert (torch.cat([first, rest], dim=1) - full).abs().max() <= 1e-5


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    greedy = generate(model, PROMPT, 10, temperature=0)
    g = torch.Generator().manual_seed(1)
    assert generate(model, PROMPT, 10, temperature=1.5, top_k=1, generator=g) == greedy
    assert generate(model, PROMPT, 10, temperature=1.5, top_p=1e-6, generator=g) == greedy


def test_seeded_sampling_reproducible(model):
    def run(seed: int) -> list[int]:
        return generate(
            model, PROMPT, 20, temperature=1.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(seed)
        )

    assert run(7) == run(7)
    assert len(run(7)) == 20
    assert any(run(7) != run(s) for s in (8, 9, 10))


def test_eos_stops(model):
    greedy = generate(model, PROMPT, 10, temperature=0)
    eos = greedy[3]
    out = generate(model, PROMPT, 10, temperature=0, eos_id=eos)
    assert out == greedy[: greedy.index(eos)]
    assert eos not in out


def test_context_limit_and_training_flag(model):
    model.train()
    out = generate(model, PROMPT, 1000, temperature=0)
    assert len(out) == 48 - len(PROMPT)  # stops when prompt + new fill max_seq_len
    assert model.training
    long_prompt = list(range(60))  # longer than the context: cropped from the left
    out = generate(model, long_prompt, 5, temperature=0)
    assert out == generate(model, long_prompt[-47:], 5, temperature=0) and len(out) == 1
    with pytest.raises(ValueError):
        generate(model, [], 3)


def test_sample_next_filters():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0, 1.0])
    assert sample_next(logits, temperature=0) == 1
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(200)}
    assert picks == {1, 2}
    # probabilities ~ [.02, .47, .43, .01, .06]: the nucleus for p=0.8 is {1, 2}
    picks = {sample_next(logits, 1.0, top_p=0.8, generator=g) for _ in range(200)}
    assert picks == {1, 2}
    picks = {sample_next(logits, 1.0, generator=g) for _ in range(2000)}
    assert picks == {0, 1, 2, 3, 4}


# --- prompts and the encoder rule (kiln/infer/stage.py, kiln/infer/kind.py) -------------------------------


def test_opening_cuts_the_first_line_at_a_space():
    assert opening("\n  Once upon a time there was a very long sentence indeed\nsecond") == \
        "Once upon a time there was a very long"
    assert opening("short line\nmore") == "short line"
    assert opening("x" * 60) == "x" * 60  # one long word stays whole
    assert opening(" \n\t") == ""


def _val_split(corpus_dir, texts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus_dir.mkdir(parents=True, exist_ok=True)
    ids = [f"doc{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"id": ids, "text": texts}), corpus_dir / "val-00000.parquet")


def test_default_prompts_come_from_the_runs_held_out_documents(tmp_path):
    """A custom corpus is prompted with its own text, not Shakespeare's 'ROMEO.' (issue 12, point 15)."""
    run = RunDir(tmp_path / "run")
    _val_split(run.stage("corpus"), ["", "def parse(path):\n    return open(path)", "Dear diary, today I went out",
                                     "third"])
    cfg = GenerateConfig()
    assert cfg.prompts == []  # the recipe's default names no prompts
    prompts = resolve_prompts(run, cfg)
    assert prompts == [("def parse(path):", "doc1"), ("Dear diary, today I went out", "doc2")]
    assert all("ROMEO" not in p for p, _ in prompts)
    assert resolve_prompts(run, GenerateConfig(prompts=["King"])) == [("King", None)]  # explicit prompts win


def test_default_prompts_need_held_out_text(tmp_path):
    run = RunDir(tmp_path / "run")
    _val_split(run.stage("corpus"), ["", "  \n"])
    with pytest.raises(ValueError, match="set generate.prompts"):
        resolve_prompts(run, GenerateConfig())


@pytest.mark.parametrize(("objective", "attention", "encoder"), [
    ("clm", "causal", False), ("clm", "prefix", False), ("clm", "bidirectional", True),
    ("mlm", "causal", True), ("electra", "causal", True), ("clm_mlm", "causal", True),
])
def test_one_encoder_rule(objective, attention, encoder):
    assert (encoder_reason(objective, None, attention) is not None) is encoder


@pytest.mark.slow
def test_generate_and_eval_agree_an_mlm_run_is_an_encoder(tmp_path):
    """MLM on the default causal attention: eval reported no bits per byte while generate sampled from the
    untrained LM head; both now call kiln.infer.kind."""
    from typer.testing import CliRunner

    from kiln.cli import app
    from tests.synthetic import tiny_overrides, write_jsonl_corpus

    corpus = write_jsonl_corpus(tmp_path / "c.jsonl", n_docs=60)
    run_dir = tmp_path / "r"
    res = CliRunner().invoke(app, ["run", "demo", *tiny_overrides(corpus, steps=4), "train.objective=mlm",
                                   "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["val_bpb"] is None and metrics["val_objective"] == "mlm"
    assert (run_dir / "generate" / "samples.jsonl").read_text() == ""


def test_a_custom_corpus_run_samples_from_its_own_prompts(tiny_trained):
    """The shared tiny run (tests/conftest.py: a synthetic JSONL corpus, default generate.prompts)."""
    from kiln.corpus.files import iter_text_batches
    from kiln.infer.stage import sample

    run, recipe = tiny_trained.run, tiny_trained.recipe
    rows = sample(run, recipe.generate, torch.device("cpu"), recipe)
    val = {i: t for b in iter_text_batches(run.stage("corpus"), "val", columns=("id", "text"))
           for i, t in zip(b["id"], b["text"], strict=True)}
    assert len(rows) == 2 and all(r["prompt_from"].startswith("val document ") for r in rows)
    for r in rows:  # each prompt opens the held-out document it names
        assert val[r["prompt_from"].removeprefix("val document ")].startswith(r["prompt"]) and r["prompt"]
        assert r["text"].startswith(r["prompt"]) and r["new_tokens"] > 0
