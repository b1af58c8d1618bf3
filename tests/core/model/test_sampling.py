"""The cached incremental decoder gives every token the logits of the
training forward, across segment rolls and compressions, whatever the
chunking of the fed tokens, with the plain or the adaptive softmax;
sampling options restrict the support as named."""

import pytest
import torch

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.model.compression import COMPRESSORS
from ct_core.model.sampling import IncrementalDecoder, generate, sample_next

#: Every compression function of the table (trained by Algorithm 2 when it
#: has weights), plus the losses that change when compression happens.
CASES = [(name, "attention" if cls.has_parameters else "none") for name, cls in COMPRESSORS.items()]
CASES += [("dilated_conv", "autoencoding"), ("conv", "bptt")]


def make(compression, loss, mem_len=8, cmem_len=6, norm="pre", **extra):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=8, mem_len=mem_len,
                      cmem_len=cmem_len, compression_rate=2, compression=compression, compression_loss=loss,
                      norm=norm, **extra)
    model = CompressiveTransformerLM(cfg).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.u.normal_(0, 0.5)
            blk.attn.v.normal_(0, 0.5)
    return model


def training_logits(model, tokens):
    memory, parts = None, []
    with torch.no_grad():
        for s in range(0, tokens.shape[1], model.cfg.seq_len):
            out = model(tokens[:, s : s + model.cfg.seq_len], memory)
            memory = out.memory
            parts.append(out.logits)
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("compression,loss", CASES)
def test_token_by_token_equals_training_forward(compression, loss):
    model = make(compression, loss)
    torch.manual_seed(1)
    tokens = torch.randint(0, 30, (2, 8 * 5))  # 5 segments: 4 rolls, cmem fills up
    want = training_logits(model, tokens)
    dec = IncrementalDecoder(model, 2)
    got = torch.cat([dec.feed(tokens[:, i : i + 1]) for i in range(tokens.shape[1])], dim=1)
    assert dec.memory.cmem_mask.all(), "compression must be active"
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("norm,mem_len,cmem_len", [("post", 8, 6), ("pre", 0, 4), ("pre", 5, 0), ("pre", 0, 0)])
def test_uneven_chunks_equal_training_forward(norm, mem_len, cmem_len):
    model = make("conv", "attention", mem_len, cmem_len, norm)
    torch.manual_seed(2)
    tokens = torch.randint(0, 30, (3, 37))
    want = training_logits(model, tokens)
    dec = IncrementalDecoder(model, 3)
    cuts = [0, 5, 6, 19, 20, 21, 33, 37]
    got = torch.cat([dec.feed(tokens[:, a:b]) for a, b in zip(cuts[:-1], cuts[1:])], dim=1)
    assert torch.allclose(got, want, atol=1e-5)


def test_generate_keeps_prompt_and_greedy_matches_full_recompute():
    model = make("conv", "attention")
    prompt = torch.randint(0, 30, (2, 11))
    seq = generate(model, prompt, max_new_tokens=14, top_k=1)
    assert seq.shape == (2, 25) and torch.equal(seq[:, :11], prompt)
    for t in range(11, 25):
        # Slow reference: recompute everything with the training forward.
        logits = training_logits(model, seq[:, :t])[:, -1]
        assert torch.equal(seq[:, t], logits.argmax(-1))


def test_generate_is_reproducible_with_a_seeded_generator():
    model = make("conv", "attention")
    prompt = torch.randint(0, 30, (3, 4))
    a = generate(model, prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = generate(model, prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(7))
    c = generate(model, prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]]).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    k2 = sample_next(logits, top_k=2, generator=g)
    assert set(k2.tolist()) == {1, 2}
    probs = logits[0].softmax(-1)
    # top_p just above p(1) keeps tokens 1 and 2 only.
    p = sample_next(logits, top_p=float(probs[1]) + 0.01, generator=g)
    assert set(p.tolist()) == {1, 2}
    assert set(sample_next(logits, top_p=0.01, generator=g).tolist()) == {1}
    assert set(sample_next(logits, temperature=0.0).tolist()) == {1}


@pytest.mark.parametrize("compression,loss", CASES)
def test_fixed_shape_steps_equal_training_forward(compression, loss):
    """The step CUDA replays from a graph (one token, the slot as a tensor,
    attention over the whole cache), run eagerly here."""
    model = make(compression, loss)
    torch.manual_seed(1)
    tokens = torch.randint(0, 30, (2, 8 * 5))
    want = training_logits(model, tokens)
    dec = IncrementalDecoder(model, 2, fixed_shape=True)
    got = torch.cat([dec.feed(tokens[:, :3])] + [dec.feed(tokens[:, i : i + 1]) for i in range(3, 40)], dim=1)
    assert dec.memory.cmem_mask.all(), "compression must be active"
    assert torch.allclose(got, want, atol=1e-5)


def test_sampling_draws_what_torch_multinomial_draws():
    """sample_next avoids torch.multinomial's per-call host sync on CUDA but
    draws the same tokens from the same generator."""
    logits = torch.randn(64, 30, generator=torch.Generator().manual_seed(0))
    got = sample_next(logits, generator=torch.Generator().manual_seed(5))
    want = torch.multinomial(logits.softmax(-1), 1, generator=torch.Generator().manual_seed(5)).squeeze(-1)
    assert torch.equal(got, want)


#: Adaptive input and softmax over the same 30 words: clusters [0, 6) [6, 14) [14, 30).
ADAPTIVE = dict(adaptive_cutoffs=(6, 14), adaptive_div=2, tie_embeddings=True)
ADAPTIVE_CASES = [("conv", "attention"), ("most_used", "none"), ("conv", "bptt")]


def make_adaptive(compression, loss):
    model = make(compression, loss, **ADAPTIVE)
    with torch.no_grad():  # sharper, less uniform distributions than the initialisation's
        for p in [*model.embed.tables.parameters(), model.head.cluster_weight]:
            p.normal_(0, 1.0)
        for b in [*model.head.biases, model.head.cluster_bias]:
            b.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("fixed_shape", [False, True])
@pytest.mark.parametrize("compression,loss", ADAPTIVE_CASES)
def test_adaptive_softmax_token_by_token_equals_training_forward(compression, loss, fixed_shape):
    model = make_adaptive(compression, loss)
    torch.manual_seed(1)
    tokens = torch.randint(0, 30, (2, 8 * 5))
    want = training_logits(model, tokens)  # [B, T, V] log-probabilities
    assert torch.allclose(want.exp().sum(-1), torch.ones(2, 40), atol=1e-5)
    dec = IncrementalDecoder(model, 2, fixed_shape=fixed_shape)
    got = torch.cat([dec.feed(tokens[:, :3])] + [dec.feed(tokens[:, i : i + 1]) for i in range(3, 40)], dim=1)
    assert dec.memory.cmem_mask.all(), "compression must be active"
    assert torch.allclose(got, want, atol=1e-5)


def test_adaptive_greedy_sampling_is_the_training_forwards_argmax_across_segments():
    model = make_adaptive("conv", "attention")
    prompt = torch.randint(0, 30, (2, 5))
    seq = generate(model, prompt, max_new_tokens=27, top_k=1)  # 32 tokens: four segments
    memory, predicted = None, []
    with torch.no_grad():
        for s in range(0, 31, 8):
            out = model(seq[:, s : min(s + 8, 31)], memory, return_logits=False)
            memory = out.memory
            predicted.append(model.greedy(out.hidden))
    predicted = torch.cat(predicted, dim=1)  # [B, 31]: the argmax after each token
    assert torch.equal(seq[:, 5:], predicted[:, 4:])
    assert len(set(seq[:, 5:].flatten().tolist())) > 1, "greedy output should not be constant"


def test_sampling_options_mean_the_same_on_log_probabilities():
    """The adaptive softmax hands the sampler log-probabilities; softmax,
    temperature, top-k and top-p see only differences within a row, so they
    draw exactly what the same distribution's logits would."""
    logits = torch.randn(64, 30, generator=torch.Generator().manual_seed(0)) * 3
    log_probs = logits.log_softmax(-1)
    for options in [dict(), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(temperature=1.3, top_p=0.9)]:
        a = sample_next(logits, **options, generator=torch.Generator().manual_seed(3))
        b = sample_next(log_probs, **options, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b), options
