"""StreamBatcher against slow, obvious references: lanes vs the concatenated stream."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from ct_core.errors import ConfigError, DataError
from ct_core.data.stream_batcher import IGNORE_INDEX, StreamBatcher


def make_docs(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50_000, size=n).astype(np.int32) for n in lengths]


def lane_segments(batches, n_lanes: int) -> list[list[tuple[bool, np.ndarray, np.ndarray]]]:
    """Per lane: (reset, x, y) of every segment, padding removed."""
    lanes: list[list] = [[] for _ in range(n_lanes)]
    for batch in batches:
        assert batch.x.dtype == torch.int64 and batch.y.dtype == torch.int64
        assert batch.reset.dtype == torch.bool
        assert batch.n_targets == int((batch.y != IGNORE_INDEX).sum())
        for b in range(n_lanes):
            y = batch.y[b].numpy()
            n = int((y != IGNORE_INDEX).sum())
            # padding only ever at the right end, with x = 0 there
            assert (y[:n] != IGNORE_INDEX).all() and (batch.x[b, n:] == 0).all()
            lanes[b].append((bool(batch.reset[b]), batch.x[b, :n].numpy(), y[:n]))
    return lanes


def pieces_from_segments(segments, seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Join segments into pieces at resets. A short segment must end its
    piece; callers compare the pieces with a reference, so a reset in the
    wrong place shows up as a wrong piece boundary."""
    pieces: list[list] = []
    ended = True
    for reset, x, y in segments:
        if len(y) == 0:  # an eval lane that is done
            assert not reset
            ended = True
            continue
        assert reset or not ended, "a segment after a short one must start a new piece"
        if reset:
            pieces.append([[], []])
        pieces[-1][0].append(x)
        pieces[-1][1].append(y)
        ended = len(y) < seq_len
    return [(np.concatenate(x), np.concatenate(y)) for x, y in pieces]


def reference_train_pieces(docs, order, n_lanes: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """One epoch, token by token: the stream of (doc, position) targets, cut
    into n_lanes equal shares, then grouped into runs of one document."""
    stream = [(i, p) for i in order for p in range(1, len(docs[i]))]
    share = len(stream) // n_lanes
    lanes = []
    for b in range(n_lanes):
        runs: list[list[tuple[int, int]]] = []
        for i, p in stream[b * share : (b + 1) * share]:
            if runs and runs[-1][-1][0] == i:
                runs[-1].append((i, p))
            else:
                runs.append([(i, p)])
        lanes.append(
            [
                (
                    np.array([docs[i][p - 1] for i, p in run]),
                    np.array([docs[i][p] for i, p in run]),
                )
                for run in runs
            ]
        )
    return lanes


def assert_pieces_equal(got, expected) -> None:
    assert len(got) == len(expected)
    for (gx, gy), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(gx, ex)
        np.testing.assert_array_equal(gy, ey)


def epoch_order(n_docs: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n_docs))
    return np.random.default_rng(seed + epoch).permutation(n_docs).tolist()


@pytest.mark.parametrize("shuffle", [False, True])
def test_train_lanes_are_contiguous_shares_of_each_epoch(shuffle: bool) -> None:
    docs = make_docs([37, 1, 120, 0, 9, 64, 2, 250, 33, 17, 80])
    n_lanes, seq_len, seed = 4, 16, 3
    batcher = StreamBatcher(docs, n_lanes, seq_len, "train", seed=seed, shuffle=shuffle)
    lanes = lane_segments(itertools.islice(batcher, 60), n_lanes)
    total = sum(max(len(d) - 1, 0) for d in docs)
    for b in range(n_lanes):
        got = pieces_from_segments(lanes[b], seq_len)
        expected = []
        for epoch in range(8):
            order = epoch_order(len(docs), seed, epoch, shuffle)
            expected += reference_train_pieces(docs, order, n_lanes)[b]
        assert sum(len(y) for _, y in expected) == 8 * (total // n_lanes)
        assert len(got) >= 2 * len(reference_train_pieces(docs, list(range(len(docs))), n_lanes)[b])
        assert_pieces_equal(got[:-1], expected[: len(got) - 1])  # the last may be unfinished
        gx, gy = got[-1]
        np.testing.assert_array_equal(gy, expected[len(got) - 1][1][: len(gy)])
    # Lanes of one epoch together cover the stream minus the remainder.
    order = epoch_order(len(docs), seed, 0, shuffle)
    covered = np.concatenate([y for lane in reference_train_pieces(docs, order, n_lanes) for _, y in lane])
    stream = np.concatenate([docs[i][1:] for i in order])
    np.testing.assert_array_equal(covered, stream[: len(stream) - total % n_lanes])


def test_single_long_document_becomes_one_contiguous_piece_per_lane() -> None:
    (doc,) = make_docs([1001])
    n_lanes, seq_len = 4, 32
    share = 1000 // n_lanes
    steps_per_epoch = -(-share // seq_len)
    batches = list(itertools.islice(StreamBatcher([doc], n_lanes, seq_len, "train", seed=0), 2 * steps_per_epoch))
    assert batches[0].reset.all()
    assert batches[steps_per_epoch].reset.all()
    assert sum(int(b.reset.sum()) for b in batches) == 2 * n_lanes
    lanes = lane_segments(batches[:steps_per_epoch], n_lanes)
    for b in range(n_lanes):
        ((x, y),) = pieces_from_segments(lanes[b], seq_len)
        np.testing.assert_array_equal(x, doc[b * share : (b + 1) * share])
        np.testing.assert_array_equal(y, doc[b * share + 1 : (b + 1) * share + 1])


def assert_eval_covers_documents(docs, n_lanes: int, seq_len: int, whole_documents: bool) -> list:
    """Lanes in order, pieces in order, reproduce every document's targets once."""
    batcher = StreamBatcher(docs, n_lanes, seq_len, "eval", seed=0, shuffle=False)
    batches = list(batcher)
    assert len(batches) == batcher.n_batches
    assert sum(b.n_targets for b in batches) == sum(max(len(d) - 1, 0) for d in docs)
    lanes = [pieces_from_segments(s, seq_len) for s in lane_segments(batches, n_lanes)]
    walk = iter([d for d in docs if len(d) > 1])
    doc, position = None, 0
    for pieces in lanes:
        for x, y in pieces:
            if doc is None or position == len(doc) - 1:
                doc, position = next(walk), 0
            elif whole_documents:
                pytest.fail("a document was cut although there are enough documents for every lane")
            np.testing.assert_array_equal(x, doc[position : position + len(x)])
            np.testing.assert_array_equal(y, doc[position + 1 : position + 1 + len(y)])
            position += len(y)
    assert position == len(doc) - 1 and next(walk, None) is None
    assert batches[-1].n_targets > 0  # iteration stops as soon as the last lane is done
    return lanes


def test_eval_walks_every_target_once_with_whole_documents() -> None:
    docs = make_docs([50, 0, 1, 7, 300, 44, 2, 90, 91, 12, 5, 200])
    lanes = assert_eval_covers_documents(docs, n_lanes=3, seq_len=16, whole_documents=True)
    assert all(len(pieces) >= 1 for pieces in lanes)


def test_eval_lanes_are_balanced_by_segments() -> None:
    docs = make_docs([64] * 40)
    batcher = StreamBatcher(docs, 4, 16, "eval", seed=0, shuffle=False)
    assert batcher.n_batches == 40  # 10 documents of 4 segments per lane


def test_eval_with_fewer_documents_than_lanes_gives_every_lane_work() -> None:
    docs = make_docs([400, 0, 31, 1])
    lanes = assert_eval_covers_documents(docs, n_lanes=8, seq_len=16, whole_documents=False)
    assert all(len(pieces) == 1 for pieces in lanes)
    batcher = StreamBatcher(docs, 8, 16, "eval", seed=0, shuffle=False)
    assert bool(next(batcher).reset.all())


def test_eval_with_fewer_targets_than_lanes_pads_idle_lanes() -> None:
    docs = make_docs([3, 1, 2])
    batches = list(StreamBatcher(docs, 6, 4, "eval", seed=0, shuffle=False))
    assert len(batches) == 1
    assert batches[0].reset.tolist() == [True, True, True, False, False, False]
    assert (batches[0].y[3:] == IGNORE_INDEX).all() and (batches[0].x[3:] == 0).all()
    assert assert_eval_covers_documents(docs, 6, 4, whole_documents=False)


def test_eval_of_empty_documents_yields_nothing() -> None:
    assert list(StreamBatcher(make_docs([0, 1]), 2, 4, "eval", seed=0, shuffle=False)) == []


def test_train_needs_a_target_per_lane() -> None:
    with pytest.raises(DataError, match="trainer.batch_size"):
        StreamBatcher(make_docs([3, 1, 0]), 4, 8, "train", seed=0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_state_round_trip_continues_exactly(mode: str) -> None:
    docs = make_docs([70, 3, 0, 150, 1, 41, 99, 18])
    kwargs = dict(batch_size=4, seq_len=8, mode=mode, seed=5, shuffle=True)
    original = StreamBatcher(docs, **kwargs)
    for _ in range(13):
        next(original)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = StreamBatcher(docs, **kwargs)
    resumed.load_state_dict(state)
    pairs = list(itertools.zip_longest(itertools.islice(original, 60), itertools.islice(resumed, 60)))
    assert len(pairs) >= 5
    for a, b in pairs:
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.reset, b.reset)


@pytest.mark.parametrize(
    "change, option",
    [({"batch_size": 2}, "trainer.batch_size"), ({"seq_len": 4}, "memory.seq_len"), ({"docs": 3}, "documents")],
)
def test_state_from_a_different_setup_is_refused(change: dict, option: str) -> None:
    docs = make_docs([70, 40, 90, 30])
    state = StreamBatcher(docs, 4, 8, "train", seed=0).state_dict()
    other = StreamBatcher(
        docs[: change.get("docs", 4)], change.get("batch_size", 4), change.get("seq_len", 8), "train", seed=0
    )
    with pytest.raises(ConfigError, match=option) as err:
        other.load_state_dict(state)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_equal_one_process(mode: str, world_size: int) -> None:
    docs = make_docs([70, 3, 150, 41, 99, 18, 5, 60])
    kwargs = dict(batch_size=4, seq_len=8, mode=mode, seed=1, shuffle=True)
    single = list(itertools.islice(StreamBatcher(docs, **kwargs), 40))
    ranks = [list(itertools.islice(StreamBatcher(docs, **kwargs, rank=r, world_size=world_size), 40)) for r in range(world_size)]
    assert all(len(r) == len(single) for r in ranks)  # ranks step in lockstep, even in eval
    for step, batch in enumerate(single):
        assert torch.equal(torch.cat([r[step].x for r in ranks]), batch.x)
        assert torch.equal(torch.cat([r[step].y for r in ranks]), batch.y)
        assert torch.equal(torch.cat([r[step].reset for r in ranks]), batch.reset)
        assert sum(r[step].n_targets for r in ranks) == batch.n_targets
        assert all(r[step].n_targets_global == batch.n_targets == batch.n_targets_global for r in ranks)


@pytest.mark.parametrize("n_docs", [8, 2])
@pytest.mark.parametrize("batch_size,world_size", [(3, 2), (4, 3), (2, 4)])
def test_eval_lanes_padded_to_the_world_size_walk_one_process_lanes(n_docs, batch_size, world_size) -> None:
    docs = make_docs([70, 3, 150, 41, 99, 18, 5, 60][:n_docs])
    single = list(StreamBatcher(docs, batch_size, 8, "eval"))
    ranks = [list(StreamBatcher(docs, batch_size, 8, "eval", rank=r, world_size=world_size))
             for r in range(world_size)]
    assert all(len(r) == len(single) for r in ranks)
    for step, batch in enumerate(single):
        y = torch.cat([r[step].y for r in ranks])  # [ceil(B / W) * W, T]
        assert torch.equal(y[:batch_size], batch.y)
        assert torch.equal(torch.cat([r[step].x for r in ranks])[:batch_size], batch.x)
        assert (y[batch_size:] == IGNORE_INDEX).all()  # the padding lanes stay idle
        assert not torch.cat([r[step].reset for r in ranks])[batch_size:].any()


def test_state_of_one_rank_resumes_any_world_size() -> None:
    docs = make_docs([70, 3, 150, 41, 99, 18, 5, 60])
    rank1 = StreamBatcher(docs, 4, 8, "train", seed=1, rank=1, world_size=2)
    for _ in range(11):
        next(rank1)
    single = StreamBatcher(docs, 4, 8, "train", seed=1)
    single.load_state_dict(rank1.state_dict())
    assert torch.equal(next(single).y[2:], next(rank1).y)


def test_batch_size_must_divide_by_world_size() -> None:
    with pytest.raises(ConfigError, match=r"trainer.batch_size=6 .* world size 4"):
        StreamBatcher(make_docs([100]), 6, 8, "train", seed=0, rank=0, world_size=4)


def test_micro_batches_keep_lane_rows() -> None:
    batch = next(StreamBatcher(make_docs([30, 2, 50, 9, 70, 11]), 6, 8, "eval", seed=0, shuffle=False))
    parts = batch.split(3)
    assert [p.x.shape[0] for p in parts] == [2, 2, 2]
    assert torch.equal(torch.cat([p.x for p in parts]), batch.x)
    assert torch.equal(torch.cat([p.y for p in parts]), batch.y)
    assert torch.equal(torch.cat([p.reset for p in parts]), batch.reset)
    assert [p.n_targets for p in parts] == [int((p.y != IGNORE_INDEX).sum()) for p in parts]
    assert sum(p.n_targets for p in parts) == batch.n_targets
    with pytest.raises(ConfigError, match="micro-batches"):
        batch.split(4)


def test_large_stream_is_batched_without_per_token_work() -> None:
    # 20M tokens in one memmap-like document and 50k small documents: plans and
    # batches must come out in well under a second each.
    import time

    start = time.perf_counter()
    long_doc = np.zeros(20_000_000, dtype=np.uint8)
    batcher = StreamBatcher([long_doc], 64, 512, "train", seed=0)
    for _ in range(20):
        next(batcher)
    many = [np.ones(50 + i % 300, dtype=np.uint16) for i in range(50_000)]
    batcher = StreamBatcher(many, 64, 512, "train", seed=0, shuffle=True)
    for _ in range(20):
        next(batcher)
    assert time.perf_counter() - start < 5.0
