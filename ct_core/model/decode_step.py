"""The fixed-shape decoding step: one token per call, every layer, the
output layer and the draw of the next token.

A step reads its inputs from buffers at fixed addresses (the token, its
key index ``slot`` and its position ``row`` in the segment as device
tensors, the noise of the draw) and writes the key/value cache, the
segment's layer inputs, the attention usage and the running mask in place.
No shape and no Python number in it changes from token to token, except the
number of keys attended, which moves through a few *key-length buckets*
(:func:`key_buckets`): the smallest bucket that holds every key the token
may see, not always the largest. So the step can be

- compiled (``torch.compile``, inductor on CPU; the key length is the one
  dynamic size, so one compilation serves every bucket),
- captured as a CUDA graph per bucket (one launch per token, no host
  synchronisation), or
- run eagerly, where it still spares the per-token work of the
  variable-shape path.

Work moved out of the step: the additive mask (memory validity, future
slots) is built once per segment and opened one slot per token; the
projected positions are stored once per decoder, transposed and in
ascending distance, and each token gathers its keys' scores from its scores
against every distance (``[B, H, K]``) instead of copying the table; the
softmax scale is folded into ``q + u`` and ``q + v``.

Compiled on CPU, most of a small model's step is the cost of the call
itself (the compiler's entry checks, the wrapper's arguments), so
:meth:`FixedStep.run_chunk` runs up to :data:`MAX_CHUNK` steps in one compiled
call (:func:`chunk_tokens`), each feeding the token the previous one drew.

When compilation is unavailable or fails the step runs eagerly and says so
once, in one line, through ``notify``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from ct_core.model.draw import SamplingOptions, draw

if TYPE_CHECKING:
    from ct_core.model.attention import RelativeMultiHeadAttention
    from ct_core.model.lm import CompressiveTransformerLM

#: ``torch.compiler.set_stance`` can skip the guards that cannot fail (torch >= 2.7).
_HAS_LEAN_GUARDS = "skip_guard_eval_unsafe" in inspect.signature(torch.compiler.set_stance).parameters
#: At most this many tokens per compiled call of :meth:`FixedStep.run_chunk`.
#: Each call costs about 0.2 ms besides its kernels (the compiler's entry
#: checks, the wrapper's arguments); on the audio demo model at batch 1 (2
#: Xeon cores) 4 tokens per call take 0.39 ms per token against 0.55 ms one
#: at a time, 8 take 0.33 ms but double the compilation (34 s -> 74 s).
MAX_CHUNK = 4
#: At most this many layer steps (tokens x layers) in one compiled call:
#: compilation time grows with them, and gcc's time on the C++ wrapper (one
#: function for the whole call) faster still. Large models, whose steps
#: dwarf the call's cost anyway, get one token per call and no C++ wrapper.
LAYER_STEPS_PER_CALL = 16


def chunk_tokens(n_layers: int) -> int:
    """Tokens per compiled call for a model of ``n_layers`` layers."""
    return max(1, min(MAX_CHUNK, LAYER_STEPS_PER_CALL // n_layers))
#: At most this many key-length buckets per decoder (CUDA captures one graph per bucket).
MAX_BUCKETS = 8
#: Bucket sizes are multiples of this many keys.
BUCKET_MULTIPLE = 8


def key_buckets(n_keys: int) -> tuple[int, ...]:
    """Increasing bucket sizes ``(g, 2g, ..., n_keys)`` covering ``1 .. n_keys``
    keys in at most :data:`MAX_BUCKETS` steps."""
    g = math.ceil(math.ceil(n_keys / MAX_BUCKETS) / BUCKET_MULTIPLE) * BUCKET_MULTIPLE
    return tuple(min(g * i, n_keys) for i in range(1, math.ceil(n_keys / g) + 1))


def bucket_for(n_needed: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding ``n_needed`` keys."""
    return next(b for b in buckets if b >= n_needed)


def stderr_notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class StepBuffers:
    """What the step reads and writes, allocated once per decoder.

    Key index ``j`` of the cache is the ``j``-th kept key: the filled part
    of ``[cmem; mem]`` (``P_v`` slots, a suffix of it) then the segment.
    """

    k: list[Tensor]  # per layer [B, H, K_max + 1, d] in the cache dtype (one slot spare)
    v: list[Tensor]  # per layer [B, H, K_max + 1, d]
    r_t: list[Tensor]  # per layer [H, d, K_max + 1]: column δ is W_r R(δ), distance δ (cache dtype)
    hidden: Tensor  # [L, B, seq_len, D] the segment's layer inputs (parameters' dtype)
    usage: list[Tensor]  # per layer [B, K_max + 1] float32 attention mass per key
    mask: Tensor  # [B, 1, K_max + 1] additive (cache dtype): 0 = visible, -inf = empty or future
    token: Tensor  # [B, 1] int64 the token of this step
    slot: Tensor  # [1] int64 its key index
    row: Tensor  # [1] int64 its position in the segment
    key_index: Tensor  # [K_max + 1] int64 0 .. K_max
    noise: Tensor | None = None  # [chunk, B, V] float32 Exp(1) draws, row i for the i-th token of a call


def one_query_attention(attn: RelativeMultiHeadAttention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                        r_t: Tensor, distance: Tensor, want_usage: bool) -> tuple[Tensor, Tensor | None]:
    """One query per row over the first ``K_b`` cache keys.

    q: ``[B, H, 1, d]``; k, v: ``[B, H, K_b, d]`` (views of the cache);
    mask: ``[B, 1, K_b]``; r_t: ``[H, d, K_b]`` encodings of distances
    ``0 .. K_b - 1``; distance: ``[K_b]`` each key's distance to the query
    (clamped to 0 for future keys, which the mask hides). Returns ``[B, 1, D]``
    and, if ``want_usage``, the attention mass per key ``[B, K_b]``.
    """
    b, n_heads, _, d = q.shape
    n_keys = k.shape[2]
    dtype = k.dtype
    qv = ((q + attn.v[:, None, :]) * attn.scale).to(dtype).view(b, n_heads, d)
    by_distance = torch.bmm(qv.transpose(0, 1), r_t)  # [H, B, K_b]: against every distance
    position = by_distance.transpose(0, 1).gather(2, distance.expand(b, n_heads, n_keys))  # [B, H, K_b]
    if torch.compiler.is_compiling():
        # One query per row makes both products matrix-vector products that
        # read every cached key and value once: written as reductions, the
        # compiler fuses them with the bias, the softmax and the upcast of a
        # bf16 cache into loops over the cache (15% faster than the library
        # calls at batch 1 on the demo model, 7% at batch 16).
        qu = ((q + attn.u[:, None, :]) * attn.scale).float()  # [B, H, 1, d]
        scores = (qu * k.float()).sum(-1) + (position + mask).float()  # [B, H, K_b]
        probs = scores.softmax(dim=-1)  # [B, H, K_b]
        usage = probs.sum(dim=1) if want_usage else None  # [B, K_b]
        out = (probs[..., None] * v.float()).sum(dim=2).to(q.dtype)  # [B, H, d]
        return attn.w_o(out.view(b, 1, n_heads * d)), usage
    qu = ((q + attn.u[:, None, :]) * attn.scale).to(dtype).view(b * n_heads, 1, d)
    bias = (position + mask).view(b * n_heads, 1, n_keys)
    scores = torch.baddbmm(bias, qu, k.reshape(b * n_heads, n_keys, d).transpose(1, 2))  # [B·H, 1, K_b]
    probs = scores.float().softmax(dim=-1).to(v.dtype)
    usage = probs.float().view(b, n_heads, n_keys).sum(dim=1) if want_usage else None  # [B, K_b]
    out = torch.bmm(probs, v.reshape(b * n_heads, n_keys, d))  # [B·H, 1, d]
    return attn.w_o(out.view(b, 1, n_heads * d).to(q.dtype)), usage


class FixedStep:
    """Runs the step eagerly, compiled (``backend``) or, on CUDA, replayed
    from a CUDA graph per key-length bucket.

    ``backend``: a ``torch.compile`` backend name or callable, or None
    (eager); ignored on CUDA, where the step is captured as it is.
    ``autocast``: a context-manager factory taking ``cache_enabled``.
    """

    def __init__(self, model: CompressiveTransformerLM, buffers: StepBuffers, autocast: Callable,
                 backend: str | Callable | None = None, notify: Callable[[str], None] = stderr_notice) -> None:
        self.model = model
        self.buf = buffers
        self.autocast = autocast
        self.want_usage = model.needs_usage
        self.notify = notify
        self.cuda = buffers.k[0].device.type == "cuda"
        self.chunk = chunk_tokens(len(model.blocks))  # tokens per compiled call of run_chunk
        self.fallback: str | None = None  # why the step runs eagerly although compilation was asked for
        self._compiled: Callable | None = None
        self._views: dict[int, Tensor] = {}
        self._compiled_chunk: Callable | None = None
        self._guarded: set[tuple] = set()  # (kind, bucket, options) whose compiled call ran with every guard
        self._graphs: dict[tuple[int, SamplingOptions | None], tuple[torch.cuda.CUDAGraph, Tensor, Tensor | None]] = {}
        if backend is not None and not self.cuda:
            # Inductor's C++ wrapper calls the step's kernels without a
            # Python line per kernel (15-20% of the demo model's decoding).
            small = self.chunk * len(model.blocks) <= LAYER_STEPS_PER_CALL
            options = {"cpp_wrapper": True} if backend == "inductor" and small else None
            try:
                self._compiled = torch.compile(self.body, backend=backend, fullgraph=True, options=options)
                self._compiled_chunk = torch.compile(self.chunk_body, backend=backend, fullgraph=True,
                                                     options=options)
            except Exception as err:  # an unknown backend name, a missing compiler
                self._fall_back(err)

    @property
    def mode(self) -> str:
        """``graph``, ``compiled`` or ``eager``: how the next step runs."""
        return "graph" if self.cuda else "compiled" if self._compiled is not None else "eager"

    def _fall_back(self, err: BaseException) -> None:
        # A backend's own error, not the compiler's wrapper around it.
        err = getattr(err, "inner_exception", None) or err
        lines = str(err).strip().splitlines()
        self.fallback = f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]
        self._compiled = self._compiled_chunk = None
        self.notify(f"compiled decoding unavailable, decoding eagerly ({self.fallback})")

    def body(self, keys: Tensor, options: SamplingOptions | None, i: int = 0) -> tuple[Tensor, Tensor | None]:
        """The step over the first ``K_b = len(keys)`` cache keys (``keys``:
        a ``[K_b]`` view of ``key_index``). Returns the next-token scores
        ``[B, V]`` (adaptive softmax: log-probabilities) and, with
        ``options``, the token drawn from them ``[B]`` with the noise
        ``buf.noise[i]``."""
        buf, model = self.buf, self.model
        n_keys = keys.shape[0]
        with self.autocast(cache_enabled=not self.cuda):
            h = model.embed(buf.token)  # [B, 1, D]
            buf.mask.index_fill_(2, buf.slot, 0.0)  # the token sees itself from now on
            mask = buf.mask[:, :, :n_keys]  # [B, 1, K_b]
            distance = (buf.slot - keys).clamp(min=0)  # [K_b]
            inputs = []  # per layer [B, 1, D]
            for layer, blk in enumerate(model.blocks):
                inputs.append(h.to(buf.hidden.dtype))
                x = blk.attention_input(h)
                k_new, v_new = blk.attn.project_kv(x)  # [B, H, 1, d]
                k_cache, v_cache = buf.k[layer], buf.v[layer]
                k_cache.index_copy_(2, buf.slot, k_new.to(k_cache.dtype))
                v_cache.index_copy_(2, buf.slot, v_new.to(v_cache.dtype))
                a, u = one_query_attention(blk.attn, blk.attn.project_query(x), k_cache[:, :, :n_keys],
                                           v_cache[:, :, :n_keys], mask, buf.r_t[layer][:, :, :n_keys],
                                           distance, self.want_usage)
                if u is not None:
                    buf.usage[layer][:, :n_keys] += u
                h = blk.after_attention(h, a)
            # One write into the base tensor: a write into a per-layer view
            # makes the compiler copy the whole [B, seq_len, D] layer.
            buf.hidden.index_copy_(2, buf.row, torch.stack(inputs))
            logits = model.token_logits(model.norm_out(h)[:, 0])  # [B, V]
        if options is None:
            return logits, None
        return logits, draw(logits, None if options.greedy else buf.noise[i], options)

    def chunk_body(self, keys: Tensor, options: SamplingOptions) -> Tensor:
        """``self.chunk`` steps, each feeding the token the previous one drew
        (the first feeds ``buf.token``); step ``i`` draws with
        ``buf.noise[i]``. Every key a step sees lies within the first
        ``len(keys)`` (the mask hides the later ones). Returns the drawn
        tokens ``[B, chunk]``; ``token``, ``slot`` and ``row`` are left at the
        last token drawn, not yet fed."""
        buf, tokens = self.buf, []
        for i in range(self.chunk):
            _, token = self.body(keys, options, i)
            tokens.append(token)
            buf.token.copy_(token[:, None])
            buf.slot.add_(1)
            buf.row.add_(1)
        return torch.stack(tokens, dim=1)

    def run(self, n_keys: int, options: SamplingOptions | None, compiled: bool = True) -> tuple[Tensor, Tensor | None]:
        """One step over the bucket of ``n_keys`` keys; outputs are the
        caller's to keep (CUDA: copies of the graph's outputs).
        ``compiled=False`` runs it eagerly even when it was compiled."""
        if self.cuda:
            return self._replay(n_keys, options)
        keys = self._keys(n_keys)
        if self._compiled is not None and compiled:
            out = self._call_compiled(self._compiled, ("step", n_keys, options), keys, options)
            if out is not None:
                return out
        return self.body(keys, options)

    @property
    def chunks(self) -> bool:
        """Whether :meth:`run_chunk` runs compiled (else :meth:`run` per
        token is as fast)."""
        return self._compiled is not None

    def run_chunk(self, n_keys: int, options: SamplingOptions) -> Tensor:
        """:meth:`chunk_body` over the bucket of ``n_keys`` keys, compiled
        when the step is; the drawn tokens ``[B, chunk]``."""
        keys = self._keys(n_keys)
        if self._compiled_chunk is not None:
            out = self._call_compiled(self._compiled_chunk, ("chunk", n_keys, options), keys, options)
            if out is not None:
                return out
        return self.chunk_body(keys, options)

    def _call_compiled(self, fn: Callable, key: tuple, *args):
        """``fn(*args)``, or None when compiling it failed (then the step
        runs eagerly from now on and has said so).

        Once a bucket's call has run with every guard checked (``key`` in
        ``_guarded``), later calls check only the guards that tell
        compilations apart: the full check (every parameter's and buffer's
        dtype, shape and strides, about 80 µs on a small model) cannot fail
        in between, as the decoder owns its buffers and the model does not
        change while it decodes."""
        try:
            if key in self._guarded and _HAS_LEAN_GUARDS:
                # Built per call: building one sets the stance until its exit.
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return fn(*args)
            with _dynamo_limits():
                out = fn(*args)
            self._guarded.add(key)
            return out
        except Exception as err:  # raised while compiling, before the step ran
            self._fall_back(err)
            return None

    def _keys(self, n_keys: int) -> Tensor:
        """The ``[K_b]`` view of ``key_index`` whose length the compiler
        treats as dynamic (one compilation for every bucket)."""
        if n_keys not in self._views:
            view = self.buf.key_index[:n_keys]
            torch._dynamo.maybe_mark_dynamic(view, 0)
            self._views[n_keys] = view
        return self._views[n_keys]

    def _replay(self, n_keys: int, options: SamplingOptions | None) -> tuple[Tensor, Tensor | None]:
        key = (n_keys, options)
        if key not in self._graphs:
            self._graphs[key] = self._capture(n_keys, options)
        graph, logits, token = self._graphs[key]
        graph.replay()
        return logits.clone(), None if token is None else token.clone()

    def _capture(self, n_keys: int, options: SamplingOptions | None) -> tuple[torch.cuda.CUDAGraph, Tensor,
                                                                              Tensor | None]:
        """Capture the step for one bucket in a CUDA graph (not run yet).

        The warm-up run before capture (kernels must have been picked)
        writes the same key, value, layer input and mask entry as the real
        step will, but adds to ``usage``: that is undone. Autocast's weight
        cache is off inside the graph (a cached cast would not be re-read on
        replay)."""
        keys = self.buf.key_index[:n_keys]
        usage = [u.clone() for u in self.buf.usage]
        device = keys.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(side):
            self.body(keys, options)
        torch.cuda.current_stream(device).wait_stream(side)
        for saved, u in zip(usage, self.buf.usage):
            u.copy_(saved)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            logits, token = self.body(keys, options)
        return graph, logits, token


def _dynamo_limits():
    """Compiled calls raise instead of silently running uncompiled when the
    compiler's per-function cache is full (then the step says so and runs
    eagerly), and the cache holds one entry per model shape seen."""
    config = torch._dynamo.config
    wanted = {"fail_on_recompile_limit_hit": True, "recompile_limit": 64}
    present = {k: v for k, v in wanted.items() if hasattr(config, k)}
    return config.patch(**present) if present else contextlib.nullcontext()


__all__ = ["MAX_CHUNK", "FixedStep", "StepBuffers", "bucket_for", "chunk_tokens", "key_buckets", "one_query_attention", "stderr_notice"]
