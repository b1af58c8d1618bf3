"""The training loop: streams of segments with carried memory, CE + compression
loss, clipping, warm-up + cosine schedule, evaluation, checkpoints, resume.

Every piece of state that decides what happens next is in the checkpoint
(weights, optimizer, scheduler, step, batcher cursors, per-lane memories,
RNG states), so a run that is killed and resumed ends with the same weights
as one that was not (bit for bit on CPU).

The host waits for the GPU once per logging step, not once per step:
losses and the gradient norm stay on the device until they are logged, the
global target count comes from the batcher (every rank knows it), and the
next batch is prefetched. A non-finite loss or gradient skips the update
(weights, optimizer state and memories stay as they were). On CUDA the
fused optimizer skips it on the device (``optimizer.found_inf``); the step
still counts towards ``trainer.steps`` and the schedule, and the skips are
reported, and ``trainer.max_nonfinite`` in a row stop the run, at the next
logging step. On CPU, where waiting costs nothing, each step reads one
combined flag and a skipped step does not count.

Example::

    trainer = Trainer(run_cfg, frontend, run_dir)
    trainer.fit()
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ct_core.train.checkpoint import (
    FORMAT_VERSION,
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    package_version,
    restore_rng_state,
)
from ct_core.train.attention_backend import SelfTest, choose_attention, flex_self_test
from ct_core.train.distributed import DistContext, all_reduce_, all_reduce_sum, barrier, gather_to_main
from ct_core.errors import ConfigError, UserError
from ct_core.train.evaluator import EvalResult, evaluate
from ct_core.data.frontend import FrontEnd
from ct_core.model.execution import Execution
from ct_core.model.memory import MemoryState
from ct_core.train.metric_logger import MetricLogger
from ct_core.train.model_loading import mismatch_error
from ct_core.model.lm import CompressiveTransformerLM
from ct_core.train.optim import build_optimizer, build_scheduler
from ct_core.train.prefetch import BatchPrefetcher
from ct_core.train.run_config import RunConfig
from ct_core.train.run_lineage import RUN_ID_KEY, new_run_id
from ct_core.train.runtime import autocast_context, configure_torch, resolve_device, seed_everything
from ct_core.train.stop_requests import StopRequests, TrainingStopped
from ct_core.model.sampling import generate
from ct_core.data.stream_batcher import StreamBatcher


class NonFiniteLossError(UserError):
    """Too many non-finite losses in a row; the run stops."""


class Trainer:
    """``attention_self_test`` decides whether FlexAttention can be trusted
    on this device (see :mod:`ct_core.train.attention_backend`)."""

    def __init__(self, cfg: RunConfig, frontend: FrontEnd, run_dir: Path, ctx: DistContext | None = None,
                 run_id: str | None = None, attention_self_test: SelfTest = flex_self_test) -> None:
        self.cfg, self.frontend, self.run_dir = cfg, frontend, Path(run_dir)
        # Stored in every checkpoint: which run (lineage) wrote it. ct-train
        # passes the run directory's; a trainer used on its own is a new run.
        self.run_id = run_id or new_run_id()
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
        seed_everything(t.seed + self.ctx.rank)

        self.model = CompressiveTransformerLM(cfg.model)
        self.model.to(self.device)
        execution = Execution(activation_checkpointing=t.activation_checkpointing,
                              compile_backend=t.compile_backend if t.compile else None)
        attention = choose_attention(t.attention_backend, self.device, t.precision, execution, attention_self_test,
                                     agree=self._all_ranks_agree)
        self.model.set_execution(dataclasses.replace(execution, attention=attention.backend))
        # Fused on CUDA, which also lets the update be skipped on the device.
        self.skip_on_device = self.device.type == "cuda"
        self.optimizer = build_optimizer(self.model, cfg.optim, fused=self.skip_on_device)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.steps)
        self.forward = self.model
        if self.ctx.enabled:
            # Every parameter that requires a gradient gets one in every
            # forward (compressors no loss trains are frozen by the model;
            # bptt compresses its pending block, empty at first, in every
            # forward), so DDP needs no find_unused_parameters graph search.
            # Gradients live in DDP's buckets, not in a second copy.
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False, gradient_as_bucket_view=True,
            )

        self.train_docs = frontend.documents("train")
        self.valid_docs = frontend.documents("valid")
        self.batcher = StreamBatcher(self.train_docs, t.batch_size, cfg.model.seq_len, mode="train", seed=t.seed,
                                     shuffle=t.shuffle, rank=self.ctx.rank, world_size=self.ctx.world_size)
        self.batches = BatchPrefetcher(self.batcher, self.device, t.grad_accum, ahead=self.device.type == "cuda")
        # Empty memories rather than None: the first step runs the same
        # graph as every later one (no recompile at step 2 under compile).
        self.memories: list[MemoryState] = [self.model.empty_memory(local_lanes // t.grad_accum)
                                            for _ in range(t.grad_accum)]
        self.step = 0
        self.tokens_seen = 0
        # Non-finite updates skipped on the device: since the last log, the
        # current run of them, and the longest run since the last log.
        self._skipped, self._bad_run, self._worst_run = (torch.zeros((), dtype=torch.long, device=self.device)
                                                         for _ in range(3))
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=t.keep_last)
        self.logger = MetricLogger(self.run_dir, total_steps=t.steps, enabled=self.ctx.is_main,
                                   log_every=t.log_every)
        if attention.message:
            self.logger.message(attention.message)
        if any(not p.requires_grad for p in self.model.compressors.parameters()):
            self.logger.message(f"compressor weights frozen: compression_loss={cfg.model.compression_loss} "
                                "trains nothing of f_c")

    def _all_ranks_agree(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank (one all-reduce, at start-up)."""
        (total,) = all_reduce_sum(self.ctx, [float(ok)], self.device)
        return total == self.ctx.world_size

    # ------------------------------------------------------------ checkpoint
    def _payload(self, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "package_version": package_version(),
            RUN_ID_KEY: self.run_id,
            "config": self.cfg.raw,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "batcher": self.batches.state_dict(),
            "memory": per_rank[0]["memory"],
            "rng": per_rank[0]["rng"],
            "ranks": per_rank,
            "frontend": self.frontend.state_dict(),
        }

    def save(self) -> None:
        """Write a checkpoint (rank 0), with every rank's memories and RNG
        states gathered to rank 0 only."""
        memory = {}
        for i, m in enumerate(self.memories):
            memory.update({f"{i}.{k}": v.detach().cpu() for k, v in m.state_dict().items()})
        per_rank = gather_to_main(self.ctx, {"memory": memory, "rng": capture_rng_state()})
        if self.ctx.is_main:
            path = self.checkpoints.save(self.step, self._payload(per_rank))
            self.logger.message(f"saved {path}")
        barrier(self.ctx)

    def resume(self, path: Path, payload: dict[str, Any] | None = None) -> None:
        """Continue from checkpoint ``path``; ``payload`` is its content when
        the caller has already loaded it (the file is read once)."""
        if payload is None:
            payload = load_checkpoint(path, map_location="cpu", for_resume=True, mmap=True)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError:
            raise mismatch_error(path, payload, self.cfg, self.model) from None
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.batches.load_state_dict(payload["batcher"])
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
            if keys:  # else the memory of micro-batch i stays empty
                self.memories[i] = MemoryState.from_state_dict(keys).to(self.device)
        self.logger.message(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ loop
    def segments_per_update(self) -> int:
        """Consecutive segments one optimizer update accumulates now."""
        t = self.cfg.trainer
        return t.update_every if self.step >= t.update_every_after else 1

    def train_step(self) -> dict[str, Any] | None:
        """One optimizer update over :meth:`segments_per_update` consecutive
        segments of every lane, each split into ``grad_accum`` micro-batches.
        The update's loss is the mean over all target tokens of those
        segments (memories carried from segment to segment as usual).

        Returns the step's statistics (losses and gradient norm as device
        tensors, read when logged), or None if the update was skipped on the
        host (CPU; see the module docstring)."""
        t = self.cfg.trainer
        segments = [self.batches.next() for _ in range(self.segments_per_update())]
        n_global = max(sum(micro[0].n_targets_global for micro in segments), 1)
        n_pieces = len(segments) * t.grad_accum  # the compression loss is averaged over these
        previous = list(self.memories)
        ce_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        aux_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for k, micro in enumerate(segments):
            for i, mb in enumerate(micro):
                sync = (k == len(segments) - 1 and i == len(micro) - 1) or not self.ctx.enabled
                with self._maybe_no_sync(sync), autocast_context(self.device, t.precision):
                    out = self.forward(mb.x, self.memories[i], mb.reset, targets=mb.y)
                    ce = out.nll.sum()  # the model's per-token NLL: no [B, T, V] logits for the adaptive softmax
                    # DDP averages gradients over ranks, hence the world-size factor:
                    # the update's loss is the mean over all of its target tokens.
                    loss = ce * (self.ctx.world_size / n_global)
                    loss = loss + self.cfg.optim.compression_loss_weight * out.aux_loss / n_pieces
                    loss.backward()
                self.memories[i] = out.memory
                ce_sum += ce.detach()
                aux_sum += out.aux_loss.detach() / n_pieces
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.cfg.optim.clip_norm if self.cfg.optim.clip_norm else float("inf")
        )
        # Summed over ranks: CE, the compression loss (mean over ranks), ranks with a non-finite loss.
        totals = all_reduce_(self.ctx, torch.stack(
            [ce_sum, aux_sum / self.ctx.world_size, (~torch.isfinite(ce_sum + aux_sum)).double()]))
        if self.skip_on_device:
            bad = (totals[2] > 0) | ~torch.isfinite(grad_norm)
            self.optimizer.found_inf = bad.float()  # the fused update leaves weights and state as they are
            # A NaN must not poison the memories either.
            self.memories = [new.where(bad, old) for new, old in zip(self.memories, previous)]
            self._bad_run = torch.where(bad, self._bad_run + 1, 0)
            self._worst_run = torch.maximum(self._worst_run, self._bad_run)
            self._skipped += bad
        else:
            n_bad, norm = torch.stack([totals[2], grad_norm.double()]).tolist()  # the one host sync of a CPU step
            if n_bad or not math.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                self.memories = previous  # a NaN must not poison the memories
                return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += n_global
        ce_mean = totals[0] / n_global
        return {"loss": ce_mean + totals[1], "ce": ce_mean, "aux": totals[1], "lr": lr, "grad_norm": grad_norm,
                "tokens": float(n_global)}

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
        with StopRequests(self.ctx) as stop:
            return self._fit(stop)

    def _fit(self, stop: StopRequests) -> dict[str, float]:
        t = self.cfg.trainer
        self.logger.message(
            f"{self.model.num_parameters():,} parameters | {t.batch_size} lanes x {self.cfg.model.seq_len} tokens "
            f"= {t.batch_size * self.cfg.model.seq_len:,} tokens per step | device {self.device}"
        )
        bad_in_row, window_tokens, window_start, rate = 0, 0.0, time.perf_counter(), None
        while self.step < t.steps:
            if stop.requested():  # under torchrun: what every rank knew a step ago, no GPU sync
                self.save()
                self.logger.close()
                raise TrainingStopped(stop.signal_name, stop.signum, self.step, self.checkpoints.last_path)
            stats = self.train_step()
            if stats is None:
                bad_in_row += 1
                self._report_nonfinite(bad_in_row, bad_in_row)
                continue
            bad_in_row = 0
            window_tokens += stats["tokens"]
            loss = None
            if self.step % t.log_every == 0 or self.step == t.steps:
                values = {k: float(v) for k, v in stats.items()}  # waits for the GPU, once per window
                if self.skip_on_device:
                    self._report_skipped_on_device()
                elapsed = time.perf_counter() - window_start
                rate = window_tokens / max(elapsed, 1e-9)
                values["tokens_per_s"] = rate
                self.logger.log(self.step, values, split="train")
                window_tokens, window_start, loss = 0.0, time.perf_counter(), values["loss"]
            self.logger.progress(self.step, loss, rate)
            if self.step % t.eval_every == 0 and self.step < t.steps:
                self._evaluate_and_log(t.eval_max_batches)
            if self.step % t.save_every == 0 and self.step < t.steps:
                self.save()
        self.save()
        stop.release()  # the final checkpoint is written: a signal now stops the evaluation at once
        final = self._evaluate_and_log(None if t.final_eval else t.eval_max_batches)
        self.logger.close()
        return final

    def _report_nonfinite(self, skipped: int, in_row: int) -> None:
        """Log ``skipped`` non-finite updates; stop the run when ``in_row`` of
        them came in a row ``trainer.max_nonfinite`` times or more."""
        self.logger.log(self.step, {"nonfinite_skipped": skipped}, split="train")
        self.logger.message(f"step {self.step + 1}: non-finite loss, step skipped ({in_row} in a row)")
        if in_row >= self.cfg.trainer.max_nonfinite:
            last = self.checkpoints.latest()
            raise NonFiniteLossError(
                f"loss was non-finite for {in_row} steps in a row at step {self.step + 1}; "
                f"last good checkpoint: {last or 'none'}; lower optim.lr or check the data"
            )

    def _report_skipped_on_device(self) -> None:
        """The updates the device skipped since the last logging step."""
        skipped, worst = torch.stack([self._skipped, self._worst_run]).tolist()
        self._skipped.zero_()
        self._worst_run.copy_(self._bad_run)
        if skipped:
            self._report_nonfinite(skipped, worst)

    def _evaluate_and_log(self, max_batches: int | None) -> dict[str, float]:
        metrics = self.run_eval("valid", max_batches)
        self.logger.log(self.step, metrics, split="valid")
        shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        self.logger.message(f"eval step {self.step}: {shown}")
        n = self.cfg.trainer.eval_sample_tokens
        if n > 0 and self.ctx.is_main and self.logger.writer is not None:
            self.logger.log_media(self.step, self.frontend.render_samples(self.sample(n), self.step))
        return metrics
