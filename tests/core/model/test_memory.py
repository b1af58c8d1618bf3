"""After every segment, mem and cmem hold exactly what a hand-computed
Algorithm 1 trace says (known inputs, mean pooling), partly filled groups
and short segments included; a reset row is bit-identical to a fresh one;
without compressed memory nothing is compressed."""

import torch

from ct_core import CompressiveTransformerLM, MemoryState, ModelConfig


def seg(k: int, t: int) -> torch.Tensor:
    """Known layer inputs [L=1, B=1, T, D=1]: value 10 * segment + position."""
    return torch.tensor([10.0 * k + i for i in range(t)]).view(1, 1, t, 1)


def run_trace(mem_len, cmem_len, c, segments):
    cfg = ModelConfig(vocab_size=4, n_layers=1, d_model=1, n_heads=1, d_ff=1, seq_len=8, mem_len=mem_len,
                      cmem_len=cmem_len, compression_rate=c, compression="mean_pool", compression_loss="none")
    model = CompressiveTransformerLM(cfg)
    state = model.empty_memory(1)
    trace = []
    for k, t in enumerate(segments):
        state, aux = model.update_memory(state, seg(k, t))
        trace.append(state)
        assert aux.item() == 0.0
    return trace


def flat(x):
    return x.flatten().tolist()


def test_trace_full_groups():
    # mem_len 4, cmem_len 3, c 2, segments of 4.
    trace = run_trace(4, 3, 2, [4, 4, 4, 4])
    s0, s1, s2, s3 = trace
    assert flat(s0.mem) == [0, 1, 2, 3] and flat(s0.mem_mask) == [True] * 4
    # The first eviction pushed out empty slots only.
    assert flat(s0.cmem_mask) == [False, False, False]
    assert flat(s1.mem) == [10, 11, 12, 13]
    assert flat(s1.cmem)[1:] == [0.5, 2.5] and flat(s1.cmem_mask) == [False, True, True]
    assert flat(s2.cmem) == [2.5, 10.5, 12.5] and flat(s2.cmem_mask) == [True] * 3
    assert flat(s3.mem) == [30, 31, 32, 33]
    assert flat(s3.cmem) == [12.5, 20.5, 22.5]


def test_trace_partly_filled_and_short_segment():
    # mem_len 6 is not a multiple of c = 4: groups straddle empty slots.
    trace = run_trace(6, 2, 4, [8, 8, 3])
    s0, s1, s2 = trace
    # concat(mem[6 empty], h0[8]) -> old = 6 empty + h0[0:2]; mem = h0[2:8].
    assert flat(s0.mem) == [2, 3, 4, 5, 6, 7]
    assert flat(s0.cmem_mask) == [False, True]
    assert flat(s0.cmem)[1] == 0.5  # mean over the 2 valid slots of the group
    # old = h0[2:8] + h1[0:2] -> groups (2,3,4,5) (6,7,10,11).
    assert flat(s1.cmem) == [3.5, 8.5] and flat(s1.cmem_mask) == [True, True]
    assert flat(s1.mem) == [12, 13, 14, 15, 16, 17]
    # A short final segment of 3 evicts 3 slots, padded at the oldest end
    # with one empty slot: group (pad, 12, 13, 14).
    assert flat(s2.mem) == [15, 16, 17, 20, 21, 22]
    assert flat(s2.cmem) == [8.5, 13.0] and flat(s2.cmem_mask) == [True, True]


def test_reset_row_clears_and_matches_fresh():
    state = MemoryState.empty(2, 3, 4, 2, 5)
    state = MemoryState(state.mem + 1, state.mem_mask | True, state.cmem + 2, state.cmem_mask | True)
    reset = torch.tensor([False, True, False])
    out = state.reset_rows(reset)
    fresh = MemoryState.empty(2, 1, 4, 2, 5)
    assert torch.equal(out.mem[:, 1:2], fresh.mem) and torch.equal(out.cmem[:, 1:2], fresh.cmem)
    assert not out.mem_mask[1].any() and not out.cmem_mask[1].any()
    assert torch.equal(out.mem[:, [0, 2]], state.mem[:, [0, 2]]) and out.mem_mask[[0, 2]].all()


def test_no_compression_keeps_cmem_empty():
    trace = run_trace(4, 0, 2, [4, 4])
    assert trace[-1].cmem.shape[2] == 0 and flat(trace[-1].mem) == [10, 11, 12, 13]
