"""Compression functions f_c: ``[B, T', D]`` evicted slots -> ``[B, T'/c, D]``.

One registry, :data:`COMPRESSORS`, maps the short names used in recipes to
the implementations. Every compressor receives the evicted slots with empty
slots zeroed and their mask, so a partly filled group never mixes stale
contents into a valid compressed slot:

- ``max_pool`` / ``mean_pool``: over the valid slots of each group of ``c``.
- ``conv``: 1-D convolution, kernel = stride = c (the paper's best).
- ``dilated_conv``: kernel c, dilation 2, stride c over a left-padded input,
  so each slot also sees the group before it (within the evicted block).
- ``most_used``: keeps the ``T'/c`` slots that received the most attention
  during the segment, in temporal order; no parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Compressor(nn.Module):
    """Base class: ``forward(old, old_mask, usage) -> [B, T'/c, D]``."""

    has_parameters = False

    def __init__(self, d_model: int, compression_rate: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.compression_rate = compression_rate

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
    dilation = 2

    def __init__(self, d_model: int, compression_rate: int) -> None:
        super().__init__(d_model, compression_rate)
        self.conv = nn.Conv1d(
            d_model, d_model, kernel_size=compression_rate, stride=compression_rate, dilation=self.dilation
        )

    def forward(self, old: Tensor, old_mask: Tensor, usage: Tensor | None = None) -> Tensor:
        c = self.compression_rate
        # Receptive field (c-1)*dilation+1; left padding of (c-1)*(dilation-1)
        # keeps T'/c outputs with output g ending at the last slot of group g.
        pad = (c - 1) * (self.dilation - 1)
        x = nn.functional.pad(old.transpose(1, 2), (pad, 0))  # [B, D, pad + T']
        return self.conv(x).transpose(1, 2)


class MostUsedCompressor(Compressor):
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


def build_compressor(name: str, d_model: int, compression_rate: int) -> Compressor:
    """The compressor registered as ``name`` (validated by ModelConfig)."""
    return COMPRESSORS[name](d_model, compression_rate)
