"""The training loop: streams of segments with carried memory, CE + compression
loss, clipping, warm-up + cosine schedule, evaluation, checkpoints, resume.

Every piece of state that decides what happens next is in the checkpoint
(weights, optimizer, scheduler, step, batcher cursors, per-lane memories,
RNG states), so a run that is killed and resumed ends with the same weights
as one that was not (bit for bit on CPU).

Example::

    trainer = Trainer(run_cfg, frontend, run_dir)
    trainer.fit()
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ct_core.train.checkpoint import (
    FORMAT_VERSION,
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    package_version,
    restore_rng_state,
)
from ct_core.train.distributed import DistContext, all_reduce_sum, barrier
from ct_core.errors import CheckpointError, ConfigError, UserError
from ct_core.train.evaluator import EvalResult, evaluate
from ct_core.data.frontend import FrontEnd
from ct_core.model.memory import MemoryState
from ct_core.train.metric_logger import MetricLogger
from ct_core.model.lm import CompressiveTransformerLM
from ct_core.train.optim import build_optimizer, build_scheduler
from ct_core.train.run_config import RunConfig
from ct_core.train.runtime import autocast_context, configure_torch, resolve_device, seed_everything
from ct_core.train.stop_requests import StopRequests, TrainingStopped
from ct_core.model.sampling import generate
from ct_core.data.stream_batcher import IGNORE_INDEX, StreamBatcher


class NonFiniteLossError(UserError):
    """Too many non-finite losses in a row; the run stops."""


class Trainer:
    def __init__(self, cfg: RunConfig, frontend: FrontEnd, run_dir: Path, ctx: DistContext | None = None) -> None:
        self.cfg, self.frontend, self.run_dir = cfg, frontend, Path(run_dir)
        self.ctx = ctx or DistContext()
        t = cfg.trainer
        configure_torch(t.threads, t.deterministic)
        self.device = resolve_device(t.device, self.ctx)
        local_lanes = t.batch_size // self.ctx.world_size
        if t.batch_size % self.ctx.world_size or local_lanes % t.grad_accum:
            raise ConfigError(
                f"trainer.batch_size={t.batch_size} must split evenly over {self.ctx.world_size} process(es) "
                f"and trainer.grad_accum={t.grad_accum} micro-batches"
            )
        if cfg.eval.batch_size % self.ctx.world_size:
            raise ConfigError(f"eval.batch_size={cfg.eval.batch_size} must be divisible by the world size {self.ctx.world_size}")
        seed_everything(t.seed + self.ctx.rank)

        self.model = CompressiveTransformerLM(cfg.model)
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.steps)
        self.forward = self.model
        if self.ctx.enabled:
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if t.compile:
            self.forward = torch.compile(self.forward)

        self.train_docs = frontend.documents("train")
        self.valid_docs = frontend.documents("valid")
        self.batcher = StreamBatcher(self.train_docs, t.batch_size, cfg.model.seq_len, mode="train", seed=t.seed,
                                     shuffle=t.shuffle, rank=self.ctx.rank, world_size=self.ctx.world_size)
        self.memories: list[MemoryState | None] = [None] * t.grad_accum
        self.step = 0
        self.tokens_seen = 0
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=t.keep_last)
        self.logger = MetricLogger(self.run_dir, total_steps=t.steps, enabled=self.ctx.is_main,
                                   log_every=t.log_every)

    # ------------------------------------------------------------ checkpoint
    def _payload(self) -> dict[str, Any]:
        memory = {}
        for i, m in enumerate(self.memories):
            if m is not None:
                memory.update({f"{i}.{k}": v.detach().cpu() for k, v in m.state_dict().items()})
        per_rank = self._gather({"memory": memory, "rng": capture_rng_state()})
        return {
            "format_version": FORMAT_VERSION,
            "package_version": package_version(),
            "config": self.cfg.raw,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "batcher": self.batcher.state_dict(),
            "memory": per_rank[0]["memory"],
            "rng": per_rank[0]["rng"],
            "ranks": per_rank,
            "frontend": self.frontend.state_dict(),
        }

    def _gather(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        if not self.ctx.enabled:
            return [obj]
        out: list[Any] = [None] * self.ctx.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def save(self) -> None:
        payload = self._payload()  # every rank takes part in the gather
        if self.ctx.is_main:
            path = self.checkpoints.save(self.step, payload)
            self.logger.message(f"saved {path}")
        barrier(self.ctx)

    def resume(self, path: Path) -> None:
        payload = load_checkpoint(path, map_location="cpu", for_resume=True)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(f"{path}: weights do not fit this recipe's model ({first})") from None
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.batcher.load_state_dict(payload["batcher"])
        self.step, self.tokens_seen = int(payload["step"]), int(payload["tokens_seen"])
        self.logger.truncate_after(self.step)  # the steps after the checkpoint are trained again
        ranks = payload.get("ranks") or [{"memory": payload["memory"], "rng": payload["rng"]}]
        mine = ranks[self.ctx.rank] if len(ranks) == self.ctx.world_size else None
        if mine is None:
            self.logger.message(f"resuming on {self.ctx.world_size} processes from a run on {len(ranks)}: memories restart empty")
            return
        restore_rng_state(mine["rng"])
        for i in range(len(self.memories)):
            keys = {k.split(".", 1)[1]: v for k, v in mine["memory"].items() if k.split(".", 1)[0] == str(i)}
            self.memories[i] = MemoryState.from_state_dict(keys).to(self.device) if keys else None
        self.logger.message(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ loop
    def segments_per_update(self) -> int:
        """Consecutive segments one optimizer update accumulates now."""
        t = self.cfg.trainer
        return t.update_every if self.step >= t.update_every_after else 1

    def train_step(self) -> dict[str, float] | None:
        """One optimizer update over :meth:`segments_per_update` consecutive
        segments of every lane, each split into ``grad_accum`` micro-batches;
        None if skipped. The update's loss is the mean over all target tokens
        of those segments (memories carried from segment to segment as usual)."""
        t = self.cfg.trainer
        batches = [next(self.batcher).to(self.device) for _ in range(self.segments_per_update())]
        (n_global,) = all_reduce_sum(self.ctx, [float(sum(b.n_targets for b in batches))], self.device)
        n_global = max(n_global, 1.0)
        n_pieces = len(batches) * t.grad_accum  # the compression loss is averaged over these
        previous = list(self.memories)
        ce_sum, aux_sum = 0.0, 0.0
        for k, batch in enumerate(batches):
            micro = batch.split(t.grad_accum)
            for i, mb in enumerate(micro):
                sync = (k == len(batches) - 1 and i == len(micro) - 1) or not self.ctx.enabled
                with self._maybe_no_sync(sync), autocast_context(self.device, t.precision):
                    out = self.forward(mb.x, self.memories[i], mb.reset)
                    ce = F.cross_entropy(out.logits.float().flatten(0, 1), mb.y.flatten(),
                                         ignore_index=IGNORE_INDEX, reduction="sum")
                    # DDP averages gradients over ranks, hence the world-size factor:
                    # the update's loss is the mean over all of its target tokens.
                    loss = ce * (self.ctx.world_size / n_global)
                    loss = loss + self.cfg.optim.compression_loss_weight * out.aux_loss / n_pieces
                    loss.backward()
                self.memories[i] = out.memory
                ce_sum += ce.item()
                aux_sum += out.aux_loss.item() / n_pieces
        ce_sum, aux_sum, n_bad = all_reduce_sum(
            self.ctx, [ce_sum, aux_sum / self.ctx.world_size, float(not math.isfinite(ce_sum + aux_sum))], self.device
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.cfg.optim.clip_norm if self.cfg.optim.clip_norm else float("inf")
        ).item()
        if n_bad or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.memories = previous  # a NaN must not poison the memories
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += int(n_global)
        return {"loss": (ce_sum / n_global) + aux_sum, "ce": ce_sum / n_global, "aux": aux_sum,
                "lr": lr, "grad_norm": grad_norm, "tokens": n_global}

    def _maybe_no_sync(self, sync: bool):
        """DDP all-reduces gradients only on the last micro-batch of an update."""
        return contextlib.nullcontext() if sync else self.forward.no_sync()

    def run_eval(self, split: str, max_batches: int | None) -> dict[str, float]:
        docs = self.valid_docs if split == "valid" else self.frontend.documents(split)
        result: EvalResult = evaluate(self.model, docs, self.cfg.eval.batch_size, self.cfg.eval_mem_len,
                                      self.cfg.eval_cmem_len, self.device, self.cfg.trainer.precision,
                                      max_batches=max_batches, ctx=self.ctx)
        metrics = self.frontend.metrics(result.nll_sum, result.n_tokens, split, complete=result.complete)
        metrics["n_tokens"] = result.n_tokens
        return metrics

    def sample(self, n_tokens: int) -> np.ndarray:
        """Unprompted samples ``[sample_batch, 1 + n_tokens]`` from the current weights."""
        start = torch.full((self.cfg.trainer.sample_batch, 1), self.frontend.start_token(), dtype=torch.long,
                           device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.trainer.seed)
        with autocast_context(self.device, self.cfg.trainer.precision):
            out = generate(self.model, start, n_tokens, generator=gen)
        return out.cpu().numpy()

    def fit(self) -> dict[str, float]:
        """Train to ``trainer.steps``; returns the final evaluation metrics.
        Final samples (``trainer.sample_tokens``) are the caller's to write.
        Ctrl-C or SIGTERM finish the current step, save, and raise
        :class:`~ct_core.train.stop_requests.TrainingStopped`."""
        with StopRequests() as stop:
            return self._fit(stop)

    def _fit(self, stop: StopRequests) -> dict[str, float]:
        t = self.cfg.trainer
        self.logger.message(
            f"{self.model.num_parameters():,} parameters | {t.batch_size} lanes x {self.cfg.model.seq_len} tokens "
            f"= {t.batch_size * self.cfg.model.seq_len:,} tokens per step | device {self.device}"
        )
        bad_in_row, window_tokens, window_start, rate = 0, 0.0, time.perf_counter(), 0.0
        while self.step < t.steps:
            if stop.requested(self.ctx, self.device):
                self.save()
                self.logger.close()
                raise TrainingStopped(stop.signal_name, stop.signum, self.step, self.checkpoints.last_path)
            stats = self.train_step()
            if stats is None:
                bad_in_row += 1
                self.logger.log(self.step, {"nonfinite_skipped": bad_in_row}, split="train")
                self.logger.message(f"step {self.step + 1}: non-finite loss, step skipped ({bad_in_row} in a row)")
                if bad_in_row >= t.max_nonfinite:
                    last = self.checkpoints.latest()
                    raise NonFiniteLossError(
                        f"loss was non-finite for {bad_in_row} steps in a row at step {self.step + 1}; "
                        f"last good checkpoint: {last or 'none'}; lower optim.lr or check the data"
                    )
                continue
            bad_in_row = 0
            window_tokens += stats["tokens"]
            if self.step % t.log_every == 0 or self.step == t.steps:
                elapsed = time.perf_counter() - window_start
                rate = window_tokens / max(elapsed, 1e-9)
                stats["tokens_per_s"] = rate
                self.logger.log(self.step, stats, split="train")
                window_tokens, window_start = 0.0, time.perf_counter()
            self.logger.progress(self.step, stats["loss"], rate)
            if self.step % t.eval_every == 0 and self.step < t.steps:
                self._evaluate_and_log(t.eval_max_batches)
            if self.step % t.save_every == 0 and self.step < t.steps:
                self.save()
        self.save()
        stop.release()  # the final checkpoint is written: a signal now stops the evaluation at once
        final = self._evaluate_and_log(None if t.final_eval else t.eval_max_batches)
        self.logger.close()
        return final

    def _evaluate_and_log(self, max_batches: int | None) -> dict[str, float]:
        metrics = self.run_eval("valid", max_batches)
        self.logger.log(self.step, metrics, split="valid")
        shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        self.logger.message(f"eval step {self.step}: {shown}")
        n = self.cfg.trainer.eval_sample_tokens
        if n > 0 and self.ctx.is_main and self.logger.writer is not None:
            self.logger.log_media(self.step, self.frontend.render_samples(self.sample(n), self.step))
        return metrics
