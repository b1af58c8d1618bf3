"""Compressive memory state and its update (Rae et al., 2019, Algorithm 1).

Every layer keeps two fixed-size buffers of its *input* hidden states:
``mem`` (FIFO, n_m = ``mem_len`` slots) and ``cmem`` (compressed, n_cm =
``cmem_len`` slots). A per-row validity mask marks filled slots; empty slots
are never attended. After each segment of ``T`` tokens with layer inputs
``h``::

    old      = oldest T entries pushed out of concat(mem, h)
    mem      = concat(mem, h)[-mem_len:]
    new_cmem = f_c(old)                       # [B, ceil(T / c), D]
    cmem     = concat(cmem, new_cmem)[-cmem_len:]

Shapes never depend on the data (eviction is the same for every row), so the
update is compile-friendly; a reset row only has its slots cleared. When
``T`` is not a multiple of ``c`` (the short end of a stream), ``old`` is
padded at its oldest end with empty slots.

Under ``compression_loss=bptt`` the last line is deferred: the evicted block
waits in ``pending`` (detached) and the next forward compresses it inside its
own graph, so the language-model loss of that segment trains f_c while no
graph ever outlives an optimizer step.

Example::

    state = MemoryState.empty(n_layers=2, batch_size=3, mem_len=8, cmem_len=4, d_model=16)
    ev = state.evict(h, compression_rate=4)          # h: [2, 3, T, 16]
    state = state.with_memories(ev, new_cmem, new_cmem_mask)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Eviction:
    """Result of pushing one segment into the FIFO memory.

    ``old`` is padded at its oldest end to a multiple of the compression
    rate; invalid slots hold zeros so stale contents never leak into f_c.
    """

    mem: Tensor  # [L, B, M, D] new FIFO memory
    mem_mask: Tensor  # [B, M]
    old: Tensor  # [L, B, T', D] evicted slots, T' = T rounded up to a multiple of c
    old_mask: Tensor  # [B, T']
    n_pad: int  # empty slots prepended to old


@dataclass
class MemoryState:
    """Per-layer memories of one batch of streams (rows are independent)."""

    mem: Tensor  # [L, B, M, D]
    mem_mask: Tensor  # [B, M] bool, True = filled
    cmem: Tensor  # [L, B, C, D]
    cmem_mask: Tensor  # [B, C] bool
    pending: Tensor | None = None  # [L, B, T', D] evicted, not yet compressed (bptt only)
    pending_mask: Tensor | None = None  # [B, T'] bool

    @classmethod
    def empty(
        cls,
        n_layers: int,
        batch_size: int,
        mem_len: int,
        cmem_len: int,
        d_model: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        pending_len: int = 0,
    ) -> "MemoryState":
        """All slots empty (zeros, masked). ``pending_len > 0`` adds an empty
        pending block (bptt), so every forward runs the compressor."""
        pending = pending_mask = None
        if pending_len > 0:
            pending = torch.zeros(n_layers, batch_size, pending_len, d_model, device=device, dtype=dtype)
            pending_mask = torch.zeros(batch_size, pending_len, dtype=torch.bool, device=device)
        return cls(
            mem=torch.zeros(n_layers, batch_size, mem_len, d_model, device=device, dtype=dtype),
            mem_mask=torch.zeros(batch_size, mem_len, dtype=torch.bool, device=device),
            cmem=torch.zeros(n_layers, batch_size, cmem_len, d_model, device=device, dtype=dtype),
            cmem_mask=torch.zeros(batch_size, cmem_len, dtype=torch.bool, device=device),
            pending=pending,
            pending_mask=pending_mask,
        )

    @property
    def n_layers(self) -> int:
        return self.mem.shape[0]

    @property
    def batch_size(self) -> int:
        return self.mem.shape[1]

    @property
    def mem_len(self) -> int:
        return self.mem.shape[2]

    @property
    def cmem_len(self) -> int:
        return self.cmem.shape[2]

    def detach(self) -> "MemoryState":
        pending = None if self.pending is None else self.pending.detach()
        return MemoryState(self.mem.detach(), self.mem_mask, self.cmem.detach(), self.cmem_mask, pending,
                           self.pending_mask)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "MemoryState":
        has_pending = self.pending is not None
        return MemoryState(
            self.mem.to(device=device, dtype=dtype),
            self.mem_mask.to(device=device),
            self.cmem.to(device=device, dtype=dtype),
            self.cmem_mask.to(device=device),
            self.pending.to(device=device, dtype=dtype) if has_pending else None,
            self.pending_mask.to(device=device) if has_pending else None,
        )

    def reset_rows(self, reset: Tensor) -> "MemoryState":
        """Empty the memories of rows where ``reset`` ``[B]`` is True.

        Contents are zeroed as well as masked so that a reset row is
        bit-identical to a fresh start.
        """
        keep = ~reset.to(device=self.mem.device, dtype=torch.bool)  # [B]
        row = keep[None, :, None, None]

        def cleared(x: Tensor) -> Tensor:
            return torch.where(row, x, torch.zeros((), dtype=x.dtype, device=x.device))

        has_pending = self.pending is not None
        return MemoryState(
            mem=cleared(self.mem),
            mem_mask=self.mem_mask & keep[:, None],
            cmem=cleared(self.cmem),
            cmem_mask=self.cmem_mask & keep[:, None],
            pending=cleared(self.pending) if has_pending else None,
            pending_mask=self.pending_mask & keep[:, None] if has_pending else None,
        )

    def attended(self, layer: int) -> tuple[Tensor, Tensor]:
        """Layer ``layer``'s memory as attended: ``[B, C + M, D]`` (cmem first)
        and the mask ``[B, C + M]``."""
        slots = torch.cat([self.cmem[layer], self.mem[layer]], dim=1)
        return slots, torch.cat([self.cmem_mask, self.mem_mask], dim=1)

    def evict(self, hidden: Tensor, compression_rate: int) -> Eviction:
        """Push layer inputs ``hidden`` ``[L, B, T, D]`` through the FIFO memory.

        Algorithm 1's first two lines: the ``T`` oldest entries of
        ``concat(mem, hidden)`` are evicted, the newest ``mem_len`` stay.
        """
        n_layers, b, t, d = hidden.shape
        full = torch.cat([self.mem, hidden], dim=2)  # [L, B, M + T, D]
        full_mask = torch.cat(
            [self.mem_mask, torch.ones(b, t, dtype=torch.bool, device=hidden.device)], dim=1
        )  # [B, M + T]
        m = self.mem_len
        # Contiguous copies: a view would keep the whole [L, B, M + T, D]
        # buffer alive, and its strides would differ from those of a memory
        # loaded from a checkpoint (a compiled block would recompile).
        mem = full[:, :, full.shape[2] - m :].contiguous()
        mem_mask = full_mask[:, full_mask.shape[1] - m :].contiguous()
        old, old_mask = full[:, :, :t], full_mask[:, :t]
        n_pad = (-t) % compression_rate
        if n_pad:
            old = torch.cat([old.new_zeros(n_layers, b, n_pad, d), old], dim=2)
            old_mask = torch.cat([old_mask.new_zeros(b, n_pad), old_mask], dim=1)
        old = torch.where(old_mask[None, :, :, None], old, torch.zeros((), dtype=old.dtype, device=old.device))
        return Eviction(mem=mem, mem_mask=mem_mask, old=old, old_mask=old_mask, n_pad=n_pad)

    def with_memories(self, eviction: Eviction, new_cmem: Tensor | None, new_cmem_mask: Tensor | None) -> "MemoryState":
        """Algorithm 1's last line: append ``new_cmem`` ``[L, B, T'/c, D]``
        (mask ``[B, T'/c]``) to the compressed memory and keep the newest
        ``cmem_len`` slots. With ``cmem_len = 0`` nothing is compressed."""
        cmem, cmem_mask = self.appended(new_cmem, new_cmem_mask)
        return MemoryState(eviction.mem, eviction.mem_mask, cmem, cmem_mask)

    def with_pending(self, eviction: Eviction) -> "MemoryState":
        """Algorithm 1 with its last line deferred: the FIFO memory moves on
        and the evicted block waits in ``pending`` for the next forward."""
        return MemoryState(eviction.mem, eviction.mem_mask, self.cmem, self.cmem_mask, eviction.old,
                           eviction.old_mask)

    def with_compressed_pending(self, new_cmem: Tensor, new_cmem_mask: Tensor) -> "MemoryState":
        """The deferred last line of Algorithm 1: ``new_cmem`` ``[L, B, T'/c, D]``
        is ``f_c(pending)``; it joins the compressed memory, ``pending`` clears."""
        cmem, cmem_mask = self.appended(new_cmem, new_cmem_mask)
        return MemoryState(self.mem, self.mem_mask, cmem, cmem_mask)

    def appended(self, new_cmem: Tensor | None, new_cmem_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The newest ``cmem_len`` slots of ``[cmem; new_cmem]`` and their mask."""
        c = self.cmem_len
        if c == 0 or new_cmem is None:
            return self.cmem, self.cmem_mask
        cmem = torch.cat([self.cmem, new_cmem.to(self.cmem.dtype)], dim=2)
        cmem_mask = torch.cat([self.cmem_mask, new_cmem_mask], dim=1)
        # Contiguous, as in evict: no view of the longer buffer outlives the update.
        return cmem[:, :, cmem.shape[2] - c :].contiguous(), cmem_mask[:, cmem_mask.shape[1] - c :].contiguous()

    def where(self, condition: Tensor, other: "MemoryState") -> "MemoryState":
        """``other`` where the 0-dim bool ``condition`` holds, else this
        state, tensor by tensor: a choice made on the device, without
        reading ``condition`` on the host."""

        def pick(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            return None if a is None else torch.where(condition, b, a)

        return MemoryState(*(pick(getattr(self, f), getattr(other, f)) for f in
                             ("mem", "mem_mask", "cmem", "cmem_mask", "pending", "pending_mask")))

    def state_dict(self) -> dict[str, Tensor]:
        state = {"mem": self.mem, "mem_mask": self.mem_mask, "cmem": self.cmem, "cmem_mask": self.cmem_mask}
        if self.pending is not None:
            state.update(pending=self.pending, pending_mask=self.pending_mask)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "MemoryState":
        return cls(state["mem"], state["mem_mask"], state["cmem"], state["cmem_mask"], state.get("pending"),
                   state.get("pending_mask"))

