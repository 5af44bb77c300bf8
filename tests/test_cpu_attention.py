"""The engine's causal attention on oneDNN (prunelab/onednn.py, engine/attention.py): exact math against a float64
reference, causality bit for bit, where it dispatches and where it leaves transformers' sdpa alone."""
import pytest
import torch

from prunelab import onednn
from prunelab.engine import attention
from prunelab.engine.linear import onednn_available
from tiny_models import FAMILY_NAMES, random_ids, tiny_model

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear kernel")
U = 2.0 ** -24  # float32 unit roundoff


def reference(q, k, v, scale):
    """softmax(scale·q kᵀ + causal mask) v in float64, key/value heads repeated as transformers' repeat_kv."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    scores = scale * q.double() @ k.transpose(-1, -2)
    length = q.shape[2]
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)  # (B, L, H, D)


def random_qkv(batch=2, heads=6, kv_heads=2, length=37, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dim, generator=g) * 2
    k = torch.randn(batch, kv_heads, length, dim, generator=g) * 2
    v = torch.randn(batch, kv_heads, length, dim, generator=g)
    return q, k, v


@pytest.mark.parametrize("chunk", [1, 16, 37, 256])
def test_causal_attention_is_the_float64_result_within_float32_rounding(chunk):
    q, k, v = random_qkv()
    scale = 16 ** -0.5
    got = onednn.causal_attention(q, k, v, scale, chunk=chunk)
    assert got.shape == (2, 37, 6, 16) and got.is_contiguous()
    exact = reference(q, k, v, scale)
    # a logit is a 16-term float32 dot product, scaled: off by at most γ₁₇·scale·Σ|q||k| (+1 u for the scaling);
    # softmax turns a logit error δ into a relative weight error ≤ 2δ, and the exp/sum/divide and the 37-term
    # weighted sum of values add ≤ (37 + 4)·u relative; the output is a convex combination of |v| ≤ max|v|
    group = q.shape[1] // k.shape[1]
    magnitude = scale * (q.abs().double() @ k.abs().double().repeat_interleave(group, 1).transpose(-1, -2))
    logit_error = float(magnitude.max()) * 18 * U
    bound = (2 * logit_error + 41 * U) * float(v.abs().max()) * 1.01
    assert float((got.double() - exact).abs().max()) <= bound
    assert bound < 1e-3  # outputs are O(1): a wrong mask, scale or head mapping moves them by far more


def test_future_tokens_never_reach_earlier_outputs_bit_for_bit():
    q, k, v = random_qkv(length=40)
    before = onednn.causal_attention(q, k, v, 0.25, chunk=16)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 25:] = torch.randn_like(k2[:, :, 25:]) * 50
    v2[:, :, 25:] = 1e3
    after = onednn.causal_attention(q, k2, v2, 0.25, chunk=16)
    assert torch.equal(after[:, :25], before[:, :25])  # masked logits are -inf: exp gives exact zeros
    assert not torch.equal(after[:, 25:], before[:, 25:])


def test_each_query_head_reads_its_own_key_head():
    q, k, v = random_qkv(heads=4, kv_heads=2)
    v[:, 1] = 0  # key/value head 1 outputs zeros: query heads 2 and 3 read it, heads 0 and 1 do not
    out = onednn.causal_attention(q, k, v, 0.25)
    assert bool((out[:, :, 2:] == 0).all()) and bool((out[:, :, :2] != 0).any())


def _spy(monkeypatch):
    calls = []
    kernel = onednn.causal_attention
    monkeypatch.setattr(onednn, "causal_attention", lambda *a, **kw: calls.append(a[0].shape) or kernel(*a, **kw))
    return calls


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if tiny_model(f).config._attn_implementation == "sdpa"])
def test_every_sdpa_family_gives_the_same_logits_and_its_config_back(family, monkeypatch):
    calls = _spy(monkeypatch)
    model = tiny_model(family).eval()
    ids = random_ids(2, 24)
    with torch.no_grad():
        expected = model(ids).logits
        with attention.attention_kernel(model, "onednn"):
            got = model(ids).logits
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # float32 rounding through two blocks
    # one call per layer; Mistral's attention calls carry its sliding window, so it keeps sdpa
    assert len(calls) == (0 if family == "mistral" else model.config.num_hidden_layers)


def test_masked_or_non_float_calls_go_to_sdpa_unchanged(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = _spy(monkeypatch)
    model = tiny_model("llama")
    module = model.model.layers[0].self_attn
    q, k, v = random_qkv(batch=1, heads=4, kv_heads=2, length=9, dim=8)
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 0] = float("-inf")
    for args, kwargs in [((q, k, v, mask), {}), ((q, k, v, None), {"dropout": 0.1}),
                         ((q, k, v, None), {"sliding_window": 4}), ((q, k, v, None), {"is_causal": False}),
                         ((q.double(), k.double(), v.double(), None), {})]:
        torch.manual_seed(0)
        got, _ = attention.attention_forward(module, *args, scaling=0.3, **kwargs)
        torch.manual_seed(0)
        expected, _ = sdpa_attention_forward(module, *args, scaling=0.3, **kwargs)
        assert torch.equal(got, expected)
    assert calls == []
    got, _ = attention.attention_forward(module, q, k, v, None, scaling=0.3, position_ids=None, use_cache=False)
    assert calls == [q.shape]
    torch.testing.assert_close(got, reference(q, k, v, 0.3).float(), rtol=1e-5, atol=1e-5)


def test_config_is_restored_when_the_forward_fails():
    model = tiny_model("llama")
    with pytest.raises(RuntimeError), attention.attention_kernel(model, "onednn"):
        assert model.config._attn_implementation == attention.NAME
        model(torch.zeros(1, 3, 3))  # floats where ids belong
    assert model.config._attn_implementation == "sdpa"
    with attention.attention_kernel(model, "aten"):
        assert model.config._attn_implementation == "sdpa"  # only the oneDNN kernel switches it


def test_engine_forwards_run_on_it(monkeypatch):
    from prunelab.algorithms import get_algorithm
    from prunelab.engine import EngineOptions, prune_model
    from prunelab.patterns import Pattern

    calls = _spy(monkeypatch)
    model = tiny_model("llama")
    prune_model(model, get_algorithm("wanda"), Pattern(0.5), random_ids(3, 12), progress=False,
                options=EngineOptions(cpu_linear="onednn", batch_size=1))
    blocks = model.config.num_hidden_layers
    # per block: the stats forwards of 3 sequences, and the output forwards of all but the last block
    assert len(calls) == 3 * blocks + 3 * (blocks - 1) and calls[0] == (1, 4, 12, 8)
    assert model.config._attn_implementation == "sdpa"
    calls.clear()
    prune_model(tiny_model("llama"), get_algorithm("wanda"), Pattern(0.5), random_ids(3, 12), progress=False,
                options=EngineOptions(cpu_linear="aten"))
    assert calls == []


def test_outputs_do_not_depend_on_the_thread_count():
    q, k, v = random_qkv(batch=1, heads=9, kv_heads=3, length=300, dim=64)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outputs.append(onednn.causal_attention(q, k, v, 0.125))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[0], outputs[1])
