"""Token sampling, gather/scatter and mask restriction against naive per-sample loops."""

from __future__ import annotations

import itertools
from collections import Counter

import torch

from hf_data_efficiency.routing.random_ltd import gather_tokens, restrict_mask, sample_kept_indices, scatter_tokens


def test_subsets_are_uniform_sorted_and_unique():
    torch.manual_seed(0)
    draws = sample_kept_indices(20_000, 5, 2)
    assert (draws.diff(dim=1) > 0).all()
    counts = Counter(tuple(row) for row in draws.tolist())
    assert set(counts) == set(itertools.combinations(range(5), 2))
    expected = 20_000 / 10
    for c in counts.values():  # binomial sd ~ 42: 6 sd margin
        assert abs(c - expected) < 250


def test_keep_positions_always_kept_and_rest_uniform():
    torch.manual_seed(1)
    draws = sample_kept_indices(8_000, 10, 4, keep_positions=(0, -1))
    assert (draws[:, 0] == 0).all() and (draws[:, -1] == 9).all()
    freq = torch.bincount(draws[:, 1:-1].reshape(-1), minlength=10).float() / 8_000
    assert freq[0] == 0 and freq[9] == 0
    assert torch.allclose(freq[1:9], torch.full((8,), 2 / 8), atol=0.03)


def test_keep_positions_beyond_sequence_are_ignored():
    idx = sample_kept_indices(3, 4, 2, keep_positions=(0, 7, -9))
    assert (idx[:, 0] == 0).all()


def test_gather_scatter_match_loops():
    torch.manual_seed(2)
    h = torch.randn(3, 7, 5, requires_grad=True)
    idx = sample_kept_indices(3, 7, 3)
    sub = gather_tokens(h, idx)
    assert torch.equal(sub, torch.stack([h[b, idx[b]] for b in range(3)]))
    new = torch.randn(3, 3, 5, requires_grad=True)
    out = scatter_tokens(h, idx, new)
    naive = h.detach().clone()
    for b in range(3):
        naive[b, idx[b]] = new[b].detach()
    assert torch.equal(out, naive)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    kept = torch.zeros(3, 7, dtype=torch.bool)
    kept[torch.arange(3)[:, None], idx] = True
    assert torch.equal(h.grad[kept], torch.zeros_like(h.grad[kept]))
    assert torch.equal(h.grad[~kept], w[~kept])
    assert torch.equal(new.grad, torch.stack([w[b, idx[b]] for b in range(3)]))


def test_restrict_mask_matches_loops():
    torch.manual_seed(3)
    idx = sample_kept_indices(2, 6, 4)
    pad = torch.randint(0, 2, (2, 6)).bool()
    assert torch.equal(restrict_mask(pad, idx, 6), torch.stack([pad[b, idx[b]] for b in range(2)]))
    for batch in (1, 2):
        for rows in (1, 6):
            m = torch.randn(batch, 3, rows, 6)
            got = restrict_mask(m, idx, 6)
            for b in range(2):
                src = m[b if batch == 2 else 0]
                want = src[:, idx[b]][:, :, idx[b]] if rows == 6 else src[:, :, idx[b]]
                assert torch.equal(got[b], want)
    assert restrict_mask(None, idx, 6) is None
