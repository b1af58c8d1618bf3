"""How much memory sampling ``B`` streams needs, and whether it fits.

``ct-sample --batch B`` decodes B streams at once with an
:class:`~ct_core.model.sampling.IncrementalDecoder`. Everything it holds
grows with B but the model's weights, which it needs once. Per stream, with ``L`` layers, width ``D``, ``K = cmem_len + mem_len +
seq_len`` keys, vocabulary ``V``, ``P`` prompt and ``N`` new tokens:

- the decoder's buffers (:func:`decoder_buffer_bytes`, exactly what it
  allocates): keys and values ``2·L·(K+1)·D`` (one spare slot) and the
  positions' projections ``L·(2K+1)·D`` (as projected, and transposed for
  the step) in the cache dtype; the segment's recorded layer inputs
  ``L·seq_len·D`` and the memories ``L·(mem_len + cmem_len)·D`` in the
  parameters' dtype; attention usage ``L·K`` floats and validity masks;
- what one step holds at its peak: the attention scores and probabilities
  of one layer over a whole segment ``3·H·seq_len·K``, its hidden states
  and feed-forward activations ``seq_len·(4·D + d_ff)``, and the next
  memories while Algorithm 1 replaces the old ones;
- logits: ``P·V`` for the prompt (an upper bound: only its last position
  reaches the output layer) in the compute dtype, and while a token is
  drawn, its noise and a few float copies of its row ``5·V``, plus the
  noise of a compiled chunk's tokens (at most ``4·V``);
- the tokens themselves, kept three times over (drawn, collected,
  joined with the prompt) as int64: ``3·(P + N)``.

Available memory is ``MemAvailable`` of ``/proc/meminfo`` for the CPU and
``torch.cuda.mem_get_info`` (plus what PyTorch's allocator holds unused) on
CUDA; elsewhere it is unknown and nothing is checked.

Example::

    need = sampling_bytes(model.cfg, batch=4, mem_len=768, cmem_len=768, prompt_len=1,
                          new_tokens=72_000, param_dtype=torch.float32, compute_dtype=torch.bfloat16)
    check_fits(need, weights, available_bytes(torch.device("cuda:0")), "cuda:0", batch=4, option="--batch")
"""

from __future__ import annotations

from pathlib import Path

import torch

from ct_core.errors import ConfigError
from ct_core.model.config import ModelConfig
from ct_core.model.decode_step import chunk_tokens

MEMINFO = Path("/proc/meminfo")
GIB = 2**30


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def decoder_buffer_bytes(cfg: ModelConfig, batch: int, mem_len: int, cmem_len: int, param_dtype: torch.dtype,
                         compute_dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> int:
    """Bytes of every tensor an ``IncrementalDecoder`` of ``batch`` streams
    keeps (its caches, recorded layer inputs, usage, masks, position
    projections, its step's fixed inputs and the memories it starts from).
    ``kv_dtype``: the cache's dtype (default: ``compute_dtype``)."""
    L, D, T = cfg.n_layers, cfg.d_model, cfg.seq_len
    K = cmem_len + mem_len + T
    room = K + 1  # one spare slot, so that every key-length bucket is a strict prefix
    p, kv, f32, i64 = _size(param_dtype), _size(kv_dtype or compute_dtype), _size(torch.float32), 8
    cache = 2 * L * batch * room * D * kv  # k, v: L x [B, H, K + 1, d]
    positions = L * K * D * kv + L * room * D * kv  # r: L x [K, H, d]; r_t: L x [H, d, K + 1]
    hidden = L * batch * T * D * p  # [L, B, T, D]
    usage = L * batch * room * f32  # L x [B, K + 1]
    masks = batch * room * kv + batch * room  # additive [B, 1, K + 1] and key_valid [B, K + 1] bool
    step_inputs = batch * i64 + 2 * i64 + room * i64  # token [B, 1], slot and row [1], key_index [K + 1]
    memory = L * batch * (mem_len + cmem_len) * D * p + batch * (mem_len + cmem_len)  # mem, cmem and masks
    return cache + positions + hidden + usage + masks + step_inputs + memory


def sampling_bytes(cfg: ModelConfig, batch: int, mem_len: int, cmem_len: int, prompt_len: int, new_tokens: int,
                   param_dtype: torch.dtype, compute_dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> int:
    """Bytes that sampling ``batch`` streams adds to the loaded model (see
    the module docstring for what is counted)."""
    L, D, T, V, H = cfg.n_layers, cfg.d_model, cfg.seq_len, cfg.vocab_size, cfg.n_heads
    K = cmem_len + mem_len + T
    p, c, f32 = _size(param_dtype), _size(compute_dtype), _size(torch.float32)
    buffers = decoder_buffer_bytes(cfg, batch, mem_len, cmem_len, param_dtype, compute_dtype, kv_dtype)
    step = batch * (3 * H * T * K * f32 + T * (4 * D + cfg.d_ff) * c + L * (mem_len + cmem_len) * D * p)
    # The prompt's, then one row's float copies and a chunk's noise while drawing.
    logits = batch * (prompt_len * V * c + (5 + chunk_tokens(L)) * V * f32)
    tokens = 3 * batch * (prompt_len + new_tokens) * 8
    return buffers + step + logits + tokens


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device``; None where it is unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "cpu":
        try:
            for line in MEMINFO.read_text().splitlines():
                name, _, value = line.partition(":")
                if name == "MemAvailable":
                    return int(value.split()[0]) * 1024  # reported in kB
        except (OSError, ValueError, IndexError):
            return None
    return None


def check_fits(streams: int, weights: int, available: int | None, where: str, batch: int, option: str) -> None:
    """A one-line :class:`ConfigError` when ``streams`` bytes for ``batch``
    streams plus ``weights`` bytes of the model exceed ``available`` on
    ``where``; nothing when ``available`` is unknown."""
    need = streams + weights
    if available is None or need <= available:
        return
    fits = batch * max(available - weights, 0) // max(streams, 1)
    hint = (f"at most about {fits} streams fit" if fits >= 1
            else "not even one stream fits: sample fewer tokens or use another device")
    raise ConfigError(
        f"{option} {batch} needs about {need / GIB:.2f} GiB (model weights and streams) but "
        f"{available / GIB:.2f} GiB is available on {where}; lower {option} ({hint})"
    )
