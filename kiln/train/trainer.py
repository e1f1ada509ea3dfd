"""The training loop: objective-agnostic, resumable, logging every step.

nanoGPT-style loop (Karpathy 2022) with OLMo-style token-denominated batches: each
optimizer step consumes ``train.batch_tokens`` tokens as ``batch_tokens / seq_len``
packed rows, split into micro-batches for gradient accumulation. The loss of a step is
the sum of per-target losses divided by the step's target count, so accumulation gives
exactly the full-batch gradient. Logged every ``log_every`` steps to metrics.jsonl:
loss, lr, grad norm, tokens/s, MFU (GPU); validation loss and bits-per-byte every
``eval_every`` steps; checkpoints every ``checkpoint_every`` steps and at the end.

Under torchrun (kiln/train/dist.py) each rank reads its slice of the step's global rows, the step's target
count is summed over ranks before backward (so a step's loss and gradient equal one process reading the
whole global batch), gradients synchronise on the last micro-batch only, and rank 0 alone logs and writes
metrics. Logged ``tokens_per_s`` is summed over ranks and MFU divides by ``world_size`` x one device's peak
(the same as per-device tokens/s over one peak); ``peak_mem_gb`` is rank 0's device. Every rank runs
validation on the same rows (FSDP2 needs all ranks in every forward), so every rank stops together.
Parallelism (checkpointing, compile, DDP/FSDP2) is applied from outside the model: kiln/train/parallel.py.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kiln.data.domains import load_doc_domains, read_domain_names
from kiln.data.loader import PackedLoader, iter_eval_batches
from kiln.data.packing import Packing, pack
from kiln.data.shards import Shards, open_split
from kiln.eval.lm import autocast_for, evaluate_lm
from kiln.eval.objective_val import objective_val_loss
from kiln.faults import maybe_fail
from kiln.model.config import TransformerConfig
from kiln.model.device import resolve_device, resolve_precision  # noqa: F401 - re-exported
from kiln.model.flops import flops_per_token, mfu, peak_flops
from kiln.objectives import build_objective
from kiln.objectives.base import Objective
from kiln.progress import log, progress_bar
from kiln.recipe import Recipe
from kiln.tokenizer.special import PAD, SPECIAL_IDS
from kiln.train import dist
from kiln.train.callbacks import TrainerCallback, TrainState, build_callbacks
from kiln.train.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from kiln.train.domain_routing import attach_expert_ids, check_route_by_domain
from kiln.train.guard import FaultGuard, TrainingOOM, is_oom, oom_message
from kiln.train.init_from import init_weights_from
from kiln.train.loggers import build_loggers
from kiln.train.metrics import MetricsLog, ObjectiveMetrics
from kiln.train.moe_aux import implied_callbacks
from kiln.train.optim import build_optimizer, lr_at, set_lr
from kiln.train.parallel import parallelize, resolve_strategy
from kiln.train.progress_log import ProgressLines


def target_reached(val_bpb: float, target: float | None) -> bool:
    """``train.stop_at_val_bpb``: stop at the first validation at or below the target (None: never)."""
    return target is not None and math.isfinite(val_bpb) and val_bpb <= target


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainData:
    train: Shards
    val: Shards
    train_packing: Packing
    val_packing: Packing
    token_bytes: np.ndarray
    train_domains: np.ndarray | None = None  # per-document domain ids, read for train.route_by_domain only
    val_domains: np.ndarray | None = None


def load_train_data(recipe: Recipe, tokens_dir: Path, token_bytes: np.ndarray) -> TrainData:
    d = recipe.data
    train, val = open_split(tokens_dir, "train"), open_split(tokens_dir, "val")
    domains: tuple = (None, None)
    if recipe.train.route_by_domain:
        moe = TransformerConfig.from_recipe(recipe.model, 8, d.seq_len).moe  # vocab size does not matter here
        check_route_by_domain(moe, read_domain_names(tokens_dir), tokens_dir)
        domains = (load_doc_domains(train), load_doc_domains(val))
    return TrainData(train, val, pack(train.doc_lengths(), d.seq_len, d.packing),
                     pack(val.doc_lengths(), d.seq_len, d.packing), token_bytes, *domains)


class Trainer:
    def __init__(self, recipe: Recipe, data: TrainData, vocab_size: int, out_dir: Path, metrics_path: Path,
                 callbacks: list[TrainerCallback] | None = None, objective: Objective | None = None):
        """``callbacks`` run after those of ``train.callbacks``; ``objective`` replaces the recipe's
        ``train.objective`` (an objective built in code, e.g. with a teacher)."""
        self.recipe, self.data, self.out_dir = recipe, data, Path(out_dir)
        cfg = recipe.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.env = dist.init_from_env(use_cuda=self.device.type == "cuda")
        if self.device.type == "cuda" and self.env.active:
            self.device = torch.device("cuda", self.env.local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        seed_everything(cfg.seed)
        self.objective = objective or build_objective(cfg.objective, **cfg.objective_args)
        self.objective.loss_chunk_tokens = cfg.loss_chunk_tokens
        self.objective.configure(vocab_size=vocab_size, seq_len=recipe.data.seq_len, total_steps=cfg.steps,
                                 seed=cfg.seed)
        self.objective.fit(data.train)  # e.g. ERNIE-Gram's lexicon: deterministic, so resume rebuilds it
        if not self.objective.lm_eval and cfg.stop_at_val_bpb is not None:
            raise ValueError(f"train.stop_at_val_bpb needs a causal LM objective; '{cfg.objective}' trains an "
                             "encoder (validation reports its own loss, not bits per byte)")
        self.objective.attach(self.device)  # frozen modules (teachers) on the device, outside the trained model
        # validation of an encoder objective: its own loss, on a copy so the training objective's state is
        # untouched; frozen modules are shared, not copied
        shared = {id(m): m for m in self.objective.frozen_modules().values()}
        self.val_objective = None if self.objective.lm_eval else copy.deepcopy(self.objective, shared)
        self.model_config = TransformerConfig.from_recipe(recipe.model, vocab_size, recipe.data.seq_len,
                                                          heads=self.objective.heads)
        self.model = self.model_config.build()
        if cfg.init_from is not None:  # before wrapping and the optimizer; a resumed checkpoint overrides it
            fresh = init_weights_from(self.model, cfg.init_from)
            log(f"train: weights from {cfg.init_from}{f' (fresh heads: {fresh})' if fresh else ''}")
        self.model.to(self.device)
        par = recipe.parallel
        self.strategy = resolve_strategy(par.strategy, self.env.world_size, self.model.num_params())
        self._own_group = self.strategy == "fsdp" and not self.env.active
        if self.strategy == "fsdp":  # FSDP2 needs a process group, even a one-rank one
            self.env = dist.ensure_process_group(use_cuda=self.device.type == "cuda")
        self.par = parallelize(self.model, self.objective, strategy=self.strategy, compile=par.compile,
                               activation_checkpointing=par.activation_checkpointing, device=self.device,
                               env=self.env)
        self.optimizer = build_optimizer(self.model, cfg, self.device)  # after FSDP2 sharded the parameters
        self.pad_id = SPECIAL_IDS[PAD]
        self.loader = PackedLoader(data.train, data.train_packing, pad_id=self.pad_id,
                                   attention=recipe.data.attention, seed=recipe.data.seed,
                                   rank=self.env.rank, world_size=self.env.world_size,
                                   doc_domains=data.train_domains)
        seq_len = recipe.data.seq_len
        self.rows_per_step = max(cfg.batch_tokens // seq_len, 1)
        self.flops_per_token = flops_per_token(self.model_config, seq_len)
        peak = peak_flops(self.device)
        self.peak = peak * self.env.world_size if peak is not None else None  # tokens/s is summed over ranks
        self.metrics = MetricsLog(metrics_path) if self.env.is_main else None
        self.ckpt_root = self.out_dir / "checkpoints"
        self.step = 0
        self.tokens_seen = 0
        self.guard = FaultGuard(cfg)
        self.callbacks = [*build_callbacks(cfg.callbacks), *(callbacks or []), ProgressLines(cfg.steps),
                          *build_loggers(cfg.loggers)]
        # a model's own training terms (MoE balancing and z-losses) after the recipe's callbacks: sample weights
        # do not scale them; one listed in the recipe is not added twice
        self.callbacks[len(cfg.callbacks):len(cfg.callbacks)] = implied_callbacks(self.model_config, self.callbacks)
        self.state = TrainState(0, self.model, self.optimizer, self.objective, self.env.rank, self.env.world_size,
                                out_dir=self.out_dir)

    def _callback(self, point: str, *args: object, metrics: dict | None = None) -> dict:
        """Run ``point`` of every callback; with ``metrics``, on that dict, else on the step's; return it."""
        self.state.step = self.step
        if metrics is not None:
            self.state.metrics = metrics
        for cb in self.callbacks:
            getattr(cb, point)(self.state, *args)
        return self.state.metrics

    def close(self) -> None:
        """Tear down a process group this trainer made for itself (a one-rank FSDP2 run); torchrun's stays."""
        if self._own_group:
            dist.shutdown()
            self._own_group = False

    # ------------------------------------------------------------------ state
    def resume_if_possible(self) -> bool:
        ckpt = latest_checkpoint(self.ckpt_root)
        if ckpt is None:
            if self.metrics is not None:
                self.metrics.reset()
            return False
        state = load_training_state(ckpt, self.model, self.optimizer)
        self.loader.load_state_dict(state["loader"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.guard.load_state_dict(state.get("guard"))
        if self.metrics is not None:
            self.metrics.truncate_after(self.step)
        log(f"train: resumed from {ckpt} (step {self.step}, {self.tokens_seen:,} tokens)")
        return True

    def save(self) -> Path:
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "loader": self.loader.state_dict(),
                 "guard": self.guard.state_dict()}
        path = save_checkpoint(self.ckpt_root, self.step, self.model, self.optimizer, state,
                               keep=self.recipe.train.keep_checkpoints, sharded=self.strategy == "fsdp")
        self._callback("on_checkpoint", path)
        return path

    # ------------------------------------------------------------------ steps
    def _heads_to_touch(self, prepared: list) -> tuple[str, ...]:
        """FSDP2 with a switching objective: heads another rank used this step and this one did not (see
        ``TrainModule.forward``); DDP finds such parameters itself (``find_unused_parameters``)."""
        if self.strategy != "fsdp" or self.env.world_size == 1 or self.objective.uses_every_head:
            return ()
        local = set().union(*(self.objective.heads_used(p) for p in prepared))
        used = set().union(*map(set, dist.all_gather_object(sorted(local))))
        return tuple(sorted(used - local))

    def train_step(self) -> dict:
        cfg = self.recipe.train
        self.state.metrics = {}
        self._callback("on_step_begin")  # e.g. masks brought up to date after a skipped step
        lr = lr_at(self.step, cfg) * self.guard.lr_scale
        set_lr(self.optimizer, lr)
        # prepared on the CPU, then copied: no step waits on the GPU until the gradient norm (the guard's input)
        micro = self.loader.next_step(self.rows_per_step, cfg.micro_batch_size)
        # micro-batch randomness (masks, mixture draws) keyed by the step-wide micro-batch index: equal to one
        # process when each rank's rows are whole micro-batches
        per_rank = self.rows_per_step // self.env.world_size
        self.objective.begin_step(self.step, self.env.rank * (per_rank // cfg.micro_batch_size))
        prepared = [attach_expert_ids(self.objective.prepare(b), b).to(self.device) for b in micro]
        world = self.env.world_size
        # the global target count: DDP/FSDP2 average gradients over ranks, hence the factor world / n_targets
        n_targets = max(dist.all_reduce_sum([sum(p.n_targets for p in prepared)], self.device)[0], 1)
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)  # summed on the device, read once
        sums = ObjectiveMetrics(self.device)  # the objective's named metrics, summed on the device too
        touch = self._heads_to_touch(prepared)
        try:
            for i, p in enumerate(prepared):
                last = i == len(prepared) - 1
                with self.par.sync(enabled=last):  # no_sync on all but the last micro-batch
                    with autocast_for(self.device, self.precision):
                        loss_sum, named = self.par.root(prepared=p, touch=touch if last else ())
                    to_backprop = loss_sum
                    for cb in self.callbacks:  # sample weights, auxiliary losses
                        self.state.step = self.step
                        to_backprop = cb.micro_loss(self.state, p, to_backprop)
                    (to_backprop * (world / n_targets)).backward()
                loss_acc += loss_sum.detach().double()
                sums.add(named)
        except Exception as exc:
            if is_oom(exc):
                raise TrainingOOM(oom_message(self.step, exc)) from exc
            raise
        self._callback("after_backward")  # the step's (synchronised) gradients, before clipping
        maybe_fail("train_step")
        clip = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        loss_total = float(loss_acc)
        if world > 1 and not self.objective.same_metrics_on_every_rank:  # ranks ran different sub-objectives
            sums.agree(dist.all_gather_object(sorted(sums.sums)))
        reduced = dist.all_reduce_sum([loss_total, sum(b.n_tokens for b in micro), *sums.values()], self.device)
        loss, n_tokens = reduced[0] / n_targets, int(reduced[1])
        named_metrics = sums.per_target(reduced[2:], n_targets)
        fault = self.guard.check(loss, grad_norm)  # every rank sees the same loss and global norm
        if fault is None:
            self.optimizer.step()
            self.guard.accept(loss)
        self.optimizer.zero_grad(set_to_none=True)
        if fault is None:
            self.step += 1
            self.tokens_seen += n_tokens
            self._callback("after_optimizer_step")  # state.step: the step just completed (as logged)
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "n_tokens": n_tokens, "fault": fault,
                "metrics": {**named_metrics, **self.state.metrics}}

    def handle_fault(self, out: dict) -> str:
        """Apply ``train.on_nonfinite`` to a faulty step (see kiln/train/guard.py); log it; return the action."""
        at = self.step + 1
        action = self.guard.action(out["fault"], self.step, out["loss"])
        if action == "skip":
            self.step += 1
            self.tokens_seen += out["n_tokens"]
        else:
            ckpt = latest_checkpoint(self.ckpt_root)
            kept = (self.guard.lr_scale, self.guard.skipped, self.guard.rollbacks)
            state = load_training_state(ckpt, self.model, self.optimizer)
            self.loader.load_state_dict(state["loader"])
            self.step, self.tokens_seen = state["step"], state["tokens_seen"]
            self.guard.load_state_dict(state.get("guard"))
            self.guard.lr_scale, self.guard.skipped, self.guard.rollbacks = kept
            if self.metrics is not None:
                self.metrics.truncate_after(self.step)
        loss = out["loss"] if math.isfinite(out["loss"]) else str(out["loss"])
        grad = out["grad_norm"] if math.isfinite(out["grad_norm"]) else str(out["grad_norm"])
        row = {"kind": "fault", "step": self.step, "at_step": at, "reason": out["fault"], "action": action,
               "loss": loss, "grad_norm": grad, "lr_scale": self.guard.lr_scale}
        if self.metrics is not None:
            self.metrics.append(row)
        log(f"[yellow]train: {out['fault']} at step {at}: {action}"
            f"{f' to step {self.step}, lr x {self.guard.lr_scale:g}' if action == 'rollback' else ''}[/yellow]")
        return action

    def validate(self) -> dict:
        cfg = self.recipe.train
        batches = iter_eval_batches(self.data.val, self.data.val_packing, self.pad_id, self.recipe.data.attention,
                                    cfg.micro_batch_size, max_rows=cfg.eval_sequences,
                                    doc_domains=self.data.val_domains)
        if self.val_objective is None:
            return evaluate_lm(self.par.eval_model, batches, self.data.token_bytes, self.device, self.precision)
        with autocast_for(self.device, self.precision):
            res = objective_val_loss(self.par.eval_model, self.par.eval_objective(self.val_objective), batches,
                                     self.device)
        return {**res, "bpb": None}

    def _log_val(self) -> dict:
        res = dist.broadcast_object(self.validate())  # rank 0's numbers everywhere: ranks stop together
        row = {"kind": "val", "step": self.step, "val_loss": res["loss"], "tokens": self.tokens_seen}
        if res["bpb"] is None:
            row["val_objective"] = self.objective.name  # an encoder's own validation loss, no bits per byte
        else:
            row["val_bpb"] = res["bpb"]
        self._callback("on_eval", metrics=row)  # callbacks read the validation row and may add to it
        self.state.metrics = {}
        if self.metrics is not None:
            self.metrics.append(row)
        return row

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        cfg = self.recipe.train
        self.resume_if_possible()
        self._callback("on_train_begin", metrics={})
        n_params = self.model.num_params()
        log(f"train: {n_params / 1e6:.2f}M parameters ({self.model.num_params(non_embedding=True) / 1e6:.2f}M "
            f"non-embedding), {self.rows_per_step} x {self.recipe.data.seq_len} tokens/step, device {self.device} "
            f"{self.precision}, {self.loader.rows_per_epoch} rows/epoch, {self.strategy} x {self.env.world_size}"
            f"{', compiled' if self.par.compiled else ''}, "
            f"activation checkpointing {self.par.activation_checkpointing}")
        if self.step == 0:
            self._log_val()
            if cfg.on_nonfinite == "rollback" and latest_checkpoint(self.ckpt_root) is None:
                self.save()  # something to roll back to
        start = time.perf_counter()
        window_t, window_tokens = time.perf_counter(), 0
        last_val: dict = {}
        with progress_bar() as bar:
            task = bar.add_task("train", total=cfg.steps, completed=self.step, info="")
            while self.step < cfg.steps:
                out = self.train_step()
                window_tokens += out["n_tokens"]
                if out["fault"] is not None and self.handle_fault(out) == "rollback":
                    continue
                if out["fault"] is None and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_t, 1e-9)
                    row = {"kind": "train", "step": self.step, "loss": out["loss"], "lr": out["lr"],
                           "grad_norm": out["grad_norm"], "tokens": self.tokens_seen, "tokens_per_s": tps,
                           "mfu": mfu(tps, self.flops_per_token, self.peak), "elapsed_s": now - start,
                           **out["metrics"]}  # the objective's named metrics, then the callbacks'
                    if self.device.type == "cuda":
                        row["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
                    if self.metrics is not None:
                        self.metrics.append(row)
                    self._callback("on_log", metrics=row)  # progress lines, metric loggers
                    window_t, window_tokens = now, 0
                    bar.update(task, completed=self.step,
                               info=f"loss {out['loss']:.3f} lr {out['lr']:.2e} {tps / 1e3:.1f}k tok/s")
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    last_val = self._log_val()
                    bpb = last_val.get("val_bpb")
                    bar.update(task, info=f"val bpb {bpb:.3f}" if bpb is not None
                               else f"val {self.objective.name} loss {last_val['val_loss']:.3f}")
                    if bpb is not None and target_reached(bpb, cfg.stop_at_val_bpb):
                        log(f"train: val bpb {last_val['val_bpb']:.4f} <= target {cfg.stop_at_val_bpb} at step "
                            f"{self.step}, {time.perf_counter() - start:.1f} s: stopping")
                        self.save()
                        break
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
        if not last_val:  # resumed after the final checkpoint: its logged validation, else measure again
            rows = self.metrics.rows() if self.metrics is not None else []
            done = [r for r in rows if r.get("kind") == "val" and r.get("step") == self.step]
            last_val = dist.broadcast_object(done[-1] if done else None) or self._log_val()
        self._callback("on_train_end", metrics={})
        return {"n_params": n_params, "n_params_non_embedding": self.model.num_params(non_embedding=True),
                "steps": self.step, "tokens": self.tokens_seen, "final_val_bpb": last_val.get("val_bpb"),
                "final_val_loss": last_val.get("val_loss"), "checkpoint": str(latest_checkpoint(self.ckpt_root)),
                "device": str(self.device), "precision": self.precision,
                "reached_target": target_reached(last_val.get("val_bpb", math.nan), cfg.stop_at_val_bpb),
                "faults": {"skipped": self.guard.skipped, "rollbacks": self.guard.rollbacks,
                           "lr_scale": self.guard.lr_scale},
                "train_seconds_this_session": round(time.perf_counter() - start, 2)}
