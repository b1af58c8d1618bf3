"""The Compressive Transformer language model (Rae et al., 2019).

A decoder-only LM over segments of at most ``seq_len`` tokens. Each layer
attends from the segment to ``[cmem; mem; segment]`` with Transformer-XL
relative positions; after every segment the memories are updated with
Algorithm 1 and the compression loss (Algorithm 2 or an alternative) is
returned as ``aux_loss``.

Example::

    cfg = ModelConfig(vocab_size=256, n_layers=2, d_model=64, n_heads=4, d_ff=256,
                      seq_len=16, mem_len=16, cmem_len=8, compression_rate=4,
                      compression="conv", compression_loss="attention")
    model = CompressiveTransformerLM(cfg)
    out = model(tokens)                    # tokens [B, T], T <= seq_len: out.logits [B, T, V]
    out = model(next_tokens, memory=out.memory, reset=reset, targets=targets)   # out.nll [B, T]

With ``model.adaptive_cutoffs`` the embedding is the adaptive input and the
output the adaptive softmax (:mod:`ct_core.model.adaptive`). Training and
evaluation pass ``targets`` and read ``nll``, which the plain softmax also
computes, so neither ever needs ``[B, T, V]`` logits of an adaptive model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ct_core.model.adaptive import AdaptiveInput, AdaptiveSoftmax, ClusterTables
from ct_core.model.attention import attention_mask, compute_dtype, flex_block_mask
from ct_core.model.block import Block
from ct_core.model.compression import build_compressor
from ct_core.model.compression_loss import AutoencodingDecoder, attention_reconstruction_loss, autoencoding_loss
from ct_core.model.config import ModelConfig
from ct_core.model.execution import Execution, block_callables
from ct_core.model.memory import MemoryState
from ct_core.model.relative_position import sinusoid_positions


#: Targets with this id (padding) count in no loss; F.cross_entropy's default.
IGNORE_INDEX = -100


@dataclass
class LMOutput:
    logits: Tensor | None  # [B, T, vocab_size] (adaptive softmax: log-probabilities); None unless asked for
    memory: MemoryState  # to pass to the next segment (detached)
    aux_loss: Tensor  # scalar compression loss; 0 when there is none
    usage: list[Tensor] | None = None  # per layer [B, C + M + T] attention mass per key (return_usage)
    nll: Tensor | None = None  # [B, T] float32 per-token NLL in nats, 0 at IGNORE_INDEX targets (targets given)
    hidden: Tensor | None = None  # [B, T, D] final hidden states, what the output layer reads


class CompressiveTransformerLM(nn.Module):
    """Token embedding, ``n_layers`` blocks, final norm, output layer
    (a projection to the vocabulary, or the adaptive softmax)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.embed: nn.Module
        self.head: nn.Module
        if cfg.adaptive:
            tables = ClusterTables(cfg.vocab_size, cfg.d_model, cfg.adaptive_cutoffs, cfg.adaptive_div, cfg.init_std)
            self.embed = AdaptiveInput(tables)
        else:
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        # Post-LN blocks already end in a norm.
        self.norm_out = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        if cfg.adaptive:
            # Tied: the output reads the input's own tables (the same Parameters).
            out_tables = tables if cfg.tie_embeddings else ClusterTables(
                cfg.vocab_size, cfg.d_model, cfg.adaptive_cutoffs, cfg.adaptive_div, cfg.init_std)
            self.head = AdaptiveSoftmax(out_tables, cfg.init_std)
        else:
            self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.compressors = nn.ModuleList(
            [build_compressor(cfg.compression, cfg.d_model, cfg.compression_rate) for _ in range(cfg.n_layers)]
            if cfg.compresses
            else []
        )
        self.decoders = nn.ModuleList(
            [AutoencodingDecoder(cfg.d_model, cfg.compression_rate) for _ in range(cfg.n_layers)]
            if cfg.compresses and cfg.compression_loss == "autoencoding"
            else []
        )
        self.apply(self._init_weights)
        for comp in self.compressors:
            self._init_as_mean_pool(comp)
        if cfg.compression_loss == "none":
            # No loss reaches f_c (stored memories are detached): its weights
            # stay at their initialisation, so they are not trained at all.
            self.compressors.requires_grad_(False)
        if cfg.tie_embeddings and not cfg.adaptive:
            self.head.weight = self.embed.weight
        self.set_execution(Execution())

    def set_execution(self, execution: Execution) -> None:
        """Run the blocks as ``execution`` says (compiled, checkpointed,
        FlexAttention); see :mod:`ct_core.model.execution`."""
        self.execution = execution
        self._block_fns = block_callables(self.blocks, execution)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @staticmethod
    def _init_as_mean_pool(comp: nn.Module) -> None:
        """Start convolutional compressors as mean pooling over their taps, a
        sensible f_c from step 0 that the compression loss then refines."""
        for conv in comp.modules():
            if not isinstance(conv, nn.Conv1d):
                continue
            with torch.no_grad():
                conv.weight.zero_()
                k = conv.kernel_size[0]
                eye = torch.eye(conv.in_channels, dtype=conv.weight.dtype) / k
                for tap in range(k):
                    conv.weight[:, :, tap] = eye
                if conv.bias is not None:
                    conv.bias.zero_()

    # ---------------------------------------------------------------- memory
    def empty_memory(
        self,
        batch_size: int,
        mem_len: int | None = None,
        cmem_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MemoryState:
        """Empty memories; ``mem_len``/``cmem_len`` override the config (e.g.
        longer memories at evaluation, as in the paper). Memories hold layer
        inputs, which stay in the parameters' dtype (also under autocast), so
        that is their default ``dtype``."""
        cfg = self.cfg
        mem_len = cfg.mem_len if mem_len is None else mem_len
        cmem_len = cfg.cmem_len if cmem_len is None else cmem_len
        if cmem_len > 0 and not cfg.compresses:
            raise ValueError("cmem_len > 0 needs a model trained with compression (model.cmem_len > 0)")
        first = next(self.parameters())
        device = device if device is not None else first.device
        dtype = dtype if dtype is not None else first.dtype
        # bptt starts with an empty pending block, so that the compressor
        # takes part in every training forward (the same graph on every step).
        pending_len = cfg.seq_len if cmem_len > 0 and cfg.compression_loss == "bptt" else 0
        return MemoryState.empty(cfg.n_layers, batch_size, mem_len, cmem_len, cfg.d_model, device, dtype,
                                 pending_len=pending_len)

    @property
    def needs_usage(self) -> bool:
        """Whether the compressor needs the attention each memory received."""
        return bool(self.compressors) and self.compressors[0].needs_usage

    def positions(self, n_keys: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Sinusoidal encodings of distances ``n_keys-1 .. 0``: ``[K, D]``."""
        return sinusoid_positions(n_keys, self.cfg.d_model, device=device, dtype=dtype)

    def update_memory(
        self, memory: MemoryState, hidden: Tensor, usage: list[Tensor] | None = None
    ) -> tuple[MemoryState, Tensor]:
        """Algorithm 1 for every layer, plus the compression loss.

        hidden: ``[L, B, T, D]`` the segment's layer inputs; usage: per layer
        ``[B, C + M + T]`` attention mass per key (``most_used`` only).
        Returns the next memory (detached) and the auxiliary loss (scalar).

        With ``compression_loss=bptt`` and gradients enabled the evicted
        block is not compressed here but kept in ``pending``: the next
        forward compresses it inside its own graph (see :meth:`compress_pending`).
        """
        cfg = self.cfg
        zero = hidden.new_zeros((), dtype=torch.float32)
        t = hidden.shape[2]
        memory = self.compress_pending(memory)
        ev = memory.evict(hidden.detach(), cfg.compression_rate)
        if memory.cmem_len == 0:
            return MemoryState(ev.mem, ev.mem_mask, memory.cmem, memory.cmem_mask), zero
        if cfg.compression_loss == "bptt" and torch.is_grad_enabled():
            return memory.detach().with_pending(ev), zero
        c_len = memory.cmem_len
        compressed, masks, losses = [], [], []
        want_loss = torch.is_grad_enabled() and cfg.compression_loss in ("attention", "autoencoding")
        for layer, comp in enumerate(self.compressors):
            old = ev.old[layer]  # [B, T', D]
            layer_usage = None
            if comp.needs_usage:
                # The evicted slots are the first T keys after the compressed memory.
                layer_usage = usage[layer][:, c_len : c_len + t]
                layer_usage = nn.functional.pad(layer_usage, (ev.n_pad, 0))  # [B, T']
            new = comp(old, ev.old_mask, layer_usage)  # [B, T'/c, D]
            mask = comp.compressed_mask(ev.old_mask, layer_usage)  # [B, T'/c]
            if want_loss and cfg.compression_loss == "attention":
                block = self.blocks[layer]
                losses.append(
                    attention_reconstruction_loss(
                        block.attn, block.attention_norm, hidden[layer], old, ev.old_mask, new, mask
                    )
                )
            elif want_loss:
                losses.append(autoencoding_loss(self.decoders[layer], old, ev.old_mask, new))
            compressed.append(new)
            masks.append(mask)
        new_cmem = torch.stack(compressed).detach()  # [L, B, T'/c, D]
        # Invalid slots are a prefix of the evicted block, so every layer's
        # mask is the same (for most_used too) and layer 0's serves all.
        nxt = memory.detach().with_memories(ev, new_cmem, masks[0])
        aux = torch.stack(losses).mean() if losses else zero
        return nxt, aux

    def compress_pending(self, memory: MemoryState) -> MemoryState:
        """Compress a deferred evicted block (``compression_loss=bptt``) into
        the compressed memory, inside the current graph.

        This is what BPTT backpropagates through: the language-model loss of
        the segment that attends to these new compressed slots reaches f_c
        and its parameters. It stops at f_c's input (the evicted memories are
        stored detached, as every memory is), and older compressed slots are
        constants, so no graph spans an optimizer step.
        """
        if memory.pending is None:
            return memory
        old, old_mask = memory.pending, memory.pending_mask  # [L, B, T', D], [B, T']
        new = torch.stack([comp(old[layer], old_mask) for layer, comp in enumerate(self.compressors)])
        return memory.with_compressed_pending(new, self.compressors[0].compressed_mask(old_mask))

    # ---------------------------------------------------------------- output
    def token_logits(self, hidden: Tensor) -> Tensor:
        """Final hidden states ``[..., D]`` -> scores of every word ``[..., V]``
        (adaptive softmax: float32 log-probabilities; either way their
        softmax is the model's distribution)."""
        if self.cfg.adaptive:
            return self.head.log_prob(hidden)
        return self.head(hidden)

    def token_nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """Per-token negative log-likelihood ``[...]`` (float32 nats) of
        ``targets`` ``[...]`` under ``hidden`` ``[..., D]``; 0 where a target
        is :data:`IGNORE_INDEX`. The adaptive softmax never builds ``[..., V]``."""
        if self.cfg.adaptive:
            return self.head.nll(hidden, targets, IGNORE_INDEX)
        return _softmax_nll(self.head(hidden), targets)

    def greedy(self, hidden: Tensor) -> Tensor:
        """The most likely next token ``[...]`` under ``hidden`` ``[..., D]``
        (adaptive softmax: a few rows of the full table at a time)."""
        if self.cfg.adaptive:
            return self.head.argmax(hidden)
        return self.head(hidden).argmax(dim=-1)

    # --------------------------------------------------------------- forward
    def forward(
        self, tokens: Tensor, memory: MemoryState | None = None, reset: Tensor | None = None,
        return_usage: bool = False, targets: Tensor | None = None, return_logits: bool | None = None,
    ) -> LMOutput:
        """tokens: ``[B, T]`` int64 with ``T <= seq_len``; reset: ``[B]`` bool,
        rows whose memory is cleared before this segment. ``return_usage``
        adds each layer's attention mass per key, summed over heads and
        queries (keys ``[cmem; mem; segment]``), to the output.

        ``targets`` ``[B, T]`` (next tokens, :data:`IGNORE_INDEX` where there
        is none) adds their per-token NLL ``nll`` ``[B, T]``. ``return_logits``
        (default: when no targets are given) adds ``logits`` ``[B, T, V]``.
        ``hidden`` (the final hidden states) is always returned, for
        :meth:`token_nll`, :meth:`greedy`, :meth:`token_logits`."""
        b, t = tokens.shape
        if t > self.cfg.seq_len:
            raise ValueError(f"segment of {t} tokens is longer than memory.seq_len={self.cfg.seq_len}")
        if return_logits is None:
            return_logits = targets is None
        if memory is None:
            memory = self.empty_memory(b, device=tokens.device)
        if reset is not None:
            memory = memory.reset_rows(reset)
        memory = self.compress_pending(memory)
        want_usage = self.needs_usage or return_usage
        h = self.drop(self.embed(tokens))  # [B, T, D]
        n_keys = memory.cmem_len + memory.mem_len + t
        pos = self.positions(n_keys, tokens.device, h.dtype)  # [K, D]
        key_valid = torch.cat(
            [memory.cmem_mask, memory.mem_mask, torch.ones(b, t, dtype=torch.bool, device=tokens.device)], dim=1
        )  # [B, K]
        # One mask for every layer. FlexAttention cannot report the usage
        # most_used needs, nor drop attention weights out.
        flex = (self.execution.attention == "flex" and not want_usage
                and not (self.training and self.cfg.attn_dropout > 0))
        if flex:
            mask = flex_block_mask(key_valid, t)
        else:
            mask = attention_mask(key_valid, t, compute_dtype(h))  # [B, 1, T, K]
        hidden, usage = [], []
        for layer, block in enumerate(self.blocks):
            hidden.append(h)
            r = block.attn.project_positions(pos)
            slots = (memory.cmem[layer], memory.mem[layer])
            h, u = self._block_fns[layer](h, slots, mask, r, want_usage)
            usage.append(u)
        final = self.norm_out(h)  # [B, T, D]
        logits = self.token_logits(final) if return_logits else None  # [B, T, V]
        nll = None
        if targets is not None:
            if logits is not None and not self.cfg.adaptive:
                nll = _softmax_nll(logits, targets)  # [B, T]
            else:
                nll = self.token_nll(final, targets)  # [B, T]
        next_memory, aux = self.update_memory(memory, torch.stack(hidden), usage if want_usage else None)
        return LMOutput(logits=logits, memory=next_memory, aux_loss=aux, usage=usage if return_usage else None,
                        nll=nll, hidden=final)

    def num_parameters(self, trainable_only: bool = True) -> int:
        params = {id(p): p for p in self.parameters() if p.requires_grad or not trainable_only}
        return sum(p.numel() for p in params.values())


def _softmax_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross entropy of ``logits`` ``[..., V]`` per target ``[...]``, in float32."""
    nll = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="none")
    return nll.view(targets.shape)
