"""Adaptive input (Baevski & Auli, 2019) and the projected adaptive softmax
(Grave et al., 2017, with Transformer-XL's per-cluster projections), for
word vocabularies of hundreds of thousands of types.

The vocabulary, ordered by descending frequency, is cut at ``cutoffs``
``c_1 < ... < c_n`` into clusters: cluster 0 (the head) holds ids
``[0, c_1)``, cluster ``i`` holds ``[c_i, c_(i+1))`` (``c_(n+1) = V``).
Cluster ``i`` has dimension ``d_i = d_model // div**i``: a table of word
vectors ``E_i`` ``[n_i, d_i]`` and a projection ``P_i`` ``[d_model, d_i]``
(none where ``d_i = d_model``: a square projection of a free table adds
nothing but another parametrisation of it).

Adaptive input: word ``w`` of cluster ``i`` enters as ``P_i E_i[w - c_i]``.

Adaptive softmax: the head scores its own words and one logit per tail
cluster, ``[E_0 h + b_0 ; C h + c]``; a word of tail cluster ``i`` has
``log p(w) = log p_head(cluster i) + log softmax(E_i P_i^T h + b_i)[w - c_i]``.
Rare words therefore cost small matrices, and only the rows whose target
lies in a cluster ever compute that cluster's logits, so no ``[N, V]``
table is built in training or evaluation.

Tying (``tie_embeddings``) makes input and output share the same
:class:`ClusterTables` (every ``E_i`` and ``P_i``, as in Transformer-XL);
the output's biases and the head's cluster vectors ``C, c`` are its own.

Example::

    tables = ClusterTables(vocab_size=1000, d_model=64, cutoffs=(100, 500), div=4, init_std=0.02)
    embed, head = AdaptiveInput(tables), AdaptiveSoftmax(tables, init_std=0.02)
    h = embed(tokens)                      # [B, T, 64]
    nll = head.nll(h, targets, -100)       # [B, T]
    logp = head.log_prob(h)                # [B, T, 1000], sums to 1 over the last dim
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Entries (rows x vocabulary) of the log-probability table that one chunk of
#: :meth:`AdaptiveSoftmax.argmax` may hold (64 MiB in float32).
ARGMAX_CHUNK_ELEMENTS = 1 << 24


class ClusterTables(nn.Module):
    """The word vectors ``E_i`` and projections ``P_i`` of every cluster."""

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int], div: int, init_std: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.bounds = (0, *cutoffs, vocab_size)  # cluster i holds ids [bounds[i], bounds[i + 1])
        self.dims = tuple(d_model // div**i for i in range(len(cutoffs) + 1))
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(hi - lo, d) * init_std) for lo, hi, d in zip(self.bounds, self.bounds[1:], self.dims)]
        )
        self.projections = nn.ParameterDict(
            {str(i): nn.Parameter(torch.randn(d_model, d) * init_std) for i, d in enumerate(self.dims) if d != d_model}
        )

    @property
    def n_clusters(self) -> int:
        return len(self.dims)

    def projection(self, i: int) -> Tensor | None:
        """``P_i`` ``[d_model, d_i]``, or None when cluster ``i`` has the model's width."""
        key = str(i)
        return self.projections[key] if key in self.projections else None


class AdaptiveInput(nn.Module):
    """Token ids ``[...]`` -> vectors ``[..., d_model]``, each from its cluster."""

    def __init__(self, tables: ClusterTables) -> None:
        super().__init__()
        self.tables = tables

    def forward(self, tokens: Tensor) -> Tensor:
        # Every cluster embeds every token (clamped into its range) and the
        # tokens outside it are zeroed: the same work for every batch, no
        # host synchronisation, and a zero gradient for rows no token used.
        t = self.tables
        out: Tensor | None = None
        for i, (lo, hi) in enumerate(zip(t.bounds, t.bounds[1:])):
            inside = (tokens >= lo) & (tokens < hi)  # [...]
            e = F.embedding((tokens - lo).clamp(0, hi - lo - 1), t.weights[i])  # [..., d_i]
            proj = t.projection(i)
            if proj is not None:
                e = F.linear(e, proj)  # [..., d_model]
            e = torch.where(inside[..., None], e, 0.0)
            out = e if out is None else out + e
        return out


class AdaptiveSoftmax(nn.Module):
    """Hidden states ``[..., d_model]`` -> log-probabilities of words.

    ``tables`` are the input's own for tied weights, or a second set.
    Log-probabilities are computed in float32 (under autocast the matrix
    products run in its dtype and are cast up, as for the plain softmax).
    """

    def __init__(self, tables: ClusterTables, init_std: float) -> None:
        super().__init__()
        self.tables = tables
        n_tail = tables.n_clusters - 1
        self.cluster_weight = nn.Parameter(torch.randn(n_tail, tables.d_model) * init_std)  # C [n_tail, D]
        self.cluster_bias = nn.Parameter(torch.zeros(n_tail))  # c [n_tail]
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.zeros(hi - lo)) for lo, hi in zip(tables.bounds, tables.bounds[1:])]
        )
        # First id of every tail cluster, on the model's device (not saved: the config has it).
        self.register_buffer("tail_starts", torch.tensor(tables.bounds[1:-1], dtype=torch.long), persistent=False)

    @property
    def vocab_size(self) -> int:
        return self.tables.bounds[-1]

    def head_log_prob(self, hidden: Tensor) -> Tensor:
        """``[N, D]`` -> ``[N, n_0 + n_tail]``: the head's words, then one entry per tail cluster."""
        words = F.linear(hidden, self.tables.weights[0], self.biases[0])  # [N, n_0]
        clusters = F.linear(hidden, self.cluster_weight, self.cluster_bias)  # [N, n_tail]
        return torch.cat([words.float(), clusters.float()], dim=-1).log_softmax(dim=-1)

    def cluster_log_prob(self, i: int, hidden: Tensor) -> Tensor:
        """``[N, D]`` -> ``[N, n_i]``: log p(w | cluster i) for tail cluster ``i``."""
        proj = self.tables.projection(i)
        z = hidden if proj is None else hidden @ proj  # [N, d_i]
        return F.linear(z, self.tables.weights[i], self.biases[i]).float().log_softmax(dim=-1)

    def log_prob(self, hidden: Tensor) -> Tensor:
        """``[..., D]`` -> ``[..., V]`` float32 over the whole vocabulary.

        Builds the full table: for sampling and tests, not for training."""
        lead = hidden.shape[:-1]
        h = hidden.reshape(-1, hidden.shape[-1])  # [N, D]
        head = self.head_log_prob(h)  # [N, n_0 + n_tail]
        n_0 = self.tables.bounds[1]
        parts = [head[:, :n_0]]
        for i in range(1, self.tables.n_clusters):
            parts.append(head[:, n_0 + i - 1, None] + self.cluster_log_prob(i, h))  # [N, n_i]
        return torch.cat(parts, dim=-1).reshape(*lead, self.vocab_size)

    def nll(self, hidden: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
        """Negative log-likelihood of ``targets`` ``[...]`` under ``hidden``
        ``[..., D]``: float32 ``[...]``, 0 where ``targets == ignore_index``.

        Each tail cluster's logits are computed for the rows whose target is
        in it, and only those. Finding them costs one host synchronisation
        (the rows per cluster); a cluster no target falls in still takes part
        with zero rows, so every parameter gets a (zero) gradient in every
        step, as distributed training expects.
        """
        shape = targets.shape
        h = hidden.reshape(-1, hidden.shape[-1])  # [N, D]
        y = targets.reshape(-1)  # [N]
        valid = y != ignore_index
        y = torch.where(valid, y, 0)
        bounds = self.tables.bounds
        n_0, n_clusters = bounds[1], self.tables.n_clusters
        cluster = torch.bucketize(y, self.tail_starts, right=True)  # [N] cluster of each target
        head = self.head_log_prob(h)  # [N, n_0 + n_tail]
        in_head = torch.where(cluster == 0, y, n_0 + cluster - 1)  # the target's entry in the head
        log_p = head.gather(1, in_head[:, None]).squeeze(1)  # [N]
        if n_clusters > 1:
            order = torch.argsort(cluster, stable=True)  # rows grouped by cluster
            counts = torch.bincount(cluster, minlength=n_clusters).tolist()  # the one host synchronisation
            for i, rows in enumerate(order.split(counts)[1:], start=1):
                local = (y[rows] - bounds[i])[:, None]  # [n, 1]
                log_p = log_p.index_add(0, rows, self.cluster_log_prob(i, h[rows]).gather(1, local).squeeze(1))
        return torch.where(valid, -log_p, 0.0).reshape(shape)

    def argmax(self, hidden: Tensor) -> Tensor:
        """The most likely word ``[...]`` under ``hidden`` ``[..., D]``, from
        full rows of log-probabilities taken a few rows at a time."""
        lead = hidden.shape[:-1]
        h = hidden.reshape(-1, hidden.shape[-1])  # [N, D]
        chunk = max(1, ARGMAX_CHUNK_ELEMENTS // self.vocab_size)
        best = [self.log_prob(part).argmax(dim=-1) for part in h.split(chunk)]
        return torch.cat(best).reshape(lead) if best else h.new_zeros(lead, dtype=torch.long)
