"""Compression functions f_c: ``[B, T', D]`` evicted slots -> ``[B, T'/c, D]``.

One registry, :data:`COMPRESSORS`, maps the short names used in recipes to
the implementations. Every compressor receives the evicted slots with empty
slots zeroed and their mask, so a partly filled group never mixes stale
contents into a valid compressed slot:

- ``max_pool`` / ``mean_pool``: over the valid slots of each group of ``c``.
- ``conv``: 1-D convolution, kernel = stride = c (the paper's best).
- ``dilated_conv``: a WaveNet-style stack of causal kernel-2 convolutions
  with dilations 1, 2, 4, ... whose receptive field (2^n >= 2c slots) ends at
  the last slot of each group: every compressed slot sees its whole group
  and the group before it (zeros before the evicted block starts), so every
  evicted memory reaches a compressed slot.
- ``most_used``: keeps the ``T'/c`` slots that received the most attention
  during the segment, in temporal order; no parameters. The only compressor
  that drops slots: a slot reaches cmem when it was among the most attended.

Adding a compression function: subclass :class:`Compressor` (set
``has_parameters`` / ``needs_usage`` when they apply) and add one entry to
:data:`COMPRESSORS`; configuration, recipes' validation and the property
tests that enumerate the table pick it up.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Compressor(nn.Module):
    """Base class: ``forward(old, old_mask, usage) -> [B, T'/c, D]``.

    ``has_parameters``: f_c has weights, which a compression loss may train.
    ``needs_usage``: f_c needs the attention mass each evicted slot received.
    """

    has_parameters = False
    needs_usage = False

    def __init__(self, d_model: int, compression_rate: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.compression_rate = compression_rate

    def compressed_mask(self, old_mask: Tensor, usage: Tensor | None = None) -> Tensor:
        """Validity ``[B, T'/c]`` of the compressed slots: a slot is valid if
        any of the ``c`` slots of its group was."""
        return self._groups(old_mask).any(dim=-1)

    def _groups(self, x: Tensor) -> Tensor:
        """``[B, T', ...]`` -> ``[B, T'/c, c, ...]``."""
        b, t = x.shape[:2]
        return x.view(b, t // self.compression_rate, self.compression_rate, *x.shape[2:])


class MaxPoolCompressor(Compressor):
    def forward(self, old: Tensor, old_mask: Tensor, usage: Tensor | None = None) -> Tensor:
        groups = self._groups(old)  # [B, G, c, D]
        valid = self._groups(old_mask)[..., None]  # [B, G, c, 1]
        pooled = groups.masked_fill(~valid, float("-inf")).amax(dim=2)  # [B, G, D]
        return torch.where(valid.any(dim=2), pooled, torch.zeros((), dtype=old.dtype, device=old.device))


class MeanPoolCompressor(Compressor):
    def forward(self, old: Tensor, old_mask: Tensor, usage: Tensor | None = None) -> Tensor:
        valid = self._groups(old_mask).to(old.dtype)  # [B, G, c]
        total = self._groups(old).sum(dim=2)  # [B, G, D] (empty slots are zero)
        return total / valid.sum(dim=2, keepdim=True).clamp(min=1.0)


class ConvCompressor(Compressor):
    has_parameters = True

    def __init__(self, d_model: int, compression_rate: int) -> None:
        super().__init__(d_model, compression_rate)
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=compression_rate, stride=compression_rate)

    def forward(self, old: Tensor, old_mask: Tensor, usage: Tensor | None = None) -> Tensor:
        return self.conv(old.transpose(1, 2)).transpose(1, 2)  # [B, T'/c, D]


class DilatedConvCompressor(Compressor):
    has_parameters = True

    def __init__(self, d_model: int, compression_rate: int) -> None:
        super().__init__(d_model, compression_rate)
        # n layers of kernel 2 and dilation 2^i reach 2^n slots back: at least
        # the group (c) and the group before it (another c).
        n_layers = max(1, math.ceil(math.log2(2 * compression_rate)))
        self.layers = nn.ModuleList(
            nn.Conv1d(d_model, d_model, kernel_size=2, dilation=2**i) for i in range(n_layers)
        )

    @property
    def receptive_field(self) -> int:
        return 2 ** len(self.layers)

    def forward(self, old: Tensor, old_mask: Tensor, usage: Tensor | None = None) -> Tensor:
        x = old.transpose(1, 2)  # [B, D, T']
        for conv in self.layers:
            # Causal: left padding by the dilation keeps T' outputs, output t
            # depending on inputs t - (2^n - 1) .. t only.
            x = conv(nn.functional.pad(x, (conv.dilation[0], 0)))
        c = self.compression_rate
        return x[:, :, c - 1 :: c].transpose(1, 2)  # [B, T'/c, D]: the last slot of each group


class MostUsedCompressor(Compressor):
    needs_usage = True

    def compressed_mask(self, old_mask: Tensor, usage: Tensor | None = None) -> Tensor:
        """Validity ``[B, T'/c]`` of the kept slots."""
        return torch.gather(old_mask, 1, self.kept_indices(old_mask, usage, self.compression_rate))

    def forward(self, old: Tensor, old_mask: Tensor, usage: Tensor | None = None) -> Tensor:
        if usage is None:
            raise ValueError("most_used compression needs the attention usage of the evicted slots")
        b, _, d = old.shape
        order = self.kept_indices(old_mask, usage, self.compression_rate)  # [B, T'/c]
        return torch.gather(old, 1, order[:, :, None].expand(b, order.shape[1], d))

    @staticmethod
    def kept_indices(old_mask: Tensor, usage: Tensor, compression_rate: int) -> Tensor:
        """Indices ``[B, T'/c]`` of the most-attended valid slots, in temporal order."""
        keep = old_mask.shape[1] // compression_rate
        score = usage.float().masked_fill(~old_mask, float("-inf"))  # [B, T']
        # Stable sort: ties go to the older slot, the same on every device.
        order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :keep]
        return torch.sort(order, dim=1).values


COMPRESSORS: dict[str, type[Compressor]] = {
    "max_pool": MaxPoolCompressor,
    "mean_pool": MeanPoolCompressor,
    "conv": ConvCompressor,
    "dilated_conv": DilatedConvCompressor,
    "most_used": MostUsedCompressor,
}


#: Names of every compression function, and of those with weights.
COMPRESSIONS: tuple[str, ...] = tuple(COMPRESSORS)
PARAMETRIC_COMPRESSIONS: tuple[str, ...] = tuple(n for n, c in COMPRESSORS.items() if c.has_parameters)


def build_compressor(name: str, d_model: int, compression_rate: int) -> Compressor:
    """The compressor registered as ``name`` (validated by ModelConfig)."""
    return COMPRESSORS[name](d_model, compression_rate)
