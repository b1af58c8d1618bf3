"""ct-sample --batch is bounded by the memory its streams need: the
estimate counts exactly the decoder's buffers, a batch that cannot fit is
one line with the estimate and the available amount before anything is
sampled or written, and one that fits samples as before."""

from __future__ import annotations

import re

import pytest
import torch

from ct_core.model.config import ModelConfig
from ct_core.model.lm import CompressiveTransformerLM
from ct_core.model.sampling import IncrementalDecoder
from ct_core.model.sampling_memory import GIB, available_bytes, decoder_buffer_bytes, sampling_bytes
from tests.conftest import run_cli
from tests.reliability.conftest import assert_one_line_error


def measured_buffers(dec: IncrementalDecoder) -> int:
    """Bytes of every tensor the decoder keeps between steps."""
    buf = dec.buf
    tensors = [*buf.k, *buf.v, *dec.r, *buf.r_t, *buf.usage, buf.hidden, buf.mask, dec.key_valid, buf.token,
               buf.slot, buf.row, buf.key_index]
    m = dec.memory
    tensors += [t for t in (m.mem, m.mem_mask, m.cmem, m.cmem_mask, m.pending, m.pending_mask) if t is not None]
    assert len({t.data_ptr() for t in tensors if t.numel()}) == len([t for t in tensors if t.numel()])  # no sharing
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("compression,loss,mem_len,cmem_len,autocast,kv_dtype", [
    ("conv", "attention", 16, 8, False, None),        # the recipe's memory lengths
    ("mean_pool", "none", 40, 24, False, None),       # longer memories at evaluation
    ("conv", "bptt", 16, 8, False, None),             # a pending block compressed when the decoder starts
    ("most_used", "none", 16, 8, True, None),         # bf16 caches under autocast, fp32 layer inputs
    ("conv", "attention", 16, 0, False, None),        # Transformer-XL reading of a CT
    ("conv", "attention", 16, 8, False, torch.bfloat16),  # ct-sample --kv-dtype bf16
])
def test_the_estimate_counts_exactly_the_decoders_buffers(compression, loss, mem_len, cmem_len, autocast, kv_dtype):
    cfg = ModelConfig(vocab_size=50, n_layers=3, d_model=24, n_heads=3, d_ff=40, seq_len=12, mem_len=16,
                      cmem_len=8, compression_rate=4, compression=compression, compression_loss=loss)
    model = CompressiveTransformerLM(cfg).eval()
    batch = 5
    memory = model.empty_memory(batch, mem_len, cmem_len)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        dec = IncrementalDecoder(model, batch, memory, kv_dtype=kv_dtype)
    compute = torch.bfloat16 if autocast else torch.float32
    assert dec.buf.k[0].dtype == (kv_dtype or compute)
    expected = decoder_buffer_bytes(cfg, batch, mem_len, cmem_len, torch.float32, compute, kv_dtype)
    assert expected == measured_buffers(dec)
    # The whole estimate covers the buffers and grows linearly with the streams.
    total = sampling_bytes(cfg, batch, mem_len, cmem_len, 7, 100, torch.float32, compute)
    assert total > expected
    one = sampling_bytes(cfg, 1, mem_len, cmem_len, 7, 100, torch.float32, compute)
    shared = decoder_buffer_bytes(cfg, 0, mem_len, cmem_len, torch.float32, compute)
    assert total - shared == batch * (one - shared)


def test_available_memory_is_read_from_meminfo_on_the_cpu():
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    # Other processes allocate meanwhile: equal within 1 GiB.
    assert abs(available_bytes(torch.device("cpu")) - kib * 1024) < GIB


def test_a_batch_that_cannot_fit_is_one_line_before_anything_is_written(checkpoint, tmp_path):
    batch = 10**9
    out = tmp_path / "samples"
    proc = run_cli("ct-sample", str(checkpoint), "--batch", str(batch), "--tokens", "8", "--out", str(out),
                   "--device", "cpu", check=False, timeout=120)
    err = assert_one_line_error(proc)
    payload = torch.load(checkpoint, weights_only=True)
    from ct_core.cli.run_setup import build_run

    cfg, _ = build_run(payload["config"], payload["frontend"])
    streams = sampling_bytes(cfg.model, batch, cfg.eval_mem_len, cfg.eval_cmem_len, 1, 8, torch.float32,
                             torch.float32)
    weights = sum(t.numel() * 4 for t in payload["model"].values())
    match = re.fullmatch(
        rf"ct-sample: error: --batch {batch} needs about {(streams + weights) / GIB:.2f} GiB \(model weights and "
        r"streams\) but (\d+\.\d\d) GiB is available on cpu; lower --batch \(at most about (\d+) streams fit\)", err)
    assert match, err
    available = float(match.group(1)) * GIB
    assert abs(int(match.group(2)) - batch * (available - weights) / streams) < batch * 0.01 * GIB / streams + 2
    assert not out.exists() and not (checkpoint.parent.parent / "samples").exists()


def test_a_batch_that_fits_samples_every_stream(checkpoint, tmp_path):
    out = tmp_path / "samples"
    run_cli("ct-sample", str(checkpoint), "--batch", "3", "--tokens", "40", "--out", str(out), "--device", "cpu")
    files = sorted(out.iterdir())
    assert len(files) == 3 and all(len(f.read_text().split()) == 40 for f in files)
