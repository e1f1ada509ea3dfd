"""ERNIE 3.0 (Sun et al. 2021, arXiv:2107.02137): knowledge triples from corpus metadata, UKTP masking, and the
``ernie3`` objective (shared backbone, NLU task module, NLG = the model's top blocks)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kiln.corpus.steps.base import StepContext
from kiln.corpus.steps.knowledge import KnowledgeTriplesParams, run_knowledge, triples_of
from kiln.data.loader import Batch
from kiln.model.config import TransformerConfig
from kiln.objectives import build_objective
from kiln.objectives.ernie3_uktp import find_knowledge, uktp_mask
from kiln.objectives.transforms.common import BOS_ID, EOS_ID, IGNORE, MASK_ID, NUM_SPECIAL, SEP_ID
from kiln.objectives.transforms.mlm import MLMConfig
from kiln.recipe import load_recipe
from kiln.run import RunDir
from kiln.stages import run_pipeline
from kiln.tokenizer.special import SEP

REPO = Path(__file__).resolve().parents[1]
SCENE = ("ACT I.\n\nSCENE 1. Rousillon.  A room in the COUNTESS'S palace.\n\n[Enter BERTRAM, the COUNTESS OF "
         "ROUSILLON, HELENA, and LAFEU, all\nin black.]\n\nCOUNTESS.\nIn delivering my son from me, I bury a second "
         "husband.\n\nBERTRAM.\nAnd I in going, madam, weep o'er my father's death anew;\n\nLAFEU.\nYou shall find "
         "of the king a husband, madam;\n\nCOUNTESS.\nWhat hope is there of his majesty's amendment?\n")


# ----------------------------------------------------------------------------- corpus step


def test_corpus_step_derives_triples_from_shakespeare_and_pydocs_metadata():
    scene = {"id": "shakespeare/alls_well_that_ends_well/modern/1.1", "text": SCENE, "source": "shakespeare",
             "play": "alls_well_that_ends_well", "title": "All's Well That Ends Well", "act": 1, "scene": 1}
    func = {"id": "pydocs/abc.abstractmethod", "text": "A decorator indicating abstract methods.", "source": "pydocs",
            "module": "abc", "kind": "function"}
    module = {"id": "pydocs/abc", "text": "Abstract Base Classes.", "source": "pydocs", "module": "abc",
              "kind": "module"}
    plain = {"id": "doc0", "text": "No metadata here.", "source": "docs"}
    play = "All's Well That Ends Well"
    assert triples_of(scene) == [("COUNTESS", "appears in", play), ("BERTRAM", "appears in", play),
                                 ("LAFEU", "appears in", play)]  # speaker labels only, first appearance order
    assert triples_of(func) == [("abstractmethod", "function defined in", "abc")]
    assert triples_of(module) == [] and triples_of(plain) == []
    assert triples_of(scene, max_triples=2) == triples_of(scene)[:2]

    ctx = StepContext(step="knowledge_triples")
    out, rep = run_knowledge([scene, func, module, plain], KnowledgeTriplesParams(), ctx)
    s = SEP
    assert out[0]["text"] == (f"{s}COUNTESS{s}appears in{s}{play}{s}BERTRAM{s}appears in{s}{play}{s}LAFEU{s}"
                              f"appears in{s}{play}{s}{s}" + SCENE)
    assert out[1]["text"] == f"{s}abstractmethod{s}function defined in{s}abc{s}{s}" + func["text"]
    assert out[2] is module and out[3] is plain and scene["text"] == SCENE  # inputs untouched
    assert (rep.docs_in, rep.docs_out, rep.docs_changed) == (4, 4, 2)
    with pytest.raises(ValueError, match="already starts with"):
        run_knowledge(out[:1], KnowledgeTriplesParams(), ctx)
    recipe = load_recipe("demo", ["corpus.steps=[{step: knowledge_triples, max_triples: 4}]"])
    assert recipe.corpus.steps[0].max_triples == 4
    with pytest.raises(Exception, match="max_triples"):
        load_recipe("demo", ["corpus.steps=[{step: knowledge_triples, max_triples: 0}]"])


# ----------------------------------------------------------------------------- UKTP masking

HEAD, REL, TAIL, OTHER = [150, 151], [160], [170], [150, 152]


def _knowledge_row(length: int = 32) -> torch.Tensor:
    """<bos><sep>HEAD<sep>REL<sep>TAIL<sep><sep> text: HEAD twice, TAIL once, a near miss (150, 152), fillers."""
    row = [BOS_ID, SEP_ID, *HEAD, SEP_ID, *REL, SEP_ID, *TAIL, SEP_ID, SEP_ID,
           *HEAD, 120, 121, *OTHER, 122, *TAIL, 123, *HEAD, 124]
    row += [125 + (i % 20) for i in range(length - len(row) - 1)] + [EOS_ID]
    return torch.tensor([row])


def test_find_knowledge_locates_entities_in_block_and_text():
    ents = find_knowledge(_knowledge_row())
    assert [e.tokens for e in ents] == [tuple(HEAD), tuple(TAIL)]  # the relation is no entity
    head, tail = ents
    assert head.in_block == [(2, 4)] and head.mentions == [(10, 12), (19, 21)]  # (150, 152) is not a mention
    assert tail.in_block == [(7, 8)] and tail.mentions == [(17, 18)]
    # a second document in the same row (another segment) is searched only up to its own end
    two = torch.cat([_knowledge_row(24), _knowledge_row(24)], dim=1)
    segs = torch.tensor([[0] * 24 + [1] * 24])
    ents = find_knowledge(two, segs)
    assert [e.mentions for e in ents] == [[(10, 12), (19, 21)], [(17, 18)], [(34, 36), (43, 45)], [(41, 42)]]


def test_uktp_masks_triple_tokens_and_their_text_mentions_together():
    tokens = _knowledge_row()
    gen = torch.Generator().manual_seed(0)
    ex = uktp_mask(tokens, 200, gen, MLMConfig(ratio=0.15), segments=torch.zeros_like(tokens), kg_prob=1.0)
    joint = [2, 3, 10, 11, 19, 20, 7, 17]  # HEAD in the triple and both mentions, TAIL in the triple and its mention
    assert sorted(torch.nonzero(ex.knowledge[0]).flatten().tolist()) == sorted(joint)
    assert (ex.inputs[0, joint] == MASK_ID).all() and (ex.targets[0, joint] == tokens[0, joint]).all()
    assert not ex.knowledge[0, [5, 14, 15]].any()  # the relation and the near miss are not knowledge-masked
    assert (ex.inputs[tokens < NUM_SPECIAL] == tokens[tokens < NUM_SPECIAL]).all()  # delimiters never masked
    rest = (ex.targets != IGNORE) & ~ex.knowledge  # BERT masking of round(0.15 x the other eligible tokens)
    eligible_rest = int(((tokens >= NUM_SPECIAL) & ~ex.knowledge).sum())
    assert int(rest.sum()) == round(0.15 * eligible_rest)
    none = uktp_mask(tokens, 200, torch.Generator().manual_seed(0), segments=torch.zeros_like(tokens), kg_prob=0.0)
    assert not none.knowledge.any() and none.n_targets == round(0.15 * int((tokens >= NUM_SPECIAL).sum()))
    again = uktp_mask(tokens, 200, torch.Generator().manual_seed(0), segments=torch.zeros_like(tokens), kg_prob=1.0)
    assert torch.equal(again.inputs, ex.inputs)  # deterministic per generator


# ----------------------------------------------------------------------------- objective


def _setup(n_layer: int = 3, **kwargs):
    obj = build_objective("ernie3", **kwargs)
    cfg = TransformerConfig(vocab_size=200, max_seq_len=32, n_layer=n_layer, n_head=2, d_model=32, heads=obj.heads)
    torch.manual_seed(0)
    model = cfg.build()
    obj.configure(vocab_size=200, seq_len=32, total_steps=10, seed=0)
    tokens = torch.cat([_knowledge_row(), torch.randint(NUM_SPECIAL, 200, (1, 32), generator=torch.Generator()
                                                        .manual_seed(1))])
    batch = Batch(tokens=tokens, segments=torch.zeros_like(tokens), positions=torch.arange(32).expand(2, 32).clone(),
                  attention="document", n_tokens=64)
    obj.begin_step(0)
    return obj, model, obj.prepare(batch)


def _grads(model, loss) -> dict[str, bool]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()}


def test_backbone_gets_gradients_from_both_losses_and_each_module_only_from_its_own():
    obj, model, prepared = _setup(n_layer=3, nlg_layers=1, kg_prob=1.0)
    nlu = _grads(model, obj.nlu_loss(model, prepared))
    nlg = _grads(model, obj.nlg_loss(model, prepared))
    shared = [n for n in nlu if n.startswith(("backbone.tok_emb", "backbone.blocks.0.", "backbone.blocks.1."))]
    nlg_module = [n for n in nlu if n.startswith(("backbone.blocks.2.", "backbone.norm"))]
    nlu_module = [n for n in nlu if n.startswith("heads.task_module.")]
    assert shared and nlg_module and nlu_module and len(shared) + len(nlg_module) + len(nlu_module) == len(nlu)
    assert all(nlu[n] and nlg[n] for n in shared)
    assert all(nlu[n] and not nlg[n] for n in nlu_module)
    assert all(nlg[n] and not nlu[n] for n in nlg_module)
    total, metrics = obj.loss(model, prepared)
    scale = prepared.extra["nlu_scale"]
    assert float(total.detach()) == pytest.approx(float(metrics["nlg_loss_sum"] + metrics["nlu_loss_sum"]), rel=1e-6)
    nlu_sum = float(obj.nlu_loss(model, prepared).detach())
    assert float(metrics["nlu_loss_sum"]) == pytest.approx(scale * nlu_sum, rel=1e-5)
    assert float(metrics["kg_masked"]) == 8.0  # the joint positions of the knowledge row
    causal = Batch(tokens=prepared.tensors["tokens"], segments=torch.zeros(2, 32, dtype=torch.long),
                   positions=torch.arange(32).expand(2, 32).clone(), attention="causal", n_tokens=64)
    p = obj.prepare(causal)  # one stream per row (data.attention: causal): no segments reach the model
    assert "segments" not in p.tensors and torch.isfinite(obj.loss(model, p)[0])
    with pytest.raises(ValueError, match=r"nlg_layers \(3\) must be below model.n_layer \(3\)"):
        build_objective("ernie3", nlg_layers=3).shared_layers(model)
    with pytest.raises(ValueError, match="train.objective_args.nlu_ratio"):
        build_objective("ernie3", nlu_ratio=0)


def test_nlu_path_sees_the_future_and_nlg_path_does_not():
    obj, model, _ = _setup()
    model.eval()
    a = torch.randint(NUM_SPECIAL, 200, (1, 16), generator=torch.Generator().manual_seed(3))
    b = a.clone()
    b[0, 12] = (a[0, 12] + 1 - NUM_SPECIAL) % (200 - NUM_SPECIAL) + NUM_SPECIAL  # change a later token
    with torch.no_grad():
        nlu_a, nlu_b = obj.nlu_logits(model, a), obj.nlu_logits(model, b)
        nlg_a, nlg_b = model(a), model(b)  # the NLG path is the model itself (what generation and export use)
    assert (nlu_a[0, :12] - nlu_b[0, :12]).abs().max() > 1e-4
    assert torch.equal(nlg_a[0, :12], nlg_b[0, :12])
    assert (nlg_a[0, 12:] - nlg_b[0, 12:]).abs().max() > 1e-4


# ----------------------------------------------------------------------------- end to end


def write_play_corpus(path: Path, n_docs: int = 120, seed: int = 0) -> Path:
    """Scene-like documents: speaker labels (a few speakers per play) and Markov-ish lines, with play metadata."""
    rng = random.Random(seed)
    names = ["ROMEO", "JULIET", "NURSE", "TYBALT", "HAMLET", "OPHELIA", "HORATIO", "KING", "QUEEN", "GHOST"]
    words = ["love", "night", "sword", "crown", "blood", "sweet", "death", "fair", "heart", "sleep", "dream", "king"]
    with open(path, "w") as f:
        for i in range(n_docs):
            play = ["romeo_and_juliet", "hamlet"][i % 2]
            cast = names[:4] if play == "romeo_and_juliet" else names[4:]
            lines = []
            for _ in range(rng.randint(6, 14)):
                who = rng.choice(cast)
                w = [rng.choice(words)]
                for _ in range(rng.randint(3, 8)):
                    w.append(words[(words.index(w[-1]) * 5 + rng.choice((1, 2))) % len(words)])
                lines.append(f"{who}.\n{' '.join(w).capitalize()}.\n")
            f.write(json.dumps({"id": f"{play}/{i}", "text": "\n".join(lines), "play": play,
                                "title": play.replace("_", " ").title()}) + "\n")
    return path


def ernie3_overrides(corpus: Path, steps: int) -> list[str]:
    return [f"corpus.sources=[{{kind: jsonl, path: '{corpus}'}}]", "corpus.min_chars=20", "corpus.val_fraction=0.1",
            "corpus.steps=[{step: normalize}, {step: knowledge_triples}]", "tokenizer.vocab_size=512",
            "data.seq_len=64", "model.n_layer=3", "model.n_head=2", "model.d_model=32", f"train.steps={steps}",
            "train.batch_tokens=512", "train.micro_batch_size=8", "train.warmup_steps=2", "train.lr=3e-3",
            "train.log_every=1", "train.eval_every=1000", "train.eval_sequences=4", "train.checkpoint_every=1000",
            "train.threads=1", "train.objective=ernie3",
            "train.objective_args={nlg_layers: 1, nlu_layers: 1, nlu_ratio: 0.5, kg_prob: 0.5}"]


def test_short_training_lowers_both_losses_on_a_knowledge_corpus(tmp_path):
    from tokenizers import Tokenizer

    from kiln.data.shards import open_split

    corpus = write_play_corpus(tmp_path / "plays.jsonl")
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", ernie3_overrides(corpus, steps=40)), run, until="train")
    # the tokenizer keeps the delimiters, and speakers in the block are found again as speaker labels in the text
    tok = Tokenizer.from_file(str(run.stage("tokenizer") / "tokenizer.json"))
    shards = open_split(run.stage("tokens"), "train")
    doc = torch.as_tensor(shards.doc(0).astype("int64"))[None]
    ents = find_knowledge(doc)
    assert ents and all(e.mentions for e in ents if tok.decode(list(e.tokens)) in ("ROMEO", "HAMLET", "NURSE"))
    assert sum(len(e.mentions) for e in ents) >= 4
    # the checkpoint rebuilds the NLU module (config.heads); the NLG path is the loaded model itself
    from kiln.model.load import load_model

    model = load_model(run.stage("train"))
    assert set(model.heads) == {"task_module"} and len(model.heads["task_module"].stack.blocks) == 1
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    first, last = train[0], train[-5:]
    nlg_end = sum(r["nlg_loss_per_target"] for r in last) / len(last)
    nlu_end = sum(r["nlu_loss_per_target"] for r in last) / len(last)
    assert first["kg_masked_per_target"] > 0
    assert nlg_end < first["nlg_loss_per_target"] - 1.0, (first, last)
    assert nlu_end < first["nlu_loss_per_target"] - 1.0, (first, last)


@pytest.mark.slow
def test_two_ddp_ranks_match_one_process(tmp_path):
    """tests/dist_objectives.py with ernie3 only: 2 gloo DDP ranks give one process's per-step losses."""
    from synthetic import tiny_overrides, write_jsonl_corpus
    from test_distributed import free_port

    ref = RunDir(tmp_path / "ref")
    run_pipeline(load_recipe("demo", tiny_overrides(write_jsonl_corpus(tmp_path / "docs.jsonl"), steps=2)), ref,
                 until="tokens")
    env = {**os.environ, "KILN_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    script = [str(REPO / "tests" / "dist_objectives.py"), str(ref.root)]
    losses = {}
    for name, launcher in (("single", [sys.executable]), ("ddp", [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"])):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([*launcher, *script, str(out), name, "ernie3"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        losses[name] = json.loads(out.read_text())["ernie3"]
    want, got = losses["single"], losses["ddp"]
    assert len(want) == 4 and sorted(got) == sorted(want)
    assert max(abs(got[s] - want[s]) / abs(want[s]) for s in want) <= 1e-5, (got, want)
