"""One training step of an adaptive-softmax model at WikiText-103's
vocabulary (267,735 words) on CPU peaks well below what its full logits
alone would take, measured by the operating system in a fresh process."""

import json
import os
import subprocess
import sys

VOCAB = 267_735
TOKENS = 4 * 64  # lanes x seq_len of the step

STEP = r"""
import json, resource, torch

def rss():  # resident bytes now
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def reset_peak():  # the high-water mark restarts from the resident memory now (Linux)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def peak():  # resident high-water mark since the last reset_peak, bytes
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024

from ct_core.model import CompressiveTransformerLM, ModelConfig
torch.manual_seed(0)
V, B, T = {vocab}, 4, 64
cfg = ModelConfig(vocab_size=V, n_layers=1, d_model=64, n_heads=2, d_ff=128, seq_len=T, mem_len=T, cmem_len=16,
                  compression_rate=4, adaptive_cutoffs=(20000, 40000, 200000), adaptive_div=4, tie_embeddings=True)
model = CompressiveTransformerLM(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

def words(n):  # a word-level mix of clusters: 85% head, 8%, 5%, 2% (WikiText-103's head covers ~90%)
    g = torch.Generator().manual_seed(n)
    cluster = torch.multinomial(torch.tensor([0.85, 0.08, 0.05, 0.02]), n, replacement=True, generator=g)
    lo, size = torch.tensor([0, 20000, 40000, 200000]), torch.tensor([20000, 20000, 160000, V - 200000])
    return lo[cluster] + (torch.rand(n, generator=g) * size[cluster]).long()

x, y = words(B * T).view(B, T), words(B * T + 1)[1:].view(B, T)
# Whatever the imports and set-up peaked at before does not count.
reset_peak()
before = rss()
out = model(x, targets=y)
loss = out.nll.sum() / y.numel() + out.aux_loss
loss.backward()
opt.step()
step_peak = peak() - before
assert torch.isfinite(loss)
# The measurement sees a full [B*T, V] table when one is made.
reset_peak()
before = rss()
table = model.token_logits(out.hidden.detach())
table_peak = peak() - before
print(json.dumps(dict(step_peak=step_peak, table_peak=table_peak, table_bytes=table.numel() * table.element_size())))
"""


def test_a_training_step_at_wikitext103_vocabulary_never_holds_full_logits():
    # Every allocation above 64 KiB is its own mapping, given back when
    # freed: resident memory then follows the live tensors.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", STEP.replace("{vocab}", str(VOCAB))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    full_logits = TOKENS * VOCAB * 4  # float32 logits alone; a softmax step also holds their log-softmax and gradient
    assert measured["table_bytes"] == full_logits
    assert measured["table_peak"] >= 0.95 * full_logits, measured  # the measurement works
    assert measured["step_peak"] < full_logits / 2, measured
