"""Reference outputs of small models, saved before the model seams (issue 11) changed the attention code.

``tests/data/model_logits_before_seams.json`` holds, for every tensor :func:`reference_outputs` returned with
the code as it was (generated once with ``python -m tests.model_reference``), the SHA-256 of its bytes (and its
sum and shape, to see how far a mismatch is), plus every config's parameter names. test_model_seams.py
recomputes them with the code as it is and requires identical hashes (bit-identical tensors) and names: the
default paths must not change. Weights come from ``torch.manual_seed``, so the file is tied to the CPU RNG
and kernels of the torch it was made with (2.13).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from kiln.model.config import TransformerConfig

REFERENCE = Path(__file__).with_name("data") / "model_logits_before_seams.json"

CONFIGS: dict[str, dict] = {
    "default": {},
    "gqa_untied": {"n_kv_head": 2, "tie_embeddings": False},
    "bidirectional": {"attention": "bidirectional"},
    "prefix": {"attention": "prefix"},
    "post": {"norm": "post"},
    "mix": {"norm": "mix", "mix_alpha": 0.5},
    "learned": {"positions": "learned"},
    "nopos": {"positions": "none"},
    "flex": {"attention_backend": "flex"},
    "heads": {"heads": {"mlm": {}, "rtd": {}}},
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=97, max_seq_len=32, n_layer=2, n_head=4, d_model=32, **CONFIGS[name])
    model = cfg.build().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.uniform_(0.5, 1.5)
    return model


def reference_outputs(configs: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """(tensors, parameter names per config) for ``configs`` (default: every config in CONFIGS).

    Computed on one CPU thread: the KV-cache path's kernels split work by thread count, and other tests
    change it, so bit identity only holds at a fixed count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference_outputs(configs)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _reference_outputs(configs: list[str] | None) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    from kiln.infer.generate import KVCache

    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 97, (2, 16), generator=gen)
    segments = torch.tensor([[0] * 6 + [1] * 7 + [-1] * 3, [0] * 16])
    positions = torch.cat([torch.arange(6), torch.arange(7), torch.arange(3)]).expand(2, 16).contiguous()
    prefix = torch.tensor([5, 9])
    explicit = torch.rand(2, 16, 16, generator=gen) > 0.5
    explicit |= torch.eye(16, dtype=torch.bool)
    out: dict[str, torch.Tensor] = {}
    names: dict[str, list[str]] = {}
    for name in configs or list(CONFIGS):
        model = build(name)
        names[name] = list(model.state_dict())
        out[f"{name}.plain"] = model(tokens)
        out[f"{name}.segmented"] = model(tokens, positions, segments)
        out[f"{name}.hidden"] = model.backbone(tokens, positions=positions, segments=segments)
        out[f"{name}.bidirectional"] = model(tokens, segments=segments, attention="bidirectional")
        out[f"{name}.prefix"] = model(tokens, attention="prefix", prefix=prefix)
        out[f"{name}.prefix_segmented"] = model(tokens, positions, segments, attention="prefix", prefix=prefix)
        out[f"{name}.explicit"] = model(tokens, mask=explicit)
        if model.config.attention == "causal":
            cache = KVCache.for_model(model, batch_size=2, max_len=16)
            steps = [model(tokens[:, :10], kv_cache=cache)]
            steps += [model(tokens[:, i : i + 1], kv_cache=cache) for i in range(10, 13)]
            steps.append(model(tokens[:, 13:16], kv_cache=cache))
            out[f"{name}.cached"] = torch.cat(steps, dim=1)
    return out, names


def digest(t: torch.Tensor) -> dict:
    """SHA-256 of the tensor's bytes, its sum and shape."""
    t = t.detach().contiguous().cpu()
    return {"sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest(), "sum": float(t.double().sum()),
            "shape": list(t.shape)}


def main() -> None:
    out, names = reference_outputs()
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    data = {"torch": torch.__version__, "tensors": {k: digest(v) for k, v in out.items()}, "names": names}
    REFERENCE.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(out)} digests to {REFERENCE}")


if __name__ == "__main__":
    main()
