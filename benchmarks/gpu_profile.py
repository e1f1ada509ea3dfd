"""Where a training step's time goes: the ``--profile`` option of ``gpu_throughput.py``.

``--profile``: right after a row's timed steps (same compiled model, no second compile; a few seconds),
``torch.profiler`` records 2 warmup + 3 active steps of the rows in ``--profile-rows`` (default ``kiln
compiled`` and ``hf-gpt2 compiled``, GPT-2 being nanoGPT's architecture; with ``--smoke`` their eager
rows). ``profile.json`` in ``--out`` (rewritten after each profiled row) and the printed table give per
step: the top 15 device kernels (CPU ops on CPU, by self time) with their share of the step, and the
time per group. Share denominator: the row's unprofiled ms/step (profiling slows the host). Groups, by
lower-case substring, first match wins, tested on the kernel / op name itself, then on the CPU ops it
ran under, outermost first (wrappers named ``...compiled...`` / ``## ...`` skipped), so that e.g. the
``aten::mul`` of ``aten::rms_norm`` counts as norm, the copies inside ``Optimizer.step`` as optimizer:

- attention: flash fmha sdpa scaled_dot_product attention flex
- cross-entropy: softmax nll_loss cross_entropy (the eager fp32 loss outside the compiled model)
- optimizer: adam foreach multi_tensor optimizer
- matmul: gemm gemv xmma nvjet cublas cutlass splitk aten::mm addmm bmm matmul linear mmbackward
- norm: norm rsqrt
- elementwise/other: the rest (fused Triton pointwise/reduction kernels, casts, embedding, memcpy)
- idle/gaps: step time minus busy time (union of kernel intervals; sum of op self times on CPU):
  launch overhead, host-side Python, synchronisation. ``host_ms_per_step`` (3 more steps, timed
  without a sync) near the step time says the host cannot run ahead of the GPU.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()} threads"


PROFILE_ROWS = ("kiln compiled", "kiln compiled loss-in-graph", "kiln trainer compiled", "hf-gpt2 compiled")
PROFILE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (  # first match wins; see the module docstring
    ("attention", ("flash", "fmha", "sdpa", "scaled_dot_product", "attention", "flex")),
    ("cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("optimizer", ("adam", "foreach", "multi_tensor", "optimizer")),
    ("matmul", ("gemm", "gemv", "xmma", "nvjet", "cublas", "cutlass", "splitk", "aten::mm", "addmm", "bmm",
                "matmul", "linear", "mmbackward")),
    ("norm", ("norm", "rsqrt")),
)


def _group(names: list[str]) -> str:
    for name in names:
        low = name.lower()
        for group, subs in PROFILE_GROUPS:
            if any(sub in low for sub in subs):
                return group
    return "elementwise/other"


def _chain(ev: object) -> list[str]:
    """Names of CPU op ``ev`` and the ops it ran under, outermost first, without compiled-graph wrappers."""
    out = []
    while ev is not None:
        if "compiled" not in ev.name.lower() and not ev.name.startswith(("##", "ProfilerStep")):
            out.append(ev.name)
        ev = ev.cpu_parent
    return out[::-1]


def profile_steps(step: Callable[[], object], device: torch.device, step_ms: float, warmup: int = 2,
                  active: int = 3) -> dict:
    """torch.profiler over ``warmup + active`` steps; see the module docstring for the grouping."""
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1)) as prof:
        for i in range(warmup + active):
            if i == warmup:
                sync_device(device)
                t0 = time.perf_counter()
            step()
            if i == warmup + active - 1:
                sync_device(device)
                wall_ms = (time.perf_counter() - t0) * 1e3 / active
            prof.step()
    sync_device(device)
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    host_ms = (time.perf_counter() - t0) * 1e3 / 3
    sync_device(device)
    return {"device": device_name(device), "activities": [str(a).split(".")[-1] for a in acts], "warmup": warmup,
            "active": active, "step_ms": round(step_ms, 3), "profiled_step_ms": round(wall_ms, 3),
            "host_ms_per_step": round(host_ms, 3), **summarise_events(prof.events(), cuda, active, step_ms)}


def summarise_events(events: list, cuda: bool, active: int, step_ms: float) -> dict:
    """Busy time, groups and top kernels (CPU ops) per step from ``prof.events()``."""
    from torch.autograd import DeviceType

    ops = {e.id: e for e in events if e.device_type == DeviceType.CPU and not e.is_async
           and not getattr(e, "linked_correlation_id", 0)}
    items = []  # (name, group, microseconds, (start, end) or None)
    for e in events:
        if cuda:
            if (e.device_type != DeviceType.CUDA or getattr(e, "is_user_annotation", False)
                    or e.name.startswith(("ProfilerStep", "Torch-Compiled", "##")) or "#" in e.name):
                continue
            names = [e.name, *_chain(ops.get(getattr(e, "linked_correlation_id", 0)))]  # kernel, then launcher
            r = e.time_range
            items.append((e.name, _group(names), r.end - r.start, (r.start, r.end)))
        elif e.device_type == DeviceType.CPU and not e.is_async and not e.name.startswith("ProfilerStep"):
            items.append((e.name, _group([e.name, *_chain(e)]), e.self_cpu_time_total, None))
    if cuda and not items:
        raise RuntimeError("no CUDA kernel events recorded (CUPTI unavailable?)")
    if cuda:  # union of kernel intervals: overlapping streams are not counted twice
        busy_us, end = 0.0, float("-inf")
        for a, b in sorted(iv for *_, iv in items):
            busy_us += max(0.0, b - max(a, end))
            end = max(end, b)
    else:
        busy_us = sum(us for _, _, us, _ in items)
    busy_ms = busy_us / 1e3 / active
    denom = max(step_ms, busy_ms)
    groups = {g: {"ms": 0.0, "share": 0.0, "calls_per_step": 0.0} for g in
              ("matmul", "attention", "cross-entropy", "optimizer", "norm", "elementwise/other", "idle/gaps")}
    per_name: dict[tuple[str, str], list[float]] = {}
    for name, group, us, _ in items:
        groups[group]["ms"] += us / 1e3 / active
        groups[group]["calls_per_step"] += 1 / active
        acc = per_name.setdefault((name, group), [0.0, 0.0])
        acc[0], acc[1] = acc[0] + us / 1e3 / active, acc[1] + 1 / active
    groups["idle/gaps"]["ms"] = denom - busy_ms
    for g in groups.values():
        g["ms"], g["share"], g["calls_per_step"] = (round(g["ms"], 3), round(g["ms"] / denom, 4),
                                                    round(g["calls_per_step"], 1))
    top = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:15]
    return {"busy_ms": round(busy_ms, 3),
            "busy_what": "union of device kernel intervals" if cuda else "sum of CPU op self times",
            "events_per_step": round(len(items) / active, 1), "groups": groups,
            "top": [{"name": n, "group": g, "ms": round(ms, 3), "share": round(ms / denom, 4),
                     "calls_per_step": round(c, 1)} for (n, g), (ms, c) in top]}


def write_profile(out: Path | None, s: Any, device: torch.device, requested: tuple[str, ...],
                  profiles: list[dict], results: list[dict]) -> None:
    if out is None:
        return
    done = {p["row"] for p in profiles}
    missing = {r["row"]: r.get("skipped") or r.get("error") or "not run yet" for r in results
               if r["row"] in requested and r["row"] not in done}
    missing.update({n: "not run yet / not in --rows" for n in requested if n not in done and n not in missing})
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(
        {"benchmark": "gpu_throughput --profile", "device": device_name(device), "torch": torch.__version__,
         "shape": asdict(s), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
         "groups_by_substring": dict(PROFILE_GROUPS), "requested": list(requested), "missing": missing,
         "rows": profiles}, indent=2))


def _short(name: str, width: int = 80) -> str:
    for junk in ("void ", "at::native::", "(anonymous namespace)::", "at::", "cutlass::"):
        name = name.replace(junk, "")
    return name if len(name) <= width else name[: width - 3] + "..."


def print_profile(p: dict) -> None:
    if "error" in p:
        print(f"\nprofile {p['row']}: {p['error']}")
        return
    what = "kernels" if "CUDA" in p["activities"] else "CPU ops"
    print(f"\nprofile {p['row']} ({p['device']}, {p['warmup']} warmup + {p['active']} active steps): "
          f"step {p['step_ms']:.1f} ms unprofiled ({p['profiled_step_ms']:.1f} profiled, host "
          f"{p['host_ms_per_step']:.1f} without sync), busy {p['busy_ms']:.1f} ms, {p['events_per_step']:.0f} "
          f"{what}/step")
    print(f"  {'group':20s} {'ms/step':>8s} {'share':>7s} {'calls/step':>10s}")
    for g, v in p["groups"].items():
        print(f"  {g:20s} {v['ms']:8.2f} {v['share']:7.1%} {v['calls_per_step']:10.1f}")
    print(f"  {'top ' + what:20s} {'ms/step':>8s} {'share':>7s} {'calls':>6s}  {'group':18s} name")
    for t in p["top"]:
        print(f"  {'':20s} {t['ms']:8.2f} {t['share']:7.1%} {t['calls_per_step']:6.1f}  {t['group']:18s} "
              f"{_short(t['name'])}")
