"""MiniLM last-layer attention and value-relation distillation (issue 15 item 2; spec §10 (d)): loss 0 for
teacher = student, works at unequal width with equal head counts (refused otherwise, naming both), the
relation masks agree with the model's own attention, and the attention KL falls >= 50% within 200 steps."""

from __future__ import annotations

import copy

import pytest
import torch

from kiln.data.loader import Batch
from kiln.model.config import TransformerConfig
from kiln.objectives import build_objective
from kiln.objectives.minilm import visibility

V = 150


def tiny(seed: int, d_model: int = 32, n_head: int = 2, n_layer: int = 2, std: float = 0.02, **kw):
    torch.manual_seed(seed)
    return TransformerConfig(vocab_size=V, max_seq_len=32, n_layer=n_layer, n_head=n_head, d_model=d_model,
                             init_std=std, **kw).build()


def batch(seed: int, attention: str = "causal", rows: int = 4) -> Batch:
    t = torch.randint(0, V, (rows, 32), generator=torch.Generator().manual_seed(seed))
    seg = torch.zeros_like(t)
    pos = torch.arange(32).expand(rows, 32).clone()
    if attention == "document":  # two documents in row 0, padding at the end of the last row
        seg[0, 12:] = 1
        pos[0, 12:] -= 12
    seg[-1, 27:] = -1
    return Batch(tokens=t, segments=seg, positions=pos, attention=attention, n_tokens=int((seg >= 0).sum()))


def minilm(teacher, **kwargs):
    obj = build_objective("minilm", teacher="in-memory", **kwargs)
    obj.configure(vocab_size=V, seq_len=32, total_steps=200, seed=0)
    obj.add_frozen("teacher", teacher)
    return obj


@pytest.mark.parametrize("attention", ["causal", "document"])
def test_loss_is_zero_when_the_teacher_is_the_student(attention):
    student = tiny(0)
    obj = minilm(copy.deepcopy(student))
    loss, metrics = obj.loss(student, obj.prepare(batch(0, attention)))
    assert loss.item() == 0.0
    assert metrics["minilm_att_kl_sum"].item() == 0.0 and metrics["minilm_vr_kl_sum"].item() == 0.0


@pytest.mark.parametrize("attention", ["causal", "document"])
def test_relation_mask_is_the_models_own_attention_mask(attention):
    model = tiny(0)
    b = batch(1, attention)
    p = minilm(copy.deepcopy(model)).prepare(b)
    t = p.tensors
    out = model.backbone(t["tokens"], positions=t["positions"], segments=t.get("segments"), attention="causal",
                         output_attentions=True)
    seg = b.segments if attention == "document" else torch.where(b.segments >= 0, 0, -1)
    visible = visibility(seg, "causal").expand_as(out.attentions[-1])
    real = (b.segments >= 0)[:, None, :, None].expand_as(visible)
    assert torch.all(out.attentions[-1][real & ~visible] == 0)  # nothing the relations hide is attended
    assert torch.all(out.attentions[-1][real & visible] > 0)


def test_unequal_width_with_equal_heads_trains_the_student_and_mismatched_heads_are_refused():
    student, teacher = tiny(0, d_model=32), tiny(1, d_model=64, std=0.1)
    obj = minilm(teacher, ce_weight=0.5)
    loss, metrics = obj.loss(student, obj.prepare(batch(0)))
    assert torch.isfinite(loss) and metrics["minilm_att_kl_sum"] > 0 and metrics["minilm_vr_kl_sum"] > 0
    loss.backward()
    assert student.backbone.blocks[-1].attn.wq.weight.grad.abs().sum() > 0
    assert all(q.grad is None for q in teacher.parameters())
    four = minilm(tiny(2, d_model=64, n_head=4))
    with pytest.raises(ValueError, match="the teacher has 4 heads, the student 2"):
        four.loss(student, four.prepare(batch(0)))


@pytest.mark.slow
def test_attention_kl_falls_by_half_within_200_steps():
    """Teacher 64 wide, student 32 wide (1 layer, 2 heads each), random tokens. Measured on CPU: attention KL
    0.174 -> 0.066 (-62%), value-relation KL 1.04 -> 0.030 after 200 AdamW steps (lr 1e-2)."""
    torch.set_num_threads(1)
    student, teacher = tiny(0, n_layer=1), tiny(7, d_model=64, std=0.1, n_layer=1)
    obj = minilm(teacher)
    fixed = obj.prepare(batch(999, rows=8))

    def kls() -> tuple[float, float]:
        with torch.no_grad():
            _, m = obj.loss(student, fixed)
        return m["minilm_att_kl_sum"].item() / fixed.n_targets, m["minilm_vr_kl_sum"].item() / fixed.n_targets

    att0, vr0 = kls()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    for step in range(200):
        obj.begin_step(step)
        p = obj.prepare(batch(step, rows=8))
        loss, _ = obj.loss(student, p)
        opt.zero_grad()
        (loss / p.n_targets).backward()
        opt.step()
    att, vr = kls()
    assert att <= 0.5 * att0, (att0, att)
    assert vr <= 0.5 * vr0, (vr0, vr)


def test_teacher_assistant_has_the_teachers_depth_at_the_students_width():
    """Two stages (teacher -> assistant -> student): the assistant is the teacher's depth at the student's width; it
    distils from the teacher, and the student from it. Measured (2-layer teacher 64 wide, random tokens, 60 steps
    each): assistant-to-teacher attention KL 44.5 -> 34.0, student-to-trained-assistant 0.40 -> 0.27; the student's
    KL to the teacher itself barely moves (34.04 -> 33.95; distilled from the teacher directly: 33.73), the floor of
    this random-token toy."""
    from kiln.objectives.minilm import assistant_config

    torch.set_num_threads(1)
    teacher, student = tiny(7, d_model=64, std=0.1, n_layer=2), tiny(0, n_layer=1)
    cfg = assistant_config(teacher.config, student.config)
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.ffn_hidden) == (2, 32, 2, student.config.ffn_hidden)
    with pytest.raises(ValueError, match="the teacher has 2 heads, the student 4"):
        assistant_config(teacher.config, tiny(0, n_head=4).config)
    torch.manual_seed(3)
    assistant = cfg.build()
    fixed = batch(999, rows=8)

    def kl_to(model, reference) -> float:
        obj = minilm(copy.deepcopy(reference))  # add_frozen freezes its module: keep the reference trainable
        with torch.no_grad():
            _, m = obj.loss(model, obj.prepare(fixed))
        return m["minilm_att_kl_sum"].item()

    def distil(model, reference, steps: int = 60) -> None:
        obj = minilm(copy.deepcopy(reference))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(steps):
            p = obj.prepare(batch(step, rows=8))
            loss, _ = obj.loss(model, p)
            opt.zero_grad()
            (loss / p.n_targets).backward()
            opt.step()

    ta_before, s_before = kl_to(assistant, teacher), kl_to(student, teacher)
    distil(assistant, teacher)
    ta_after, s_ta_before = kl_to(assistant, teacher), kl_to(student, assistant)
    distil(student, assistant)
    assert ta_after < 0.85 * ta_before, (ta_before, ta_after)
    assert kl_to(student, assistant) < 0.8 * s_ta_before, s_ta_before
    assert kl_to(student, teacher) <= s_before
