"""Adaptive input and adaptive softmax: a proper distribution over the whole
vocabulary, the plain softmax when there is one cluster, PyTorch's
AdaptiveLogSoftmaxWithLoss where the two coincide, the NLL the model trains
on equals the full table's entry, tied tables are the same tensors, and
gradients reach the clusters a batch touches and no other."""

import pytest
import torch
import torch.nn.functional as F

from ct_core import CompressiveTransformerLM, ConfigError, ModelConfig
from ct_core.model import adaptive
from ct_core.model.adaptive import AdaptiveInput, AdaptiveSoftmax, ClusterTables
from ct_core.model.config import recipe_key
from ct_core.model.lm import IGNORE_INDEX
from ct_core.options import build_options

V, D = 60, 64
CUTOFFS = (10, 25, 40)  # clusters [0, 10) [10, 25) [25, 40) [40, 60)


def tables(cutoffs=CUTOFFS, div=2, seed=0):
    torch.manual_seed(seed)
    return ClusterTables(V, D, cutoffs, div, init_std=0.5)


def softmax_of(t, init_std=0.5, seed=1):
    torch.manual_seed(seed)
    head = AdaptiveSoftmax(t, init_std)
    with torch.no_grad():  # biases start at zero; make them matter
        for b in [*head.biases, head.cluster_bias]:
            b.normal_(0, 0.5)
    return head


def lm(tie=True, cutoffs=CUTOFFS, div=2, **extra):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, n_layers=2, d_model=D, n_heads=2, d_ff=32, seq_len=8, mem_len=8, cmem_len=4,
                      compression_rate=2, adaptive_cutoffs=cutoffs, adaptive_div=div, tie_embeddings=tie, **extra)
    return CompressiveTransformerLM(cfg)


@pytest.mark.parametrize("div", [1, 2, 4])
def test_log_probabilities_over_the_whole_vocabulary_sum_to_one(div):
    head = softmax_of(tables(div=div))
    h = torch.randn(5, 7, D) * 3
    logp = head.log_prob(h)
    assert logp.shape == (5, 7, V) and logp.dtype == torch.float32
    assert (logp.exp().sum(-1) - 1).abs().max() < 1e-5
    assert [w.shape[1] for w in head.tables.weights] == [D // div**i for i in range(4)]


def test_one_cluster_is_the_full_softmax():
    t = tables(cutoffs=())
    head = softmax_of(t)
    h = torch.randn(4, 6, D)
    want = F.log_softmax(h @ t.weights[0].T + head.biases[0], dim=-1)
    assert torch.allclose(head.log_prob(h), want, atol=1e-6)
    y = torch.randint(0, V, (4, 6))
    y[1, 2] = IGNORE_INDEX
    ce = F.cross_entropy((h @ t.weights[0].T + head.biases[0]).flatten(0, 1), y.flatten(), reduction="none")
    assert torch.allclose(head.nll(h, y, IGNORE_INDEX), ce.view(4, 6), atol=1e-6)


@pytest.mark.parametrize("div", [2, 4])
def test_equals_torch_adaptive_log_softmax_where_they_coincide(div):
    """PyTorch's version has no tail biases and projects every tail cluster
    to in_features // div**i, as ours does; copy our weights into it."""
    t = tables(div=div)
    head = softmax_of(t)
    with torch.no_grad():
        for b in head.biases[1:]:
            b.zero_()
    ref = torch.nn.AdaptiveLogSoftmaxWithLoss(D, V, list(CUTOFFS), div_value=float(div), head_bias=True)
    with torch.no_grad():
        ref.head.weight.copy_(torch.cat([t.weights[0], head.cluster_weight]))
        ref.head.bias.copy_(torch.cat([head.biases[0], head.cluster_bias]))
        for i, tail in enumerate(ref.tail, start=1):
            tail[0].weight.copy_(t.projection(i).T)
            tail[1].weight.copy_(t.weights[i])
    h = torch.randn(40, D)
    y = torch.randint(0, V, (40,))
    assert torch.allclose(head.log_prob(h), ref.log_prob(h), atol=1e-5)
    assert torch.allclose(-head.nll(h, y, IGNORE_INDEX), ref(h, y).output, atol=1e-5)


def test_nll_is_the_full_tables_entry_and_zero_where_ignored():
    head = softmax_of(tables())
    h = torch.randn(3, 9, D)
    y = torch.randint(0, V, (3, 9))
    y[0, :4] = IGNORE_INDEX
    y[1, 0], y[1, 1], y[1, 2] = 10, 24, 59  # cluster edges
    full = head.log_prob(h)
    want = -full.gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
    want[0, :4] = 0
    got = head.nll(h, y, IGNORE_INDEX)
    assert got.shape == (3, 9) and torch.allclose(got, want, atol=1e-6)
    assert torch.equal(got[0, :4], torch.zeros(4))


def test_the_models_nll_and_logits_agree_for_both_output_kinds():
    for model in (lm(), lm(cutoffs=())):
        x, y = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
        y[1, 5:] = IGNORE_INDEX
        out = model(x, targets=y, return_logits=True)
        want = F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="none").view(2, 8)
        assert torch.allclose(out.nll, want, atol=1e-5)
        assert torch.allclose(model.token_nll(out.hidden, y), out.nll, atol=1e-6)
        trained = model(x, targets=y)
        assert trained.logits is None and torch.allclose(trained.nll, out.nll, atol=1e-6)


def test_adaptive_input_is_each_words_projected_cluster_vector():
    t = tables()
    embed = AdaptiveInput(t)
    tokens = torch.arange(V).view(4, 15)
    got = embed(tokens)
    for w in range(V):
        i = sum(w >= c for c in CUTOFFS)
        e = t.weights[i][w - t.bounds[i]]
        want = e if t.projection(i) is None else t.projection(i) @ e
        assert torch.allclose(got.view(-1, D)[w], want, atol=1e-6)


def test_tied_tables_are_the_same_tensors():
    tied, untied = lm(tie=True), lm(tie=False)
    for i in range(4):
        assert tied.embed.tables.weights[i] is tied.head.tables.weights[i]
        assert untied.embed.tables.weights[i] is not untied.head.tables.weights[i]
    for i in (1, 2, 3):
        assert tied.embed.tables.projection(i) is tied.head.tables.projection(i)
    shared = sum(w.numel() for w in tied.embed.tables.parameters())
    assert untied.num_parameters() - tied.num_parameters() == shared
    # Both names are in the state dict and load back onto the shared tensors.
    state = tied.state_dict()
    assert "embed.tables.weights.2" in state and "head.tables.weights.2" in state
    fresh = lm(tie=True)
    fresh.load_state_dict(state)
    assert fresh.head.tables.weights[2] is fresh.embed.tables.weights[2]
    assert torch.equal(fresh.head.tables.weights[2], tied.embed.tables.weights[2])


def touched(grad):
    return grad is not None and bool(grad.abs().sum() > 0)


def test_gradients_reach_the_clusters_a_batch_touches_and_no_other():
    model = lm(tie=False)
    x = torch.tensor([[0, 3, 30, 31, 5, 26, 2, 1]])  # inputs in clusters 0 and 2
    y = torch.tensor([[1, 12, 4, 13, 9, IGNORE_INDEX, 0, 50]])  # targets in 0, 1, 3 (and one ignored)
    model(x, targets=y).nll.sum().backward()
    inp, out = model.embed.tables, model.head.tables
    assert [touched(w.grad) for w in inp.weights] == [True, False, True, False]
    assert [touched(inp.projection(i).grad) for i in (1, 2, 3)] == [False, True, False]
    assert [touched(w.grad) for w in out.weights] == [True, True, False, True]
    assert [touched(b.grad) for b in model.head.biases] == [True, True, False, True]
    assert [touched(out.projection(i).grad) for i in (1, 2, 3)] == [True, False, True]
    assert touched(model.head.cluster_weight.grad)
    # Input rows: exactly the words that occur.
    rows = inp.weights[2].grad.abs().sum(-1).nonzero().flatten().tolist()
    assert rows == [1, 5, 6]  # words 26, 30, 31 of cluster [25, 40)
    # Untouched clusters still take part (zero gradients, not None), as DDP expects.
    assert all(p.grad is not None for p in [*model.embed.parameters(), *model.head.parameters()])


def test_tied_tables_get_the_gradients_of_both_ends():
    model = lm(tie=True)
    x = torch.tensor([[0, 3, 30, 31, 5, 26, 2, 1]])
    y = torch.tensor([[1, 12, 4, 13, 9, 8, 0, 2]])
    model(x, targets=y).nll.sum().backward()
    t = model.embed.tables
    assert [touched(w.grad) for w in t.weights] == [True, True, True, False]


def test_greedy_is_the_argmax_of_the_full_table(monkeypatch):
    model = lm().eval()
    x = torch.randint(0, V, (3, 8))
    out = model(x, return_logits=True)
    monkeypatch.setattr(adaptive, "ARGMAX_CHUNK_ELEMENTS", 2 * V)  # two rows per chunk
    assert torch.equal(model.greedy(out.hidden), out.logits.argmax(-1))


BASE = dict(vocab_size=V, n_layers=1, d_model=D, n_heads=2, d_ff=16, seq_len=8)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"adaptive_cutoffs": (10, 10)}, "model.adaptive_cutoffs=(10, 10) must be strictly increasing"),
        ({"adaptive_cutoffs": (30, 20)}, "model.adaptive_cutoffs=(30, 20) must be strictly increasing"),
        ({"adaptive_cutoffs": (0, 20)}, "model.adaptive_cutoffs=(0, 20) must lie strictly between 0 and "
                                        "model.vocab_size=60"),
        ({"adaptive_cutoffs": (20, 60)}, "model.adaptive_cutoffs=(20, 60) must lie strictly between 0"),
        ({"adaptive_div": 0}, "model.adaptive_div=0 must be an integer >= 1"),
        ({"adaptive_cutoffs": (10, 20, 30), "adaptive_div": 5},
         "model.adaptive_div=5 leaves the last of 4 clusters no dimension: model.d_model=64 // 5**3 = 0; lower it"),
    ],
)
def test_config_errors_name_the_adaptive_options(change, message):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{**BASE, **change}).validate()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_recipe_lists_become_cutoff_tuples_and_wrong_types_are_one_line():
    cfg = build_options(ModelConfig, {**BASE, "adaptive_cutoffs": [10, 20], "adaptive_div": 2}, recipe_key)
    assert cfg.adaptive_cutoffs == (10, 20) and cfg.adaptive
    assert not build_options(ModelConfig, BASE, recipe_key).adaptive
    with pytest.raises(ConfigError, match=r"^model.adaptive_cutoffs=\[10, 'x'\] must be a list \(each an integer\)"):
        build_options(ModelConfig, {**BASE, "adaptive_cutoffs": [10, "x"]}, recipe_key)
    with pytest.raises(ConfigError, match=r"^model.adaptive_cutoffs=20 must be a list \(each an integer\)"):
        build_options(ModelConfig, {**BASE, "adaptive_cutoffs": 20}, recipe_key)
