"""Training batches on the device, one ahead of the step that uses them.

The stream batcher builds each batch on the host (numpy slicing of memmaps).
On CUDA, :class:`BatchPrefetcher` builds the next batch while the GPU still
runs the current step, pins it and copies it with ``non_blocking=True``, so
neither the host work nor the copy waits for the GPU. The copy is queued on
the current stream, behind the work already there and ahead of the step that
reads it, which orders it without events. On CPU it hands batches out as the
batcher makes them (there is nothing to overlap).

A prefetched batch has been taken from the batcher but not yet trained on,
so :meth:`BatchPrefetcher.state_dict` returns the batcher's state from
before it: a checkpoint resumes at the first batch no step has used.

Example::

    batches = BatchPrefetcher(batcher, torch.device("cuda"), grad_accum=2, ahead=True)
    micro = batches.next()       # grad_accum micro-batches of one segment, on the device
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ct_core.data.stream_batcher import Batch, StreamBatcher


class BatchPrefetcher:
    """Micro-batches of the next segment of every lane, on ``device``."""

    def __init__(self, batcher: StreamBatcher, device: torch.device, grad_accum: int, ahead: bool) -> None:
        self.batcher = batcher
        self.device = device
        self.grad_accum = grad_accum
        self.ahead = ahead
        self._pending: tuple[dict[str, Any], list[Batch]] | None = None  # (batcher state before it, batch)

    def _fetch(self) -> list[Batch]:
        micro = next(self.batcher).split(self.grad_accum)
        if self.device.type == "cuda":
            micro = [mb.pin_memory() for mb in micro]
        return [mb.to(self.device, non_blocking=True) for mb in micro]

    def next(self) -> list[Batch]:
        """The next segment's ``grad_accum`` micro-batches (and, when
        prefetching, the fetch of the one after it started)."""
        if self._pending is None:
            batch = self._fetch()
        else:
            batch = self._pending[1]
        self._pending = None
        if self.ahead:
            state = self.batcher.state_dict()
            self._pending = (state, self._fetch())
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The batcher's state at the first batch not yet handed out."""
        return self._pending[0] if self._pending is not None else self.batcher.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.batcher.load_state_dict(state)
        self._pending = None
