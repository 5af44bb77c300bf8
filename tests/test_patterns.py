import pytest
import torch

from prunelab.patterns import Pattern, lowest_k_mask, lowest_k_per_row_mask, nm_mask, select_pruned


def reference_lowest_k(scores, k):
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores.flatten(), stable=True)[:k]] = True
    return mask.view_as(scores)


@pytest.mark.parametrize("k", [0, 1, 7, 50, 99, 100])
def test_lowest_k_equals_stable_sort_even_with_ties(k):
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 5, (10, 10), generator=g).float()  # many ties, as in dequantized Q4 weights
    assert torch.equal(lowest_k_mask(scores, k), reference_lowest_k(scores, k))
    assert int(lowest_k_mask(scores, k).sum()) == k


@pytest.mark.parametrize("k", [0, 1, 6, 12, 13])
@pytest.mark.parametrize("kind", ["ties", "continuous", "prior"])
def test_lowest_k_per_row_equals_stable_row_sort(k, kind):
    g = torch.Generator().manual_seed(k)
    scores = {"ties": lambda: torch.randint(0, 3, (9, 13), generator=g).float(),
              "continuous": lambda: torch.randn(9, 13, generator=g),
              "prior": lambda: torch.randn(9, 13, generator=g).masked_fill(torch.rand(9, 13, generator=g) < 0.4,
                                                                           float("-inf"))}[kind]()
    expected = torch.zeros_like(scores, dtype=torch.bool)
    expected.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], True)
    assert torch.equal(lowest_k_per_row_mask(scores, k), expected)
    if 0 < k < 13:  # the GPU path (torch.kthvalue) finds the same thresholds and tied rows
        import prunelab.patterns as patterns
        for a, b in zip(patterns._at_most_kth_numpy(scores, k), patterns._at_most_kth_torch(scores, k)):
            assert torch.equal(a, b)
    assert torch.equal(lowest_k_per_row_mask(scores.bfloat16(), k).sum(1), torch.full((9,), k))


def test_nm_mask_prunes_exactly_n_lowest_of_every_m_columns():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.1, 9.0, 8.0]])
    expected = torch.tensor([[False, True, False, True, True, True, False, False]])
    assert torch.equal(nm_mask(scores, 2, 4), expected)
    big = torch.randn(16, 64)
    for n, m in [(2, 4), (4, 8), (1, 4), (3, 8)]:
        mask = nm_mask(big, n, m)
        assert torch.equal(mask.view(16, -1, m).sum(-1), torch.full((16, 64 // m), n))
        # every pruned score is <= every kept score of its group
        g, s = mask.view(16, -1, m), big.view(16, -1, m)
        assert (s.masked_fill(~g, -1e9).amax(-1) <= s.masked_fill(g, 1e9).amin(-1)).all()


def test_row_scope_prunes_the_same_count_in_every_row():
    scores = torch.randn(6, 40)
    mask = select_pruned(scores, Pattern(0.3, scope="row"))
    assert torch.equal(mask.sum(1), torch.full((6,), 12))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_sparsity_is_rejected(bad):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        Pattern(bad)


@pytest.mark.parametrize("text", ["4:2", "2:2", "0:4", "2-4", "a:b"])
def test_bad_nm_is_rejected(text):
    with pytest.raises(ValueError):
        Pattern.parse(None, text)


def test_parse_nm_and_conflicting_sparsity():
    p = Pattern.parse(None, "2:4")
    assert (p.n, p.m, p.target_sparsity) == (2, 4, 0.5)
    assert Pattern.parse(0.5, "2:4").is_nm
    with pytest.raises(ValueError, match="prunes exactly 0.5"):
        Pattern.parse(0.7, "2:4")


def test_nm_needs_divisible_columns():
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.randn(2, 6), 2, 4)
