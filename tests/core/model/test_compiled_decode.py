"""The fixed-shape decoding step, compiled with inductor, gives the eager
step's tokens and the training forward's logits across segment boundaries
for every compression choice and both output layers; seeded sampling draws
exactly what ``sample_next`` draws on the training forward's logits with
the same generator; a compilation that fails is announced in one line and
the step runs eagerly with the same tokens; compiled chunks of several
tokens per call draw the step-by-step tokens; key-length buckets follow the
memories as they fill; a prompt sends only its last position to the output
layer; a bf16 key/value cache is opt-in and close.

Compilation is slow on a few cores: every compiled case of one model shape
shares one compiled step (the compiler's cache is keyed by the step's code
and shapes, not by the decoder or the weights), and the shapes are few."""

import pytest
import torch

from ct_core.model.decode_step import chunk_tokens, key_buckets
from ct_core.model.draw import SamplingOptions, sample_next
from ct_core.model.sampling import COMPILE_MIN_TOKENS, IncrementalDecoder, generate, worth_compiling

from tests.core.model.test_sampling import CASES, make, make_adaptive, training_logits

GREEDY = SamplingOptions(top_k=1)
#: 4 prompt tokens then 28 steps: 32 tokens, four segments of 8 (three boundaries crossed while stepping).
PROMPT, STEPS = 4, 28


def decode(model, prompt, options, backend=None, generator=None, notify=None):
    """Prompt, then one step per token; returns the tokens ``[B, P + STEPS + 1]``,
    the logits of every step ``[B, STEPS, V]`` and the decoder."""
    kwargs = {} if notify is None else {"notify": notify}
    dec = IncrementalDecoder(model, prompt.shape[0], compile_backend=backend, **kwargs)
    first = dec.feed(prompt, last_only=True)[:, -1]
    seq = [*prompt.unbind(1), sample_next(first, **options.kwargs(), generator=generator)]
    logits = []
    for _ in range(STEPS):
        scores, nxt = dec.step(seq[-1], options, generator, return_logits=True)
        logits.append(scores)
        seq.append(nxt)
    return torch.stack(seq, dim=1), torch.stack(logits, dim=1), dec


def assert_equals_eager_and_training_forward(model, backend="inductor"):
    prompt = torch.randint(0, 30, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    want_seq, want_logits, eager = decode(model, prompt, GREEDY)
    seq, logits, dec = decode(model, prompt, GREEDY, backend)
    assert dec.step_runner.mode == "compiled" and dec.step_runner.fallback is None
    assert torch.equal(seq, want_seq)
    # The training forward over the same tokens: step i consumed token P + i.
    reference = training_logits(model, seq)[:, PROMPT : PROMPT + STEPS]
    assert (logits - reference).abs().max() < 1e-4
    assert (logits - want_logits).abs().max() < 1e-4
    assert len(set(seq[:, PROMPT:].flatten().tolist())) > 1, "greedy output should not be constant"
    assert dec.memory.cmem_mask.any(), "compression must be active"


@pytest.mark.parametrize("compression,loss", CASES)
def test_compiled_greedy_decoding_equals_eager_and_training_forward(compression, loss):
    assert_equals_eager_and_training_forward(make(compression, loss))


def test_compiled_adaptive_softmax_decoding_equals_eager_and_training_forward():
    assert_equals_eager_and_training_forward(make_adaptive("conv", "attention"))


def test_seeded_sampling_draws_what_sample_next_draws_on_the_training_logits():
    """The noise is drawn before each step from the caller's generator, one
    ``[B, V]`` block per token as ``sample_next`` draws it: seeded outputs
    are those of drawing with ``sample_next`` from the training forward's
    logits, token after token, compiled or not."""
    model = make("conv", "attention")
    options = SamplingOptions(temperature=1.3, top_k=20)
    # The batch of the other cases: the compiled step is reused, not recompiled.
    prompt = torch.randint(0, 30, (2, PROMPT), generator=torch.Generator().manual_seed(4))
    runs = [decode(model, prompt, options, backend, torch.Generator().manual_seed(seed))[0]
            for backend, seed in (("inductor", 7), ("inductor", 7), (None, 7), ("inductor", 8))]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], runs[3])
    g = torch.Generator().manual_seed(7)
    seq = prompt
    for _ in range(STEPS + 1):
        logits = training_logits(model, seq)[:, -1]
        seq = torch.cat([seq, sample_next(logits, **options.kwargs(), generator=g)[:, None]], dim=1)
    assert torch.equal(runs[0], seq)


def failing_backend(graph, example_inputs):
    raise RuntimeError("no C++ compiler here\nsecond line of detail")


@pytest.mark.parametrize("backend,reason", [
    (failing_backend, "RuntimeError: no C++ compiler here)"),
    ("no_such_backend", "InvalidBackend: Invalid backend: 'no_such_backend'"),
])
def test_a_failing_compilation_is_announced_once_and_decodes_eagerly(backend, reason):
    model = make("conv", "attention")
    prompt = torch.randint(0, 30, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    notices = []
    seq, logits, dec = decode(model, prompt, GREEDY, backend, notify=notices.append)
    want_seq, want_logits, _ = decode(model, prompt, GREEDY)
    assert len(notices) == 1 and "\n" not in notices[0]
    assert notices[0].startswith(f"compiled decoding unavailable, decoding eagerly ({reason}")
    assert dec.step_runner.mode == "eager" and dec.step_runner.fallback in notices[0]
    assert torch.equal(seq, want_seq) and torch.equal(logits, want_logits)


def test_key_length_buckets_follow_the_memories_as_they_fill():
    """seq 8, mem 8, cmem 6, c = 2: the cache keeps 0, 8, 12, then 14 memory
    slots (cmem fills by 4 per segment); each step attends the smallest of
    the buckets (8, 16, 22) holding its keys; logits stay the training
    forward's throughout."""
    assert key_buckets(22) == (8, 16, 22)
    assert key_buckets(640) == (80, 160, 240, 320, 400, 480, 560, 640)
    assert key_buckets(3) == (3,)
    model = make("conv", "attention")
    tokens = torch.randint(0, 30, (2, 40), generator=torch.Generator().manual_seed(3))
    dec = IncrementalDecoder(model, 2)
    kept, buckets, logits = [], [], []
    for i in range(40):
        kept.append(dec.kept)
        logits.append(dec.feed(tokens[:, i : i + 1]))
        buckets.append(dec.last_bucket)
    assert kept == [0] * 8 + [8] * 8 + [12] * 8 + [14] * 16
    want = [8] * 8 + [16] * 8 + [16] * 4 + [22] * 4 + [16] * 2 + [22] * 6 + [16] * 2 + [22] * 6
    assert buckets == want
    assert torch.allclose(torch.cat(logits, dim=1), training_logits(model, tokens), atol=1e-5)


def test_a_prompt_sends_only_its_last_position_to_the_output_layer():
    model = make("conv", "attention")
    seen = []
    model.head.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    prompt = torch.randint(0, 30, (2, 21), generator=torch.Generator().manual_seed(5))  # 2 boundaries
    last = IncrementalDecoder(model, 2).feed(prompt, last_only=True)
    assert seen == [(2, 1, 16)]
    every = IncrementalDecoder(model, 2).feed(prompt)
    assert last.shape == (2, 1, 30) and torch.allclose(last, every[:, -1:], atol=1e-6)


def test_a_bf16_key_value_cache_is_opt_in_and_close():
    model = make("conv", "attention")
    tokens = torch.randint(0, 30, (2, 24), generator=torch.Generator().manual_seed(6))
    fp32 = IncrementalDecoder(model, 2)
    bf16 = IncrementalDecoder(model, 2, kv_dtype=torch.bfloat16)
    assert fp32.buf.k[0].dtype == torch.float32 and bf16.buf.k[0].dtype == torch.bfloat16
    a = torch.cat([fp32.feed(tokens[:, :3])] + [fp32.feed(tokens[:, i : i + 1]) for i in range(3, 24)], dim=1)
    b = torch.cat([bf16.feed(tokens[:, :3])] + [bf16.feed(tokens[:, i : i + 1]) for i in range(3, 24)], dim=1)
    assert a.dtype == b.dtype == torch.float32
    assert 0 < (a - b).abs().max() < 5e-2


def test_compiled_chunks_draw_the_step_by_step_tokens():
    """Where the segment leaves room, a compiled decoder draws a chunk of
    tokens per call (feeding each drawn token inside the call), elsewhere
    one eagerly; the seeded tokens are those of the eager step, one at a
    time. Chunks hold at most 16 layer steps."""
    assert [chunk_tokens(n) for n in (1, 2, 4, 5, 8, 16, 20)] == [4, 4, 4, 3, 2, 1, 1]
    model = make("conv", "attention")
    chunk = 4
    options = SamplingOptions(temperature=1.3, top_k=20)
    prompt = torch.randint(0, 30, (2, PROMPT - 1), generator=torch.Generator().manual_seed(4))
    want = decode(model, prompt, options, None, torch.Generator().manual_seed(7))[0]
    g = torch.Generator().manual_seed(7)
    dec = IncrementalDecoder(model, 2, compile_backend="inductor")
    first = dec.feed(prompt, last_only=True)[:, -1]
    drawn, widths = [sample_next(first, **options.kwargs(), generator=g)[:, None]], []
    while sum(widths) < STEPS:
        drawn.append(dec.draw(drawn[-1][:, -1], options, g, limit=STEPS - sum(widths)))
        widths.append(drawn[-1].shape[1])
    # seq_len 8: the prompt leaves 5 slots in its segment (a chunk, then one
    # token), every later segment holds two chunks; the last call is cut
    # by the limit.
    assert dec.step_runner.chunk == chunk
    assert widths == [chunk, 1, chunk, chunk, chunk, chunk, chunk, 1, 1, 1]
    assert dec.step_runner.mode == "compiled" and dec.step_runner.fallback is None
    assert torch.equal(torch.cat([prompt, *drawn], dim=1), want)


def test_generate_compiles_on_cpu_only_for_long_requests():
    cpu = torch.device("cpu")
    assert not worth_compiling(cpu, COMPILE_MIN_TOKENS - 1) and worth_compiling(cpu, COMPILE_MIN_TOKENS)
    assert not worth_compiling(torch.device("cuda"), 10 * COMPILE_MIN_TOKENS)  # CUDA replays graphs instead
    model = make("conv", "attention")
    prompt = torch.randint(0, 30, (2, 3), generator=torch.Generator().manual_seed(2))
    notices, columns = [], []
    # The chunk test's options and batch: its compiled chunk is reused, not compiled again.
    options = {"temperature": 1.3, "top_k": 20}
    seq = generate(model, prompt, 12, **options, generator=torch.Generator().manual_seed(3), compile=True,
                   notify=notices.append, callback=columns.append)
    eager = generate(model, prompt, 12, **options, generator=torch.Generator().manual_seed(3), compile=False)
    assert notices == [] and torch.equal(seq, eager)
    assert torch.equal(torch.stack(columns, dim=1), seq[:, 3:])  # one call per token, chunks or not
