"""Cached incremental decoding and sampling.

:class:`IncrementalDecoder` keeps, per layer, a key/value buffer laid out
exactly like the training forward's keys ``[cmem; mem; segment]``. Memory
keys/values are projected once per segment (not per token), each new token
appends its own key/value, and when the segment reaches ``seq_len`` tokens
the memories are updated with the model's own Algorithm-1 code. Every token
therefore sees the same conditional distribution as in training.

Precision: the decoder takes its compute dtype when it is built (autocast's
if autocast is on then, else the parameters') and runs every later step
under that same autocast, wherever it is called. The key/value cache and
the projected positions are kept in the compute dtype; the segment's layer
inputs (the next memories) in the parameters' dtype, as in training.

On CUDA a single-token step has a fixed shape (the new key/value goes to a
slot given as a device tensor, attention covers the whole cache with the
later slots masked) and is replayed from a CUDA graph: one launch per token
and no host synchronisation. Prompts (several tokens) and CPU decoding take
the variable-shape path.

Example::

    seq = generate(model, prompt, max_new_tokens=64, top_k=50,
                   generator=torch.Generator().manual_seed(0))   # [B, P + 64]
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ct_core.model.attention import attention_mask
from ct_core.model.memory import MemoryState
from ct_core.model.lm import CompressiveTransformerLM


class IncrementalDecoder:
    """Feed tokens (one or many at a time) and get their logits.

    ``fixed_shape``: single-token steps take the fixed-shape path (None: on
    CUDA, where they are captured in a CUDA graph; True on CPU runs the same
    path eagerly).
    """

    def __init__(self, model: CompressiveTransformerLM, batch_size: int, memory: MemoryState | None = None,
                 fixed_shape: bool | None = None) -> None:
        self.model = model
        cfg = model.cfg
        first = next(model.parameters())
        device = first.device
        self.device = device
        param_dtype = first.dtype
        on = torch.is_autocast_enabled(device.type)
        self.autocast_dtype = torch.get_autocast_dtype(device.type) if on else None
        self.dtype = self.autocast_dtype or param_dtype  # compute dtype
        if memory is None:
            memory = model.empty_memory(batch_size, device=device)
        with torch.no_grad(), self._autocast():
            self.memory = model.compress_pending(memory)
        self.seq_len = cfg.seq_len
        self.prefix = self.memory.cmem_len + self.memory.mem_len  # P = C + M
        self.n_keys = self.prefix + cfg.seq_len  # K_max
        self.want_usage = model.needs_usage
        pos = model.positions(self.n_keys, device, param_dtype)  # [K_max, D]
        with torch.no_grad(), self._autocast():
            # Projected encodings of every distance, computed once.
            self.r = [blk.attn.project_positions(pos).to(self.dtype) for blk in model.blocks]  # [K_max, H, d]
        h, d = cfg.n_heads, cfg.head_dim
        shape = (batch_size, h, self.n_keys, d)
        self.k = [torch.zeros(shape, device=device, dtype=self.dtype) for _ in model.blocks]
        self.v = [torch.zeros(shape, device=device, dtype=self.dtype) for _ in model.blocks]
        self.hidden = torch.zeros(cfg.n_layers, batch_size, cfg.seq_len, cfg.d_model, device=device,
                                  dtype=param_dtype)
        self.usage = [torch.zeros(batch_size, self.n_keys, device=device) for _ in model.blocks]
        self.key_valid = torch.zeros(batch_size, self.n_keys, dtype=torch.bool, device=device)  # [B, K_max]
        self.pos = 0
        self.fixed_shape = device.type == "cuda" if fixed_shape is None else fixed_shape
        self._graph: torch.cuda.CUDAGraph | None = None
        # Inputs and output of the fixed-shape step, at fixed addresses.
        self._token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self._slot = torch.zeros(1, dtype=torch.long, device=device)  # key index of the new token
        self._row = torch.zeros(1, dtype=torch.long, device=device)  # its position in the segment
        self._logits: Tensor | None = None
        self._begin_segment()

    def _autocast(self, cache_enabled: bool = True):
        """The autocast the decoder was built under (none: autocast off)."""
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=cache_enabled)

    @torch.inference_mode()
    def _begin_segment(self) -> None:
        """Project this segment's memory keys/values once, for all tokens."""
        m, p = self.memory, self.prefix
        with self._autocast():
            for layer, blk in enumerate(self.model.blocks):
                slots, _ = m.attended(layer)  # [B, P, D]
                k, v = blk.memory_kv(slots)
                self.k[layer][:, :, :p] = k
                self.v[layer][:, :, :p] = v
                self.usage[layer].zero_()
        # In place: a captured step reads these buffers at their addresses.
        self.key_valid[:, :p] = torch.cat([m.cmem_mask, m.mem_mask], dim=1)
        self.key_valid[:, p:] = True

    @torch.inference_mode()
    def _step(self, tokens: Tensor) -> Tensor:
        """tokens ``[B, n]`` fitting in the current segment -> logits ``[B, n, V]``."""
        n, s, p = tokens.shape[1], self.pos, self.prefix
        if n == 1 and self.fixed_shape:
            return self._fixed_step(tokens)
        keys = p + s + n
        with self._autocast():
            h = self.model.embed(tokens)  # [B, n, D]
            mask = attention_mask(self.key_valid[:, :keys], n, self.dtype)  # [B, 1, n, keys]
            for layer, blk in enumerate(self.model.blocks):
                self.hidden[layer, :, s : s + n] = h
                h, u = blk.step(
                    h,
                    self.k[layer],
                    self.v[layer],
                    p + s,
                    mask,
                    self.r[layer][self.n_keys - keys :],
                    want_usage=self.want_usage,
                )
                if u is not None:
                    self.usage[layer][:, :keys] += u
            logits = self.model.token_logits(self.model.norm_out(h))
        self.pos += n
        return logits

    def _fixed_step(self, tokens: Tensor) -> Tensor:
        """One token through the fixed-shape step: replayed from a CUDA graph
        on CUDA (captured on first use), run eagerly elsewhere."""
        self._token.copy_(tokens)
        self._slot.fill_(self.prefix + self.pos)
        self._row.fill_(self.pos)
        if self.device.type != "cuda":
            self._logits = self._fixed_step_body()
        elif self._graph is None:
            self._capture()
        else:
            self._graph.replay()
        self.pos += 1
        return self._logits.clone()

    def _fixed_step_body(self) -> Tensor:
        """Reads ``_token``, ``_slot``, ``_row`` and the caches; writes the
        caches, ``hidden`` and ``usage`` in place; returns logits ``[B, 1, V]``.
        Nothing here depends on a Python number that changes per token."""
        with self._autocast(cache_enabled=self.device.type != "cuda"):
            h = self.model.embed(self._token)  # [B, 1, D]
            keys = torch.arange(self.n_keys, device=self.device)  # [K_max]
            allowed = self.key_valid & (keys <= self._slot)[None, :]  # [B, K_max]
            zero = torch.zeros((), dtype=self.dtype, device=self.device)
            mask = torch.where(allowed, zero, float("-inf"))[:, None, None, :]  # [B, 1, 1, K_max]
            # Key j is slot - j tokens back: row K_max - 1 - (slot - j) of r.
            rows = torch.clamp(keys + (self.n_keys - 1) - self._slot, max=self.n_keys - 1)  # [K_max]
            for layer, blk in enumerate(self.model.blocks):
                self.hidden[layer].index_copy_(1, self._row, h.to(self.hidden.dtype))
                h, u = blk.step_at(h, self.k[layer], self.v[layer], self._slot, mask,
                                   self.r[layer].index_select(0, rows), want_usage=self.want_usage)
                if u is not None:
                    self.usage[layer] += u
            return self.model.token_logits(self.model.norm_out(h))

    def _capture(self) -> None:
        """Capture the fixed-shape step in a CUDA graph, then run it once.

        The warm-up run before capture (kernels must have been picked) writes
        the same key, value and layer input as the real step will, but adds
        to ``usage``: that is undone. Autocast's weight cache is off inside
        the graph (a cached cast would not be re-read on replay)."""
        usage = [u.clone() for u in self.usage]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            self._fixed_step_body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        for saved, u in zip(usage, self.usage):
            u.copy_(saved)
        self._graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self._graph):
            self._logits = self._fixed_step_body()
        self._graph.replay()

    @torch.inference_mode()
    def _roll(self) -> None:
        """Segment full: update the memories exactly as training does."""
        usage = self.usage if self.want_usage else None
        with self._autocast():
            self.memory, _ = self.model.update_memory(self.memory, self.hidden[:, :, : self.pos], usage)
        self.pos = 0
        self._begin_segment()

    @torch.inference_mode()
    def feed(self, tokens: Tensor) -> Tensor:
        """Consume ``tokens`` ``[B, n]`` (any n); return their logits ``[B, n, V]``."""
        outs, i, n = [], 0, tokens.shape[1]
        while i < n:
            take = min(n - i, self.seq_len - self.pos)
            outs.append(self._step(tokens[:, i : i + take]))
            i += take
            if self.pos == self.seq_len:
                self._roll()
        return torch.cat(outs, dim=1)


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from ``logits`` ``[B, V]`` -> ``[B]``.

    ``temperature = 0`` or ``top_k = 1`` is greedy.
    """
    logits = logits.float()
    if temperature <= 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the
        # most likely token always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    # The exponential race: argmax of p / E with E ~ Exp(1) draws from p. It
    # is what torch.multinomial does for one sample (the same numbers from
    # the same generator), minus its validity check, which waits for the
    # GPU on every token.
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


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
) -> Tensor:
    """Continue ``prompt`` ``[B, P]`` (``P >= 1``) by ``max_new_tokens``.

    Returns ``[B, P + max_new_tokens]`` with the prompt unchanged as prefix.
    ``callback`` receives each new token column ``[B]`` as it is drawn.
    """
    if prompt.dim() == 1:
        prompt = prompt[None, :]
    if prompt.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token")
    was_training = model.training
    model.eval()
    try:
        dec = IncrementalDecoder(model, prompt.shape[0], memory)
        logits = dec.feed(prompt)[:, -1]  # [B, V]
        new = []
        bar = _progress_bar(max_new_tokens) if progress else None
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # [B]
            new.append(nxt)
            if callback is not None:
                callback(nxt)
            if bar is not None:
                bar.update(1)
            if i + 1 < max_new_tokens:
                logits = dec.feed(nxt[:, None])[:, -1]
        if bar is not None:
            bar.close()
    finally:
        model.train(was_training)
    if not new:
        return prompt.clone()
    return torch.cat([prompt, torch.stack(new, dim=1).to(prompt.dtype)], dim=1)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", desc="sampling", smoothing=0.1, mininterval=0.5)


__all__ = ["IncrementalDecoder", "generate", "sample_next"]
