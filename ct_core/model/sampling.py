"""Cached incremental decoding and sampling.

:class:`IncrementalDecoder` keeps, per layer, a key/value buffer laid out
like the training forward's keys ``[cmem; mem; segment]``, less the empty
memory slots in front (a shift of every key by the same amount, which
keeps each key's distance to the query). Memory keys/values are projected
once per segment (not per token), each new token appends its own
key/value, and when the segment reaches ``seq_len`` tokens the memories are
updated with the model's own Algorithm-1 code. Every token therefore sees
the same conditional distribution as in training.

Prompts (several tokens) take a variable-shape path; only their last
position reaches the output layer. Single tokens take the fixed-shape step
of :mod:`ct_core.model.decode_step`, which also draws the next token:
compiled on CPU when asked (``compile_backend``; :func:`generate` decides by
the request's size), replayed from CUDA graphs on CUDA, else eager. A
compiled decoder draws several tokens per call (:meth:`IncrementalDecoder.draw`)
with the noise, and so the tokens, of drawing them one at a time.

Precision: the decoder takes its compute dtype when it is built (autocast's
if autocast is on then, else the parameters') and runs every later step
under that same autocast, wherever it is called. The key/value cache and
the projected positions are kept in the compute dtype, or in ``kv_dtype``
(opt-in ``bfloat16``); the segment's layer inputs (the next memories) in
the parameters' dtype, as in training.

Example::

    seq = generate(model, prompt, max_new_tokens=64, top_k=50,
                   generator=torch.Generator().manual_seed(0))   # [B, P + 64]
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ct_core.model.attention import attention_mask
from ct_core.model.decode_step import MAX_CHUNK, FixedStep, StepBuffers, bucket_for, key_buckets, stderr_notice
from ct_core.model.draw import SamplingOptions, sample_next
from ct_core.model.memory import MemoryState
from ct_core.model.lm import CompressiveTransformerLM

#: ``generate`` compiles the CPU step when asked for at least this many new
#: tokens per stream. The audio demo's model on 2 Xeon cores, top-k 50, an
#: empty compiler cache: compiling took 50 s and decoding went from 823 to
#: 2,571 tokens/s at batch 1, which repays the compilation after about
#: 60,000 tokens (7.5 s of 8 kHz audio); shorter requests, the demo's
#: 3-second samples among them, finish sooner eagerly.
COMPILE_MIN_TOKENS = 65536


class IncrementalDecoder:
    """Feed tokens (one or many at a time) and get their logits, or step
    one token at a time with the draw of the next token inside the step.

    ``fixed_shape``: single tokens take the fixed-shape step
    (:mod:`ct_core.model.decode_step`; default). False: the variable-shape
    path of prompts, the reference the step is tested against.
    ``compile_backend``: compile the step on CPU with this
    ``torch.compile`` backend (``inductor``); None runs it eagerly. On CUDA
    the step is replayed from CUDA graphs either way.
    ``kv_dtype``: the key/value cache's dtype (default: the compute dtype);
    ``torch.bfloat16`` halves the cache and changes the numbers slightly.
    ``notify``: where the one-line notice goes when compilation falls back.
    """

    def __init__(self, model: CompressiveTransformerLM, batch_size: int, memory: MemoryState | None = None,
                 fixed_shape: bool | None = None, compile_backend: str | Callable | None = None,
                 kv_dtype: torch.dtype | None = None, notify: Callable[[str], None] = stderr_notice) -> None:
        self.model = model
        cfg = model.cfg
        first = next(model.parameters())
        device = first.device
        self.device = device
        param_dtype = first.dtype
        on = torch.is_autocast_enabled(device.type)
        self.autocast_dtype = torch.get_autocast_dtype(device.type) if on else None
        self.dtype = self.autocast_dtype or param_dtype  # compute dtype
        self.kv_dtype = kv_dtype or self.dtype
        if memory is None:
            memory = model.empty_memory(batch_size, device=device)
        with torch.no_grad(), self._autocast():
            self.memory = model.compress_pending(memory)
        self.seq_len = cfg.seq_len
        self.prefix = self.memory.cmem_len + self.memory.mem_len  # P = C + M
        self.n_keys = self.prefix + cfg.seq_len  # K_max
        self.buckets = key_buckets(self.n_keys)
        self.want_usage = model.needs_usage
        pos = model.positions(self.n_keys, device, param_dtype)  # [K_max, D]
        with torch.no_grad(), self._autocast():
            # Projected encodings of every distance, computed once.
            self.r = [blk.attn.project_positions(pos).to(self.kv_dtype) for blk in model.blocks]  # [K_max, H, d]
        # One slot more than the largest bucket: every bucket is then a
        # strict prefix of the buffers, and one compiled step serves all.
        room = self.n_keys + 1
        shape = (batch_size, cfg.n_heads, room, cfg.head_dim)
        self.buf = StepBuffers(
            k=[torch.zeros(shape, device=device, dtype=self.kv_dtype) for _ in model.blocks],
            v=[torch.zeros(shape, device=device, dtype=self.kv_dtype) for _ in model.blocks],
            # Ascending distance, heads first: the step's GEMM reads a prefix.
            r_t=[torch.nn.functional.pad(r.flip(0).permute(1, 2, 0), (0, 1)).contiguous() for r in self.r],
            hidden=torch.zeros(cfg.n_layers, batch_size, cfg.seq_len, cfg.d_model, device=device, dtype=param_dtype),
            usage=[torch.zeros(batch_size, room, device=device) for _ in model.blocks],
            mask=torch.zeros(batch_size, 1, room, device=device, dtype=self.kv_dtype),
            token=torch.zeros(batch_size, 1, dtype=torch.long, device=device),
            slot=torch.zeros(1, dtype=torch.long, device=device),
            row=torch.zeros(1, dtype=torch.long, device=device),
            key_index=torch.arange(room, device=device),
        )
        self.key_valid = torch.zeros(batch_size, room, dtype=torch.bool, device=device)  # [B, K_max + 1]
        self.pos = 0
        self.kept = 0  # P_v: memory slots in the cache this segment (the filled suffix of [cmem; mem])
        self.fixed_shape = True if fixed_shape is None else fixed_shape
        self.step_runner = FixedStep(model, self.buf, self._autocast, compile_backend, notify)
        self.last_bucket: int | None = None  # keys the last fixed-shape step attended
        self._begin_segment()

    def _autocast(self, cache_enabled: bool = True):
        """The autocast the decoder was built under (none: autocast off)."""
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=cache_enabled)

    @torch.inference_mode()
    def _begin_segment(self) -> None:
        """Project this segment's memory keys/values once, for all tokens,
        and build the segment's mask.

        Only the filled suffix of ``[cmem; mem]`` (filled in some row) is
        kept, at the front of the cache: empty slots are never attended.
        Finding it costs one host synchronisation per segment."""
        m, p, buf = self.memory, self.prefix, self.buf
        valid = torch.cat([m.cmem_mask, m.mem_mask], dim=1)  # [B, P]
        filled = valid.any(dim=0).nonzero()
        first = int(filled[0]) if len(filled) else p
        self.kept = kept = p - first
        with self._autocast():
            for layer, blk in enumerate(self.model.blocks):
                if kept:
                    slots, _ = m.attended(layer)  # [B, P, D]
                    k, v = blk.memory_kv(slots[:, first:])  # [B, H, P_v, d]
                    buf.k[layer][:, :, :kept] = k
                    buf.v[layer][:, :, :kept] = v
                buf.usage[layer].zero_()
        # In place: a captured step reads these buffers at their addresses.
        self.key_valid[:, :kept] = valid[:, first:]
        self.key_valid[:, kept:] = True
        buf.mask.fill_(float("-inf"))
        buf.mask[:, 0, :kept].masked_fill_(valid[:, first:], 0.0)

    @torch.inference_mode()
    def _step(self, tokens: Tensor, logits_of: str = "all") -> Tensor | None:
        """tokens ``[B, n]`` fitting in the current segment -> logits of
        ``all`` of them ``[B, n, V]``, of the ``last`` ``[B, 1, V]``, or
        ``none``."""
        n, s, p, buf = tokens.shape[1], self.pos, self.kept, self.buf
        if n == 1 and self.fixed_shape:
            logits, _ = self._fixed_step(tokens, None)
            return logits[:, None]
        keys = p + s + n
        with self._autocast():
            h = self.model.embed(tokens)  # [B, n, D]
            mask = attention_mask(self.key_valid[:, :keys], n, self.kv_dtype)  # [B, 1, n, keys]
            for layer, blk in enumerate(self.model.blocks):
                buf.hidden[layer, :, s : s + n] = h
                h, u = blk.step(h, buf.k[layer], buf.v[layer], p + s, mask, self.r[layer][self.n_keys - keys :],
                                want_usage=self.want_usage)
                if u is not None:
                    buf.usage[layer][:, :keys] += u
            # Only what is asked for reaches the output layer (an adaptive
            # softmax would build [B, n, V] log-probabilities).
            logits = None
            if logits_of != "none":
                logits = self.model.token_logits(self.model.norm_out(h if logits_of == "all" else h[:, -1:]))
        buf.mask[:, :, p + s : keys] = 0.0  # the fixed-shape step sees these tokens
        self.pos += n
        return logits

    def _fixed_step(self, tokens: Tensor, options: SamplingOptions | None, generator: torch.Generator | None = None,
                    compiled: bool = True) -> tuple[Tensor, Tensor | None]:
        """One token ``[B, 1]`` through the fixed-shape step (``compiled``:
        as it was built, else eagerly): its logits ``[B, V]`` and, with
        ``options``, the next token drawn ``[B]``."""
        self._load(tokens, 1, options, generator)
        out = self.step_runner.run(self.last_bucket, options, compiled)
        self.pos += 1
        return out

    def _load(self, tokens: Tensor, n: int, options: SamplingOptions | None,
              generator: torch.Generator | None) -> None:
        """Set the step's inputs for ``n`` tokens from the current position
        on, the first of them ``tokens`` ``[B, 1]``: token, key index, row,
        the noise of ``n`` draws and the key-length bucket of the last."""
        buf = self.buf
        buf.token.copy_(tokens)
        buf.slot.fill_(self.kept + self.pos)
        buf.row.fill_(self.pos)
        if options is not None and not options.greedy:
            if buf.noise is None:
                rows = self.step_runner.chunk if self.step_runner.chunks else 1
                buf.noise = torch.empty(rows, tokens.shape[0], self.model.cfg.vocab_size, device=self.device)
            # The draws sample_next would take from the generator, n times
            # (one block of n rows holds the same numbers as n single rows).
            buf.noise[:n].exponential_(1.0, generator=generator)
        self.last_bucket = bucket_for(self.kept + self.pos + n, self.buckets)

    @torch.inference_mode()
    def _roll(self) -> None:
        """Segment full: update the memories exactly as training does."""
        usage = None
        if self.want_usage:
            # Back to the layout [cmem; mem; segment] update_memory reads.
            first, width = self.prefix - self.kept, self.kept + self.pos
            usage = []
            for u in self.buf.usage:
                full = u.new_zeros(u.shape[0], self.prefix + self.pos)  # [B, P + T]
                full[:, first:] = u[:, :width]
                usage.append(full)
        with self._autocast():
            self.memory, _ = self.model.update_memory(self.memory, self.buf.hidden[:, :, : self.pos], usage)
        self.pos = 0
        self._begin_segment()

    @torch.inference_mode()
    def feed(self, tokens: Tensor, last_only: bool = False) -> Tensor:
        """Consume ``tokens`` ``[B, n]`` (any n); return their logits ``[B,
        n, V]``, or with ``last_only`` the last token's ``[B, 1, V]`` (for a
        prompt: no other position reaches the output layer)."""
        outs, i, n = [], 0, tokens.shape[1]
        while i < n:
            take = min(n - i, self.seq_len - self.pos)
            logits_of = "all" if not last_only else "last" if i + take == n else "none"
            logits = self._step(tokens[:, i : i + take], logits_of)
            if logits is not None:
                outs.append(logits[:, -1:] if last_only else logits)
            i += take
            if self.pos == self.seq_len:
                self._roll()
        return torch.cat(outs, dim=1)

    @torch.inference_mode()
    def step(self, tokens: Tensor, options: SamplingOptions, generator: torch.Generator | None = None,
             return_logits: bool = False, compiled: bool = True) -> Tensor | tuple[Tensor, Tensor]:
        """Consume one token per row ``[B]``; return the next one drawn ``[B]``
        (with ``return_logits``: the logits ``[B, V]`` it was drawn from, and
        it), with the noise :func:`sample_next` would draw from ``generator``.
        ``compiled=False`` runs a compiled step eagerly."""
        if self.fixed_shape:
            logits, nxt = self._fixed_step(tokens[:, None], options, generator, compiled)
        else:
            logits = self._step(tokens[:, None])[:, -1]
            nxt = sample_next(logits, **options.kwargs(), generator=generator)
        if self.pos == self.seq_len:
            self._roll()
        return (logits, nxt) if return_logits else nxt

    @torch.inference_mode()
    def draw(self, tokens: Tensor, options: SamplingOptions, generator: torch.Generator | None = None,
             limit: int = MAX_CHUNK) -> Tensor:
        """Consume one token per row ``[B]`` and draw the next ``n`` tokens
        ``[B, n]``, ``1 <= n <= limit``, each fed to the model before the
        next is drawn except the last. The tokens and their noise are those
        of ``n`` calls of :meth:`step`.

        A compiled step draws ``chunk`` tokens per call
        (:func:`~ct_core.model.decode_step.chunk_tokens`) where the segment
        and ``limit`` leave room for them; otherwise one token is drawn
        uncompiled (fewer than ``chunk`` per segment: no second compilation)."""
        runner = self.step_runner
        n = runner.chunk
        if not (self.fixed_shape and runner.chunks and limit >= n and self.seq_len - self.pos >= n):
            return self.step(tokens, options, generator, compiled=False)[:, None]
        self._load(tokens[:, None], n, options, generator)
        out = runner.run_chunk(self.last_bucket, options)
        self.pos += n
        if self.pos == self.seq_len:
            self._roll()
        return out


def worth_compiling(device: torch.device, max_new_tokens: int) -> bool:
    """Whether :func:`generate` compiles the step by default: on CPU, for
    requests long enough to repay the compilation (CUDA replays graphs)."""
    return device.type == "cpu" and max_new_tokens >= COMPILE_MIN_TOKENS


@torch.inference_mode()
def generate(
    model: CompressiveTransformerLM,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    memory: MemoryState | None = None,
    callback: Callable[[Tensor], None] | None = None,
    progress: bool = False,
    compile: bool | None = None,
    kv_dtype: torch.dtype | None = None,
    notify: Callable[[str], None] = stderr_notice,
) -> Tensor:
    """Continue ``prompt`` ``[B, P]`` (``P >= 1``) by ``max_new_tokens``.

    Returns ``[B, P + max_new_tokens]`` with the prompt unchanged as prefix.
    ``callback`` receives each new token column ``[B]`` as it is drawn.
    ``compile``: compile the CPU step with inductor (None: when
    :func:`worth_compiling`); ``kv_dtype``: see :class:`IncrementalDecoder`.
    The first new token is drawn by :func:`sample_next` from the prompt's
    last logits, each later one inside the step, from the same generator
    with the same noise.
    """
    if prompt.dim() == 1:
        prompt = prompt[None, :]
    if prompt.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token")
    options = SamplingOptions(temperature, top_k, top_p)
    device = next(model.parameters()).device
    if compile is None:
        compile = worth_compiling(device, max_new_tokens)
    was_training = model.training
    model.eval()
    try:
        dec = IncrementalDecoder(model, prompt.shape[0], memory, compile_backend="inductor" if compile else None,
                                 kv_dtype=kv_dtype, notify=notify)
        logits = dec.feed(prompt, last_only=True)[:, -1]  # [B, V]
        if max_new_tokens == 0:
            return prompt.clone()
        drawn = sample_next(logits, **options.kwargs(), generator=generator)[:, None]  # [B, 1]
        new, count = [], 0
        bar = _progress_bar(max_new_tokens) if progress else None
        while True:
            new.append(drawn)
            count += drawn.shape[1]
            if callback is not None:
                for column in drawn.unbind(1):
                    callback(column)
            if bar is not None:
                bar.update(drawn.shape[1])
            if count == max_new_tokens:
                break
            drawn = dec.draw(drawn[:, -1], options, generator, limit=max_new_tokens - count)  # [B, n]
        if bar is not None:
            bar.close()
    finally:
        model.train(was_training)
    return torch.cat([prompt, *(d.to(prompt.dtype) for d in new)], dim=1)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", desc="sampling", smoothing=0.1, mininterval=0.5)


__all__ = ["COMPILE_MIN_TOKENS", "IncrementalDecoder", "generate", "sample_next", "worth_compiling"]
