"""The long-range recall task: documents, probes recovered from tokens alone
(checked against a slow scan), distances spanning beyond a Transformer-XL's
reach, and greedy probe scoring equal to a one-document-at-a-time reference."""

import numpy as np
import pytest
import torch

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.data.frontend import build_frontend
from ct_core.data.recall import accuracy_by_distance, filler_size, recall_probes
from ct_core.errors import ConfigError
from ct_core.train.evaluator import probe_correctness

RECALL = {"frontend": "synthetic", "kind": "recall", "n_documents": 30, "min_len": 1025, "max_len": 1025,
          "vocab_size": 100}


def slow_probes(doc, n_filler, k_slots, s_symbols):
    """Every trigger with a later token, and the distance back to the latest
    earlier token of its slot's symbol range, by scanning backwards."""
    positions, distances = [], []
    for p in range(len(doc) - 1):
        if n_filler <= doc[p] < n_filler + k_slots:
            k = doc[p] - n_filler
            lo = n_filler + k_slots + k * s_symbols
            back = [q for q in range(p - 1, -1, -1) if lo <= doc[q] < lo + s_symbols]
            if back:
                positions.append(p)
                distances.append(p - back[0])
    return positions, distances


def test_documents_follow_the_vocabulary_layout_and_are_deterministic():
    fe = build_frontend(RECALL)
    again = build_frontend(RECALL)
    n_filler = filler_size(100, 4, 16)
    assert n_filler == 32
    for split in ("train", "valid", "test"):
        for a, b in zip(fe.documents(split), again.documents(split)):
            assert np.array_equal(a, b) and len(a) == 1025 and a.min() >= 0 and a.max() < 100
    doc = np.asarray(fe.documents("train")[0], dtype=np.int64)
    positions, _ = recall_probes(doc, fe.cfg)
    # Every trigger is followed by a symbol of its own slot.
    slots = doc[positions] - n_filler
    nxt = doc[positions + 1]
    assert np.all((nxt - n_filler - 4) // 16 == slots)


def test_probes_and_distances_equal_a_slow_scan():
    fe = build_frontend(RECALL)
    all_distances = []
    for doc, (positions, distances) in zip(fe.documents("train"), fe.probes("train")):
        ref_pos, ref_dist = slow_probes(np.asarray(doc).tolist(), 32, 4, 16)
        assert positions.tolist() == ref_pos and distances.tolist() == ref_dist
        all_distances += ref_dist
    all_distances = np.asarray(all_distances)
    # Short gaps teach copying; long ones lie beyond a 128-token memory.
    assert (all_distances <= 32).mean() > 0.3 and (all_distances > 160).sum() > 100
    # A gap is at most 480; other slots' events due first can delay a read
    # by at most three events of up to 8 tokens.
    assert all_distances.max() <= 480 + 1 + 3 * 8


def test_only_the_recall_kind_has_probes_and_bad_options_are_one_line():
    assert build_frontend({"frontend": "synthetic"}).probes("valid") is None
    with pytest.raises(ConfigError, match="data.vocab_size=60 leaves -8 filler ids"):
        build_frontend({**RECALL, "vocab_size": 60})
    with pytest.raises(ConfigError, match="data.recall_gap_max=2 must be >= data.recall_gap_min=4"):
        build_frontend({**RECALL, "recall_gap_max": 2})


def test_accuracy_by_distance_buckets():
    correct = np.array([True, False, True, True, False])
    distances = np.array([1, 32, 33, 70, 200])
    out = accuracy_by_distance(correct, distances, width=32, max_distance=96)
    assert out == {"1-32": {"accuracy": 0.5, "probes": 2}, "33-64": {"accuracy": 1.0, "probes": 1},
                   "65-96": {"accuracy": 1.0, "probes": 1}, ">96": {"accuracy": 0.0, "probes": 1}}


@pytest.mark.parametrize("compression,cmem_len", [("conv", 8), ("mean_pool", 8), ("conv", 0)])
def test_batched_probe_scoring_equals_one_document_at_a_time(compression, cmem_len):
    fe = build_frontend({**RECALL, "min_len": 90, "max_len": 130})
    docs, probes = fe.documents("test"), fe.probes("test")
    torch.manual_seed(0)
    loss = "attention" if compression == "conv" else "none"
    model = CompressiveTransformerLM(ModelConfig(vocab_size=100, n_layers=2, d_model=16, n_heads=2, d_ff=32,
                                                 seq_len=16, mem_len=16, cmem_len=cmem_len,
                                                 compression=compression, compression_loss=loss)).eval()
    correct, distances = probe_correctness(model, docs, probes, batch_size=2, mem_len=16, cmem_len=cmem_len,
                                           device=torch.device("cpu"))
    expected = []
    with torch.no_grad():
        for doc, (positions, _) in zip(docs, probes):
            tokens = torch.as_tensor(np.asarray(doc, dtype=np.int64))[None, :]
            memory, argmax = None, []
            for start in range(0, tokens.shape[1], 16):
                out = model(tokens[:, start : start + 16], memory)
                memory = out.memory
                argmax.append(out.logits.argmax(-1)[0])
            argmax = torch.cat(argmax).numpy()
            expected.append(argmax[positions] == np.asarray(doc)[positions + 1])
    assert np.array_equal(correct, np.concatenate(expected))
    assert np.array_equal(distances, np.concatenate([d for _, d in probes]))
