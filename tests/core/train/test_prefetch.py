"""The batch prefetcher hands out what the batcher makes, split into
micro-batches, and its state is that of the first batch not yet handed out,
so a checkpoint taken while a batch waits in it resumes without a gap."""

import numpy as np
import pytest
import torch

from ct_core.data.stream_batcher import StreamBatcher
from ct_core.train.prefetch import BatchPrefetcher

DOCS = [np.random.default_rng(i).integers(0, 100, size=n) for i, n in enumerate([300, 41, 170, 99, 260])]


def as_lists(micro):
    return [(m.x.tolist(), m.y.tolist(), m.reset.tolist(), m.n_targets, m.n_targets_global) for m in micro]


def batcher():
    return StreamBatcher(DOCS, batch_size=4, seq_len=16, mode="train", seed=3)


@pytest.mark.parametrize("ahead", [False, True])
def test_prefetched_batches_and_state_match_the_batcher(ahead):
    plain = batcher()
    batches = BatchPrefetcher(batcher(), torch.device("cpu"), grad_accum=2, ahead=ahead)
    for _ in range(7):
        want = next(plain).split(2)
        got = batches.next()
        assert as_lists(got) == as_lists(want)
        assert batches.state_dict() == plain.state_dict()  # a waiting batch is not counted as used

    resumed = BatchPrefetcher(batcher(), torch.device("cpu"), grad_accum=2, ahead=ahead)
    resumed.load_state_dict(batches.state_dict())
    for _ in range(5):
        assert as_lists(resumed.next()) == as_lists(batches.next())
