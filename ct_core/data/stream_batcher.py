"""Ordered lanes of segments: documents -> ``x [B, T]``, ``y [B, T]``, ``reset [B]``.

The batch has ``B`` rows ("lanes"); each lane walks its own ordered list of
*pieces* in segments of ``T = seq_len`` tokens, so the model's memory of row
``b`` always holds the text that came just before in that lane (the
Transformer-XL iterator). A piece ``(doc, start, end)`` is a contiguous part
of one document: inputs ``doc[start:end]``, targets ``doc[start+1:end+1]``.
A document of length ``L`` has ``L - 1`` targets (its first token is never
predicted); documents with fewer than two tokens contribute nothing.

Segments never cross a piece boundary: the last segment of a piece is
right-padded (``x`` with 0, ``y`` with :data:`IGNORE_INDEX`) and the next
piece starts on a fresh segment with ``reset[b] = True``, the signal for the
model to clear row ``b``'s memory.

Train mode (infinite): epoch ``e`` orders the documents (a permutation drawn
with ``seed + e`` when ``shuffle``, else file order), concatenates their
targets into one stream and cuts it into ``B`` contiguous shares of
``total // B`` targets (the remainder ``total % B`` is dropped for that
epoch). A single long document (enwik8) thus becomes ``B`` contiguous pieces;
a document cut at a share boundary becomes two pieces, each starting with a
reset. Every lane wraps on its own: when lane ``b`` finishes its share of
epoch ``e`` it continues with its share of epoch ``e + 1``. The ordering of
an epoch is global (all lanes cut the same stream), but lanes may be a few
segments apart in epochs because pieces end with padding at different
times; a lane's cursor ``(epoch, piece, offset)`` therefore carries its own
epoch. This keeps every lane busy on every step and makes the whole walk a
pure function of ``(documents, B, T, seed, shuffle)``.

Eval mode (finite): every target of every document exactly once. With at
least ``B`` documents, lane ``b`` gets a contiguous group of whole documents
in file order; the groups are balanced by their length in segments (target
tokens rounded up to whole segments: what a lane spends steps on). With fewer
documents than lanes, documents are cut into contiguous pieces so that every
lane gets work (lanes are shared out in proportion to document length); two
pieces of one document overlap by one token (the last target of one is the
first input of the next), so no target is lost or counted twice. A lane that
has finished emits all-padding rows with ``reset = False`` until every lane
is done.

Distributed training: every rank computes the same ``B`` global lanes and
keeps all ``B`` cursors (so any rank's :meth:`~StreamBatcher.state_dict`
resumes any world size), but slices tokens only for its own rows
``[rank * B / W, (rank + 1) * B / W)``. Each batch also carries the target
count of all ``B`` lanes, which every rank knows without communicating.

Distributed evaluation with ``B`` not a multiple of ``W``: the lanes are
rounded up to the next multiple of ``W``; lanes ``B ..`` are idle (padding
rows from the start), and lanes ``0 .. B-1`` walk exactly what ``B`` lanes
walk in one process, so every world size evaluates the same segments.

Example::

    docs = [np.arange(10), np.arange(100, 105)]
    batcher = StreamBatcher(docs, batch_size=2, seq_len=4, mode="eval", seed=0, shuffle=False)
    for batch in batcher:
        batch.x, batch.y, batch.reset      # [2, 4], [2, 4], [2]
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ct_core.errors import ConfigError, DataError
from ct_core.model.lm import IGNORE_INDEX  # padding targets: the model's loss skips them

MODES = ("train", "eval")


@dataclass
class Batch:
    """One step of ``b = B / world_size`` lanes."""

    x: torch.Tensor  # [b, T] int64 inputs, 0 where padded
    y: torch.Tensor  # [b, T] int64 targets, IGNORE_INDEX where padded
    reset: torch.Tensor  # [b] bool: row starts a new piece; clear its memory first
    row_targets: tuple[int, ...]  # [b] number of y != IGNORE_INDEX per row, known without reading y
    n_targets_global: int  # targets of this step over every rank's lanes

    @property
    def n_targets(self) -> int:
        """Number of y != IGNORE_INDEX."""
        return sum(self.row_targets)

    def split(self, n: int) -> list["Batch"]:
        """``n`` micro-batches for gradient accumulation; micro-batch ``i``
        holds rows ``[i * b / n, (i + 1) * b / n)``, so a lane keeps its row
        (and its memory row) in every step."""
        rows = self.x.shape[0]
        if n <= 0 or rows % n != 0:
            raise ConfigError(
                f"a batch of {rows} lanes per process cannot be split into {n} micro-batches; "
                "trainer.batch_size / world size must be a multiple of trainer.grad_accum"
            )
        size = rows // n
        return [
            Batch(
                x=self.x[i * size : (i + 1) * size],
                y=self.y[i * size : (i + 1) * size],
                reset=self.reset[i * size : (i + 1) * size],
                row_targets=self.row_targets[i * size : (i + 1) * size],
                n_targets_global=self.n_targets_global,
            )
            for i in range(n)
        ]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(
            x=self.x.to(device, non_blocking=non_blocking),
            y=self.y.to(device, non_blocking=non_blocking),
            reset=self.reset.to(device, non_blocking=non_blocking),
            row_targets=self.row_targets,
            n_targets_global=self.n_targets_global,
        )

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory, so that ``to(cuda,
        non_blocking=True)`` copies it while the GPU computes."""
        return Batch(self.x.pin_memory(), self.y.pin_memory(), self.reset.pin_memory(), self.row_targets,
                     self.n_targets_global)


@dataclass
class _Plan:
    """Pieces of all ``B`` lanes for one epoch, lane after lane."""

    doc: np.ndarray  # [P] document index
    start: np.ndarray  # [P] first input position; targets are start+1 .. end
    end: np.ndarray  # [P]
    lane_ptr: np.ndarray  # [B + 1] lane b owns pieces lane_ptr[b] .. lane_ptr[b+1] - 1

    def segments_per_lane(self, seq_len: int) -> np.ndarray:
        """Steps each lane needs to walk all its pieces, ``[B]``."""
        segments = -(-(self.end - self.start) // seq_len)  # ceil: a short tail still costs a step
        cum = np.concatenate([[0], np.cumsum(segments)])
        return cum[self.lane_ptr[1:]] - cum[self.lane_ptr[:-1]]


class StreamBatcher:
    """Iterator of :class:`Batch` over ``documents`` (see the module docstring).

    ``batch_size`` is the global number of lanes ``B``; this process yields
    ``B / world_size`` of them (eval mode: ``ceil(B / world_size)``, see the
    module docstring).
    """

    def __init__(
        self,
        documents: Sequence[np.ndarray],
        batch_size: int,
        seq_len: int,
        mode: str = "train",
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"batcher mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
        if batch_size <= 0:
            raise ConfigError(f"trainer.batch_size={batch_size} must be a positive integer")
        if seq_len <= 0:
            raise ConfigError(f"memory.seq_len={seq_len} must be a positive integer")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside a world of {world_size} processes")
        if mode == "train" and batch_size % world_size != 0:
            raise ConfigError(
                f"trainer.batch_size={batch_size} must be divisible by the world size "
                f"{world_size} (lanes are split evenly across processes)"
            )
        self.documents = documents
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.mode = mode
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        # All lanes with their idle padding (eval mode): a multiple of world_size.
        self.n_lanes = -(-batch_size // world_size) * world_size
        local = self.n_lanes // world_size
        self._rows = range(rank * local, (rank + 1) * local)  # global lanes of this process

        # Targets per document: L - 1, none for empty or one-token documents.
        self._n_targets = np.fromiter(
            (max(len(d) - 1, 0) for d in documents), dtype=np.int64, count=len(documents)
        )
        self.total_targets = int(self._n_targets.sum())
        if mode == "train" and self.total_targets < batch_size:
            raise DataError(
                f"the training documents hold {self.total_targets} target tokens, too few for "
                f"trainer.batch_size={batch_size} lanes; lower trainer.batch_size or add data"
            )

        self._epoch = [0] * self.n_lanes
        self._piece = [0] * self.n_lanes  # index among the lane's pieces of its epoch
        self._offset = [0] * self.n_lanes  # targets of the current piece already emitted
        self._plans: dict[int, _Plan] = {}
        if mode == "eval":
            self._plans[0] = self._eval_plan()

    # ----------------------------------------------------------------- plans
    def _plan(self, epoch: int) -> _Plan:
        if epoch not in self._plans:
            self._plans[epoch] = self._train_plan(epoch)
        return self._plans[epoch]

    def _train_plan(self, epoch: int) -> _Plan:
        """Cut epoch ``epoch``'s stream of targets into ``B`` equal shares."""
        n_docs = len(self._n_targets)
        if self.shuffle:
            order = np.random.default_rng(self.seed + epoch).permutation(n_docs)
        else:
            order = np.arange(n_docs)
        order = order[self._n_targets[order] > 0]
        lengths = self._n_targets[order]
        ends = np.cumsum(lengths)  # stream position after each document's targets
        starts = ends - lengths
        share = self.total_targets // self.batch_size
        used = share * self.batch_size
        # Pieces run between consecutive cut points: document starts and lane
        # boundaries; union1d sorts and merges the two.
        cuts = np.union1d(starts[starts < used], np.arange(self.batch_size + 1) * share)
        lo, hi = cuts[:-1], cuts[1:]
        k = np.searchsorted(ends, lo, side="right")  # the document holding stream position lo
        lanes = lo // share
        return _Plan(
            doc=order[k],
            start=lo - starts[k],
            end=hi - starts[k],
            lane_ptr=np.searchsorted(lanes, np.arange(self.batch_size + 1)),
        )

    def _eval_plan(self) -> _Plan:
        plan = self._active_eval_plan()
        idle = np.full(self.n_lanes - self.batch_size, plan.lane_ptr[-1])  # padding lanes own no piece
        return _Plan(plan.doc, plan.start, plan.end, np.concatenate([plan.lane_ptr, idle]))

    def _active_eval_plan(self) -> _Plan:
        """The eval pieces of lanes ``0 .. B-1`` (``lane_ptr`` ``[B + 1]``)."""
        docs = np.flatnonzero(self._n_targets > 0)
        lengths = self._n_targets[docs]
        n_lanes = self.batch_size
        if len(docs) >= n_lanes:
            return _Plan(
                doc=docs,
                start=np.zeros_like(lengths),
                end=lengths,
                lane_ptr=self._balanced_groups(-(-lengths // self.seq_len)),
            )
        # Fewer documents than lanes: share lanes out by length, at least one
        # per document and at most one per target, always splitting the
        # document whose pieces are currently the longest.
        busy = min(n_lanes, self.total_targets)
        alloc = [1] * len(docs)
        heap = [(-int(n), i) for i, n in enumerate(lengths)]
        heapq.heapify(heap)
        for _ in range(busy - len(docs)):
            _, i = heapq.heappop(heap)
            alloc[i] += 1
            if alloc[i] < lengths[i]:
                heapq.heappush(heap, (-lengths[i] / alloc[i], i))
        doc, start, end = [], [], []
        for i, (d, n) in enumerate(zip(docs, lengths)):
            bounds = np.arange(alloc[i] + 1) * int(n) // alloc[i]
            doc += [d] * alloc[i]
            start += bounds[:-1].tolist()
            end += bounds[1:].tolist()
        lane_ptr = np.minimum(np.arange(n_lanes + 1), busy)  # lanes >= busy stay idle
        return _Plan(np.asarray(doc, np.int64), np.asarray(start, np.int64), np.asarray(end, np.int64), lane_ptr)

    def _balanced_groups(self, cost: np.ndarray) -> np.ndarray:
        """Lane boundaries ``[B + 1]`` over documents of ``cost`` ``[D]``
        (``D >= B``): contiguous, non-empty groups with near-equal cost."""
        n_docs, n_lanes = len(cost), self.batch_size
        cum = np.concatenate([[0], np.cumsum(cost)])
        ideal = cum[-1] * np.arange(n_lanes + 1) / n_lanes
        j = np.clip(np.searchsorted(cum, ideal), 1, n_docs)
        nearer_left = ideal - cum[j - 1] < cum[j] - ideal
        bounds = np.where(nearer_left, j - 1, j)
        bounds[0], bounds[-1] = 0, n_docs
        for b in range(1, n_lanes):  # every lane gets at least one document
            bounds[b] = min(max(bounds[b], bounds[b - 1] + 1), n_docs - (n_lanes - b))
        return bounds

    # ------------------------------------------------------------- iteration
    @property
    def n_batches(self) -> int | None:
        """Batches of a full pass in eval mode; ``None`` in train mode (infinite)."""
        if self.mode == "train":
            return None
        return int(self._plans[0].segments_per_lane(self.seq_len).max(initial=0))

    def _current(self, lane: int) -> tuple[int, int, int] | None:
        """``(doc, first input position, end)`` of the lane's next segment, or
        ``None`` when an eval lane is done."""
        plan = self._plan(self._epoch[lane])
        p = int(plan.lane_ptr[lane]) + self._piece[lane]
        if p >= plan.lane_ptr[lane + 1]:
            return None
        return int(plan.doc[p]), int(plan.start[p]) + self._offset[lane], int(plan.end[p])

    def _advance(self, lane: int) -> None:
        current = self._current(lane)
        if current is None:
            return
        _, position, end = current
        if position + self.seq_len < end:
            self._offset[lane] += self.seq_len
            return
        self._offset[lane] = 0
        self._piece[lane] += 1
        plan = self._plan(self._epoch[lane])
        if self.mode == "train" and self._piece[lane] >= plan.lane_ptr[lane + 1] - plan.lane_ptr[lane]:
            self._epoch[lane] += 1
            self._piece[lane] = 0

    def _done(self) -> bool:
        return all(self._current(lane) is None for lane in range(self.n_lanes))

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.mode == "eval" and self._done():
            raise StopIteration
        rows, seq_len = len(self._rows), self.seq_len
        x = np.zeros((rows, seq_len), dtype=np.int64)  # [b, T]
        y = np.full((rows, seq_len), IGNORE_INDEX, dtype=np.int64)  # [b, T]
        reset = np.zeros(rows, dtype=bool)  # [b]
        row_targets = [0] * rows
        n_targets_global = 0
        for lane in range(self.n_lanes):
            current = self._current(lane)
            if current is not None:
                n_targets_global += min(seq_len, current[2] - current[1])
        for row, lane in enumerate(self._rows):
            current = self._current(lane)
            if current is None:
                continue
            doc, position, end = current
            n = min(seq_len, end - position)
            tokens = np.asarray(self.documents[doc][position : position + n + 1])  # [n + 1]
            x[row, :n] = tokens[:-1]
            y[row, :n] = tokens[1:]
            reset[row] = self._offset[lane] == 0
            row_targets[row] = n
        for lane in range(self.n_lanes):  # all cursors advance, not only this rank's
            self._advance(lane)
        if self.mode == "train":
            oldest = min(self._epoch)
            for epoch in [e for e in self._plans if e < oldest]:
                del self._plans[epoch]
        return Batch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(reset), tuple(row_targets),
                     n_targets_global)

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Lane cursors and what they refer to, as plain ints and lists
        (loads with ``torch.load(weights_only=True)``)."""
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "n_documents": len(self.documents),
            "total_targets": self.total_targets,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": list(self._epoch),
            "piece": list(self._piece),
            "offset": list(self._offset),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the batcher that wrote ``state`` stopped."""
        checks = [
            ("mode", "the batcher mode", "use a state saved in the same mode"),
            ("batch_size", "trainer.batch_size", "resume with the same trainer.batch_size"),
            ("seq_len", "memory.seq_len", "resume with the same memory.seq_len"),
            ("n_documents", "the number of documents", "resume with the same data"),
            ("total_targets", "the number of target tokens", "resume with the same data"),
            ("seed", "the data seed", "resume with the same seed"),
            ("shuffle", "the shuffle setting", "resume with the same shuffle setting"),
        ]
        mine = self.state_dict()
        for key, name, fix in checks:
            if state.get(key) != mine[key]:
                raise ConfigError(
                    f"batcher state was saved with {name} = {state.get(key)!r} but this run has "
                    f"{mine[key]!r}; {fix} or start a new run"
                )
        self._epoch = [int(v) for v in state["epoch"]]
        self._piece = [int(v) for v in state["piece"]]
        self._offset = [int(v) for v in state["offset"]]
        self._plans = {0: self._plans[0]} if self.mode == "eval" else {}
