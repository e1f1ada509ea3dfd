"""Enforced routing by document domain from a recipe: tokens.domain_field -> Batch.domains -> train.route_by_domain
(kiln/data/domains.py, kiln/train/domain_routing.py; Hallee et al. 2024, arXiv:2401.15713)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tests.synthetic import tiny_overrides, write_jsonl_corpus


def write_reversed_corpus(path, n_docs: int, seed: int):
    """A second domain: the same vocabulary with every line's words reversed and upper-cased."""
    rng = random.Random(seed)
    src = write_jsonl_corpus(path.with_suffix(".src"), n_docs, seed)
    with open(path, "w") as f:
        for line in src.read_text().splitlines():
            row = json.loads(line)
            lines = [" ".join(reversed(s.split())).upper() for s in row["text"].splitlines()]
            rng.shuffle(lines)
            f.write(json.dumps({"id": row["id"], "text": "\n".join(lines)}) + "\n")
    return path


def routed_overrides(root, steps: int = 30) -> list[str]:
    a = write_jsonl_corpus(root / "alpha.jsonl", n_docs=60, seed=0)
    b = write_reversed_corpus(root / "beta.jsonl", n_docs=60, seed=1)
    return [*tiny_overrides(a, steps=steps),
            f"corpus.sources=[{{kind: jsonl, path: '{a}', name: alpha}}, {{kind: jsonl, path: '{b}', name: beta}}]",
            "tokens.domain_field=source", "model.moe={n_experts: 2, top_k: 1}", "train.route_by_domain=true",
            "train.eval_every=100", "train.lr=3e-3"]


@pytest.fixture(scope="module")
def routed_run(tmp_path_factory):
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline

    root = tmp_path_factory.mktemp("route")
    overrides = routed_overrides(root)
    run = RunDir(root / "run")
    run_pipeline(load_recipe("demo", overrides), run, until="eval")
    (root / "overrides.json").write_text(json.dumps(overrides))
    return run


def test_tokens_carry_each_documents_domain(routed_run):
    import pyarrow.parquet as pq

    from kiln.data.domains import load_doc_domains, read_domain_names
    from kiln.data.loader import PackedLoader
    from kiln.data.packing import pack
    from kiln.data.shards import open_split

    tokens = routed_run.stage("tokens")
    assert read_domain_names(tokens) == ["alpha", "beta"]
    split = open_split(tokens, "train")
    ids = load_doc_domains(split)
    sources = pq.read_table(routed_run.stage("corpus") / "train-00000.parquet", columns=["source"]).column(0)
    assert ids.tolist() == [["alpha", "beta"].index(s) for s in sources.to_pylist()]
    assert set(ids.tolist()) == {0, 1}

    packing = pack(split.doc_lengths(), 64, "best_fit")
    batch = PackedLoader(split, packing, pad_id=0, doc_domains=ids).rows(np.arange(8))
    doc_of = {}  # every real token's domain is its document's: rebuild from the packing rows
    rows = PackedLoader(split, packing, pad_id=0).packing_rows(np.arange(8))
    for b, r in enumerate(rows.tolist()):
        col = 0
        for doc, _start, length in packing.row(r):
            doc_of[b, col] = (doc, length)
            assert (batch.domains[b, col:col + length] == ids[doc]).all()
            col += length
        assert (batch.domains[b, col:] == -1).all()  # padding
    assert doc_of
    assert PackedLoader(split, packing, pad_id=0).rows(np.arange(2)).domains is None  # without ids: none


def test_training_routes_every_token_to_its_domain_expert(routed_run):
    rows = [json.loads(line) for line in routed_run.metrics_path.read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 30
    for r in train:
        alpha, beta = r["moe_tokens"][0]
        assert r["moe_tokens"][1] == [alpha, beta]  # every layer routes the same tokens to the same expert
        assert alpha + beta == 512  # every position once (padding goes to expert 0)
        assert r["moe_balance"] == 0 and r["moe_z"] == 0  # the router does not route
    assert sum(r["moe_tokens"][0][1] for r in train) > 0.3 * 512 * 30  # beta's share of the corpus reached expert 1
    route = [r["moe_route"] for r in train]
    assert route[-1] < 0.5 * route[0], route  # the router learns to tell the domains apart
    metrics = json.loads((routed_run.stage("eval") / "metrics.json").read_text())
    assert np.isfinite(metrics["val_bpb"])


def test_the_trained_router_predicts_the_domain_without_ids(routed_run):
    """Used without metadata (generation, tasks, export), the model routes each token to its domain's expert."""
    from kiln.data.domains import load_doc_domains
    from kiln.data.loader import iter_eval_batches
    from kiln.data.packing import pack
    from kiln.data.shards import open_split
    from kiln.model.load import load_model
    from kiln.model.moe import enforced_routing, moe_layers

    model = load_model(routed_run.stage("train")).eval()
    val = open_split(routed_run.stage("tokens"), "val")
    batch = next(iter_eval_batches(val, pack(val.doc_lengths(), 64, "best_fit"), 0, "document", 16,
                                   doc_domains=load_doc_domains(val)))
    real = batch.domains >= 0
    layer = moe_layers(model)[0]
    seen = {}
    handle = layer.router.register_forward_hook(lambda m, inp, out: seen.setdefault("logits", out))
    with torch.no_grad():
        model(batch.tokens, positions=batch.positions, segments=batch.segments)  # no ids: the learned router
    handle.remove()
    choice = seen["logits"].argmax(-1).view(batch.tokens.shape)
    agree = float((choice[real] == batch.domains[real]).float().mean())
    assert agree > 0.85, agree  # a coin flip between the two experts would agree half of the time
    with torch.no_grad(), enforced_routing(model, batch.domains.clamp(min=0)):
        model(batch.tokens, positions=batch.positions, segments=batch.segments)
    assert layer.stats.route is not None and float(layer.stats.route) < 0.4


def test_configuration_errors_name_what_to_set(tmp_path):
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline

    base = routed_overrides(tmp_path, steps=2)
    with pytest.raises(ValueError, match="n_experts is 3 but the tokens have 2 domains"):
        run_pipeline(load_recipe("demo", [*base, "model.moe={n_experts: 3, top_k: 1}"]), RunDir(tmp_path / "a"),
                     until="train")
    with pytest.raises(ValueError, match="set tokens.domain_field"):
        run_pipeline(load_recipe("demo", [*base, "tokens.domain_field=null"]), RunDir(tmp_path / "b"), until="train")
    with pytest.raises(ValueError, match="set model.moe"):
        run_pipeline(load_recipe("demo", [*base, "model.moe=null"]), RunDir(tmp_path / "c"), until="train")
    with pytest.raises(ValueError, match="no column 'genre'"):
        run_pipeline(load_recipe("demo", [*base, "tokens.domain_field=genre"]), RunDir(tmp_path / "d"),
                     until="tokens")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(routed_run, tmp_path, strategy):
    """2 gloo ranks at the same global batch: the same per-step losses and expert counts as one process."""
    from tests.test_distributed import _copy_tokens, assert_same_curve, torchrun_train, train_losses

    overrides = json.loads((routed_run.root.parent / "overrides.json").read_text())
    run = _copy_tokens(routed_run, tmp_path / strategy)
    torchrun_train([*overrides, f"parallel.strategy={strategy}"], run.root)
    assert_same_curve(train_losses(run), train_losses(routed_run))

    def counts(r) -> list:
        return [(row["moe_tokens"], round(row["moe_route"], 5)) for row in
                map(json.loads, r.metrics_path.read_text().splitlines()) if row["kind"] == "train"]

    assert counts(run) == counts(routed_run)
