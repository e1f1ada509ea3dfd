"""Mixture-of-experts MLPs (kiln/model/moe.py), the moe_aux callback and the Mixtral export."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kiln.model.config import TransformerConfig
from kiln.model.moe import MoEMLP, balance_loss, capacity_keep, enforced_routing, moe_layers, upcycle, z_loss
from kiln.model.transformer import SwiGLU


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls: one thread (many threads on a loaded machine make them ~10x slower); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg(**moe) -> TransformerConfig:
    return TransformerConfig(vocab_size=97, max_seq_len=32, n_layer=2, n_head=2, d_model=32, ffn_hidden=48,
                             moe={"n_experts": 4, "top_k": 2, **moe})


def dense_cfg() -> TransformerConfig:
    return TransformerConfig(vocab_size=97, max_seq_len=32, n_layer=2, n_head=2, d_model=32, ffn_hidden=48)


# ----------------------------------------------------------------------------- equivalence at init


def test_moe_equals_dense_mlp_when_experts_are_copies():
    torch.manual_seed(0)
    c = cfg()
    dense, moe = SwiGLU(c), MoEMLP.from_config(c)
    x = torch.randn(3, 16, 32)
    assert (moe(x) - dense(x)).abs().max() > 1e-3  # independent experts: a different function
    moe.load_dense(dense)
    torch.nn.init.normal_(moe.router.weight, std=1.0)  # a non-trivial routing: weights renormalised to 1 anyway
    got = moe(x)
    assert int((moe.stats.counts > 0).sum()) == 4  # every expert used, with unequal top-2 probabilities
    torch.testing.assert_close(got, dense(x), atol=1e-6, rtol=1e-5)


def test_upcycled_model_has_the_dense_models_logits():
    torch.manual_seed(0)
    dense, moe = dense_cfg().build(), cfg(every=1).build()
    tokens = torch.randint(0, 97, (2, 32))
    assert (moe(tokens) - dense(tokens)).abs().max() > 1e-3
    upcycle(moe, dense)
    torch.testing.assert_close(moe(tokens), dense(tokens), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="upcycle: the MoE model has 2 layers, the dense model 4"):
        upcycle(moe, TransformerConfig(vocab_size=97, max_seq_len=32, n_layer=4, n_head=2, d_model=32).build())
    with pytest.raises(ValueError, match=r"mlp.w_gate.weight is \(48, 32\) in the MoE model, \(128, 32\)"):
        upcycle(cfg(every=2).build(), TransformerConfig(vocab_size=97, max_seq_len=32, n_layer=2, n_head=2,
                                                        d_model=32).build())


def test_every_places_experts_and_init_scales_residual_projections():
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=97, max_seq_len=32, n_layer=4, n_head=2, d_model=32,
                              moe={"n_experts": 3, "top_k": 1, "every": 2}).build()
    kinds = [type(b.mlp).__name__ for b in model.backbone.blocks]
    assert kinds == ["SwiGLU", "MoEMLP", "SwiGLU", "MoEMLP"]
    std = 0.02 / math.sqrt(2 * 4)
    for expert in model.backbone.blocks[1].mlp.experts:
        assert abs(float(expert.w_down.weight.detach().std()) - std) < 0.3 * std  # GPT-2 residual scaling
        assert abs(float(expert.w_up.weight.detach().std()) - 0.02) < 0.3 * 0.02


# ----------------------------------------------------------------------------- one optimizer step


def _step(module, x, lr=1e-2):
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    out = module(x)
    stats = module.stats if isinstance(module, MoEMLP) else None
    loss = out.pow(2).mean() + (stats.balance + stats.z if stats is not None else 0.0)
    loss.backward()
    opt.step()
    changed = {n: not torch.equal(before[n], p.detach()) for n, p in module.named_parameters()}
    return changed, stats


def test_step_changes_only_routed_experts_and_the_router():
    torch.manual_seed(0)
    moe = MoEMLP(32, 48, n_experts=4, top_k=1)
    with torch.no_grad():  # tokens with positive features never pick experts 2 and 3
        moe.router.weight[2:].fill_(-1.0)
    x = torch.rand(2, 8, 32)
    changed, stats = _step(moe, x)
    counts = stats.counts.tolist()
    assert counts[2] == counts[3] == 0 and counts[0] > 0 and counts[1] > 0, counts
    for e in range(4):
        for name in ("w_gate", "w_up", "w_down"):
            assert changed[f"experts.{e}.{name}.weight"] == (counts[e] > 0), (e, name)
    assert changed["router.weight"]


def test_enforced_routing_sends_every_token_to_its_domain_expert():
    torch.manual_seed(0)
    model = cfg(top_k=2).build()
    tokens = torch.randint(0, 97, (2, 16))
    domain = torch.tensor([1, 3])  # row 0 -> expert 1, row 1 -> expert 3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    with enforced_routing(model, domain):
        model(tokens).float().logsumexp(-1).mean().backward()
    opt.step()
    for layer in moe_layers(model):
        assert layer.stats.counts.tolist() == [0, 16, 0, 16] and float(layer.stats.balance) == 0.0
        assert layer.forced is None  # released after the block
    for name, p in model.named_parameters():
        if ".mlp." in name:
            routed = ".experts.1." in name or ".experts.3." in name
            assert (not torch.equal(before[name], p.detach())) == routed, name  # router: unused, unchanged
    # a row's output depends only on its own expert: equals the dense MLP made of that expert alone
    layer = moe_layers(model)[0]
    x = torch.randn(2, 5, 32)
    with enforced_routing(model, torch.tensor([[2] * 5, [0] * 5])):
        got = layer(x)
    torch.testing.assert_close(got[0], layer.experts[2](x[0]))
    torch.testing.assert_close(got[1], layer.experts[0](x[1]))


def test_enforced_routing_beats_dense_on_two_conflicting_domains():
    """Spec §5 (d): two domains whose targets conflict (the same inputs, opposite maps). Upcycled from the same
    dense MLP, a 2-expert layer with one expert per domain fits both; the dense MLP cannot separate them."""
    torch.manual_seed(0)
    dense = SwiGLU(TransformerConfig(vocab_size=8, max_seq_len=8, n_layer=1, n_head=1, d_model=16, ffn_hidden=32))
    moe = MoEMLP(16, 32, n_experts=2, top_k=1)
    moe.load_dense(dense)
    x = torch.randn(2, 32, 16)
    target = torch.tanh(x @ torch.randn(16, 16) / 4)
    target = torch.stack([target[0], -target[1]])  # domain 0: f(x); domain 1: -f(x)
    domains = torch.tensor([0, 1])

    def fit(module, routed: bool) -> list[float]:
        opt = torch.optim.Adam(module.parameters(), lr=1e-2)
        for _ in range(60):
            if routed:
                moe.forced = domains
            err = (module(x) - target).pow(2)
            moe.forced = None
            opt.zero_grad()
            err.mean().backward()
            opt.step()
        return err.detach().mean(dim=(1, 2)).tolist()

    dense_mse, moe_mse = fit(dense, False), fit(moe, True)
    assert all(m < 0.5 * d for m, d in zip(moe_mse, dense_mse, strict=True)), (moe_mse, dense_mse)


def test_enforced_routing_refuses_bad_ids():
    model = cfg().build()
    tokens = torch.randint(0, 97, (2, 8))
    bad = torch.tensor([0, 4])
    with pytest.raises(ValueError, match=r"expert ids must be in \[0, 4\)"), enforced_routing(model, bad):
        model(tokens)
    with pytest.raises(ValueError, match="must have shape"), enforced_routing(model, torch.zeros(3, dtype=torch.long)):
        model(tokens)
    with pytest.raises(ValueError, match="has none"), enforced_routing(dense_cfg().build(), torch.tensor([0, 1])):
        pass


# ----------------------------------------------------------------------------- auxiliary losses, capacity


def test_aux_losses_on_hand_made_routing():
    E, N = 4, 8
    uniform = torch.full((N, E), 1 / E)
    balanced = torch.arange(N).remainder(E)[:, None]  # each expert chosen by N / E tokens
    assert float(balance_loss(uniform, balanced, E)) == pytest.approx(1.0)  # the value at perfect balance
    collapsed = torch.zeros(N, E)
    collapsed[:, 0] = 1.0
    assert float(balance_loss(collapsed, torch.zeros(N, 1, dtype=torch.long), E)) == pytest.approx(E)  # worst
    top2 = torch.stack([balanced[:, 0], (balanced[:, 0] + 1) % E], dim=1)
    assert float(balance_loss(uniform, top2, E)) == pytest.approx(1.0)  # normalised by k
    assert float(z_loss(torch.zeros(N, E))) == pytest.approx(math.log(E) ** 2)
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    assert float(z_loss(logits)) == pytest.approx(float(torch.logsumexp(logits, -1)) ** 2)
    # through the layer: a zero router gives uniform probabilities, so balance = 1 whatever the top-k ties pick
    moe = MoEMLP(32, 48, n_experts=E, top_k=2)
    torch.nn.init.zeros_(moe.router.weight)
    with torch.no_grad():
        moe(torch.randn(1, N, 32))
    assert float(moe.stats.balance) == pytest.approx(1.0) and float(moe.stats.z) == pytest.approx(math.log(E) ** 2)


def test_capacity_drops_in_training_only_and_counts_the_drops():
    top = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])  # expert 0: 3 first choices + 1 second choice
    keep = capacity_keep(top, 4, capacity=2)
    # first choices first (tokens 0, 1 keep expert 0; token 2 does not), then token 3's second choice is dropped
    assert keep.tolist() == [[True, True], [True, True], [False, True], [True, False]]
    torch.manual_seed(0)
    moe = MoEMLP(32, 48, n_experts=4, top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0].fill_(1.0)  # positive features: everything prefers expert 0
    x = torch.rand(1, 8, 32)
    out = moe.train()(x)
    assert moe.stats.counts.tolist() == [2, 0, 0, 0] and int(moe.stats.dropped) == 6  # capacity ceil(8 / 4) = 2
    assert out[0, 2:].abs().max() == 0 and out[0, :2].abs().min() > 0  # dropped tokens get 0 (the residual stays)
    moe.eval()(x)
    assert moe.stats.counts.tolist() == [8, 0, 0, 0] and int(moe.stats.dropped) == 0  # inference never drops


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"moe.top_k \(5\) must be <= moe.n_experts \(4\)"):
        cfg(top_k=5)
    with pytest.raises(ValueError, match="moe.experts: unknown key"):
        cfg(experts=2)
    with pytest.raises(ValueError, match=r"moe.every \(3\) must be <= n_layer \(2\)"):
        cfg(every=3)
    with pytest.raises(ValueError, match="capacity_factor"):
        cfg(capacity_factor=0)
    c = cfg()
    assert c.moe["expert_hidden"] == 48 and TransformerConfig.from_dict(c.to_dict()) == c  # config.json round trip


# ----------------------------------------------------------------------------- export


def test_mixtral_export_matches_logits_and_refuses_dense_layers(tmp_path):
    from transformers import AutoModelForCausalLM

    from kiln.model.hf import ExportError, export_hf

    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=97, max_seq_len=32, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                              tie_embeddings=False, moe={"n_experts": 4, "top_k": 2, "capacity_factor": 1.0}).build()
    for layer in moe_layers(model):
        torch.nn.init.normal_(layer.router.weight, std=0.5)  # routing that matters
    summary = export_hf(model, tmp_path / "hf")
    assert summary["architecture"] == "MixtralForCausalLM" and summary["max_logit_diff"] < 1e-5
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        diff = (hf(input_ids=tokens).logits - model.eval()(tokens)).abs().max().item()
    assert diff < 1e-5
    with pytest.raises(ExportError, match="moe.every=2: MixtralForCausalLM has experts in every layer"):
        export_hf(cfg(every=2).build(), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory):
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides, write_jsonl_corpus

    root = tmp_path_factory.mktemp("moe")
    corpus = write_jsonl_corpus(root / "docs.jsonl", n_docs=60)
    overrides = [*tiny_overrides(corpus, steps=6), "model.moe={n_experts: 4, top_k: 2, capacity_factor: 1.0}",
                 "train.callbacks=[{name: 'kiln.train.moe_aux:MoEAux'}]", "train.eval_every=100"]
    run = RunDir(root / "run")
    run_pipeline(load_recipe("demo", overrides), run, until="train")
    (root / "overrides.json").write_text(json.dumps(overrides))  # for the torchrun comparison
    return run


def test_training_logs_aux_losses_and_expert_utilisation(moe_run):
    from kiln.model.load import load_model

    rows = [json.loads(line) for line in moe_run.metrics_path.read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 6
    for r in train:
        assert len(r["moe_tokens"]) == 2 and all(len(layer) == 4 for layer in r["moe_tokens"])
        # 2 layers x 512 positions per step x top-2, minus the assignments the capacity cap dropped
        routed = sum(map(sum, r["moe_tokens"]))
        assert routed == pytest.approx(2048 * (1 - r["moe_dropped"]), abs=1e-6)
        assert 1.0 <= r["moe_load_max"] <= 4.0 and r["moe_balance"] >= 0.99 and r["moe_z"] > 0
    model = load_model(moe_run.stage("train"))
    assert model.config.moe["n_experts"] == 4 and len(moe_layers(model)) == 2  # the checkpoint rebuilds the experts


def test_moe_aux_adds_the_weighted_losses():
    from types import SimpleNamespace

    from kiln.train.callbacks import TrainState
    from kiln.train.moe_aux import MoEAux

    torch.manual_seed(0)
    model = cfg(aux_loss_weight=0.5, z_loss_weight=0.25).build()
    cb = MoEAux()
    state = TrainState(0, model, None, None)
    cb.on_train_begin(state)
    with torch.no_grad():
        model(torch.randint(0, 97, (2, 16)))
    layers = moe_layers(model)
    want = 0.5 * sum(float(m.stats.balance) for m in layers) / 2 + 0.25 * sum(float(m.stats.z) for m in layers) / 2
    got = cb.micro_loss(state, SimpleNamespace(n_targets=10), torch.tensor(3.0))
    assert float(got) == pytest.approx(3.0 + 10 * want, rel=1e-6)
    with pytest.raises(RuntimeError, match="recorded no routing"):  # stats are consumed once
        cb.micro_loss(state, SimpleNamespace(n_targets=10), torch.tensor(3.0))
    with pytest.raises(ValueError, match="no mixture-of-experts layers"):
        MoEAux().on_train_begin(TrainState(0, dense_cfg().build(), None, None))


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(moe_run, tmp_path, strategy):
    """2 gloo ranks (DDP, FSDP2) at the same global batch: the same per-step losses and expert counts as one
    process (aux losses and the capacity cap act per micro-batch, and each rank reads whole micro-batches)."""
    from kiln.run import RunDir
    from tests.test_distributed import _copy_tokens, assert_same_curve, torchrun_train, train_losses

    overrides = json.loads((moe_run.root.parent / "overrides.json").read_text())
    run = _copy_tokens(moe_run, tmp_path / strategy)
    torchrun_train([*overrides, f"parallel.strategy={strategy}"], run.root)
    assert_same_curve(train_losses(run), train_losses(moe_run))

    def tokens(r: RunDir) -> list:
        return [row["moe_tokens"] for row in map(json.loads, r.metrics_path.read_text().splitlines())
                if row["kind"] == "train"]

    assert tokens(run) == tokens(moe_run)


def test_balancing_loss_spreads_a_collapsed_router():
    """A router that sends every token to expert 0: training on a toy regression with the balancing loss spreads
    the tokens over the experts; without it the router stays collapsed (the loss must earn the difference)."""

    def train(weight: float, steps: int = 20) -> list[int]:
        torch.manual_seed(0)
        moe = MoEMLP(16, 32, n_experts=4, top_k=1)
        with torch.no_grad():
            moe.router.weight[0].fill_(0.3)
        x = torch.randn(1, 64, 16) + 1.0  # positive features: expert 0 wins every token at the start
        y = torch.sin(2 * x).flip(-1)
        opt = torch.optim.Adam(moe.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = (moe(x) - y).pow(2).mean() + weight * moe.stats.balance
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            moe(x)
        return moe.stats.counts.tolist()

    without, with_balance = train(0.0), train(1.0)
    load = [max(c) * 4 / sum(c) for c in (without, with_balance)]  # busiest expert's share over the even share
    assert load[0] > 3.5 and load[1] < 2.0, (without, with_balance)


def test_implied_callbacks_add_moe_aux_once():
    from kiln.train.moe_aux import MoEAux, implied_callbacks

    assert [type(cb) for cb in implied_callbacks(cfg(), [])] == [MoEAux]
    assert implied_callbacks(cfg(), [MoEAux()]) == [] and implied_callbacks(dense_cfg(), []) == []
