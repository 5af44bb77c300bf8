"""prunelab speed: the cost model against hand counts, the timed greedy loop against transformers' generate,
the CSR kernel against dense outputs, and the CLI's JSON contract (each model in its own process)."""
import json

import pytest
import torch

import prunelab
from prunelab.cli import main
from prunelab.eval.speed import SPEED_KEYS, SpeedSettings, default_baseline, greedy_timed, inference_costs
from prunelab.kernels import CSRLinear, PhaseLinear, apply_kernel, choose_kernels
from prunelab.models import ModelAdapter
from tiny_models import FAMILY_NAMES, TEXT, random_ids, save_tiny_folder, tiny_model


def zero_half_of_first_layer(model) -> int:
    adapter = ModelAdapter(model)
    _, layer = next(adapter.named_prunable_layers())
    w = adapter.get_weight(layer).contiguous().clone()
    w.view(-1)[::2] = 0
    adapter.set_weight(layer, w)
    return (w.numel() + 1) // 2


def test_costs_of_tiny_llama_match_a_hand_count():
    model = tiny_model("llama")
    c = model.config  # hidden 32, intermediate 64, 2 blocks, 4 heads of 8, 2 kv heads, vocab 128, tied? no
    hidden, inter, heads, kv, head_dim, vocab = 32, 64, 4, 2, 8, 128
    linear = 2 * (hidden * heads * head_dim + 2 * hidden * kv * head_dim + heads * head_dim * hidden + 3 * hidden * inter)
    batch, prompt, new = 2, 10, 6
    costs = inference_costs(model, batch, prompt, new)
    assert costs["linear_params"] == costs["linear_nonzero_params"] == linear
    assert costs["lm_head_params"] == vocab * hidden
    attention = 4 * heads * head_dim * 2 * batch * prompt * (prompt + 1) // 2
    assert costs["prefill_flops"] == 2 * batch * prompt * linear + attention + 2 * batch * vocab * hidden
    norms = 2 * 2 * hidden + hidden  # two per block and the final one
    embed_tables = vocab * hidden * (1 if c.tie_word_embeddings else 2)
    assert costs["params"] == linear + norms + embed_tables
    kv_bytes = 2 * 2 * kv * head_dim * 4 * batch * (prompt + new / 2)
    assert costs["decode_bytes_per_token"] == pytest.approx((linear + norms + vocab * hidden + hidden) * 4 + kv_bytes)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_zeros_lower_the_ideal_costs_by_exactly_what_they_remove(family):
    model = tiny_model(family)
    before = inference_costs(model, 1, 16, 4)
    zeroed = zero_half_of_first_layer(model)
    after = inference_costs(model, 1, 16, 4)
    assert before["linear_nonzero_params"] - after["linear_nonzero_params"] == zeroed
    assert before["prefill_flops"] - after["prefill_flops"] == 2 * 16 * zeroed
    assert before["decode_bytes_per_token"] - after["decode_bytes_per_token"] == pytest.approx(4 * zeroed)
    assert after["dense_prefill_flops"] == before["dense_prefill_flops"]  # a dense kernel multiplies the zeros too


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "gemma2"])
def test_timed_greedy_loop_generates_what_transformers_generate_does(family):
    model = tiny_model(family)
    prompt = random_ids(2, 12)
    new = 7
    _, _, tokens = greedy_timed(model, prompt, new, "cpu")
    _, _, static = greedy_timed(model, prompt, new, "cpu", cache="static")
    assert torch.equal(static, tokens)
    reference = model.generate(prompt, do_sample=False, max_new_tokens=new, min_new_tokens=new, use_cache=True,
                               pad_token_id=0, attention_mask=torch.ones_like(prompt))
    assert torch.equal(tokens, reference[:, prompt.shape[1]:])


def sparsified(model, fraction):
    """Zero about ``fraction`` of every prunable weight at random, in place."""
    adapter = ModelAdapter(model)
    for _, layer in adapter.named_prunable_layers():
        w = adapter.get_weight(layer)
        adapter.set_weight(layer, torch.where(torch.rand_like(w) < fraction, 0.0, w))
    return model


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_csr_kernel_gives_the_dense_logits(family):
    model = sparsified(tiny_model(family), 0.6)
    ids = random_ids(2, 16)
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        info = apply_kernel(model, "csr")
        sparse = model(input_ids=ids).logits
    csr_modules = sum(isinstance(m, CSRLinear) for m in model.modules())
    assert info["csr_layers"] == csr_modules > 0
    assert not list(ModelAdapter(model).named_prunable_layers())  # every dense Linear of the blocks swapped out
    # float32, different summation order only: relative differences of a few ulps per dot product
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("decode,prefill", [("csr", "dense"), ("dense", "csr")])
def test_phase_linear_uses_the_kernel_chosen_for_each_phase_with_the_same_outputs(decode, prefill):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 16, generator=g).masked_fill(torch.rand(24, 16, generator=g) < 0.7, 0.0)
    b = torch.randn(24, generator=g)
    layer = PhaseLinear(w, b, decode, prefill, decode_rows=2)
    assert layer.dense is not None and layer.csr is not None  # each phase needs its own copy
    for rows in (1, 2, 9):  # 1-2 rows: decode steps of batch 2; 9 rows: a prefill
        x = torch.randn(rows, 16, generator=g)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-6)
    only_dense = PhaseLinear(w, b, "dense", "dense", 1)
    assert only_dense.csr is None


def test_auto_does_not_time_layers_below_half_sparsity_and_keeps_dense_outputs():
    model = tiny_model("llama")
    groups = {"mlp.up_proj": [ModelAdapter.get_weight(b.mlp.up_proj) for b in ModelAdapter(model).blocks]}
    choice = choose_kernels(groups, batch=1, prompt_len=8)["mlp.up_proj"]
    assert choice["decode"] == choice["prefill"] == "dense" and "decode_seconds" not in choice
    sparsified(model, 0.9)
    ids = random_ids(1, 8)
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        info = apply_kernel(model, "auto", SpeedSettings(prompt_len=8))
        auto = model(input_ids=ids).logits
    assert all("decode_seconds" in c and "prefill_seconds" in c for c in info["choices"].values())
    torch.testing.assert_close(auto, dense, rtol=1e-4, atol=1e-5)


def test_settings_are_checked_before_anything_runs():
    with pytest.raises(ValueError, match="new_tokens"):
        SpeedSettings(new_tokens=1)
    with pytest.raises(ValueError, match="kernel"):
        SpeedSettings(kernel="magic")
    with pytest.raises(ValueError, match="batch"):
        SpeedSettings(batch=0)


def test_cli_speed_measures_model_and_its_recorded_source_each_in_its_own_process(tmp_path, capsys):
    src = save_tiny_folder("llama", tmp_path / "src")
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT)
    out = tmp_path / "pruned"
    prunelab.prune(model=str(src), method="magnitude", sparsity=0.5, device="cpu", out=out, progress=False)
    assert default_baseline(str(out)) == str(src.resolve())
    json_path = tmp_path / "speed.json"
    rc = main(["speed", str(out), "--prompt-len", "16", "--new-tokens", "4", "--repeats", "2", "--threads", "1",
               "--json", str(json_path), "--quiet"])
    assert rc == 0
    result = json.loads(json_path.read_text())
    for entry in (result, result["baseline"]):
        assert set(SPEED_KEYS) <= set(entry)
        assert entry["isolated"] and entry["threads"] == 1
        assert entry["peak_rss_bytes"] > entry["rss_before_load_bytes"] > 0
        assert len(entry["repeats"]["ttft_s"]["values"]) == 2
        rates, times = entry["repeats"]["prefill_tokens_per_s"]["values"], entry["repeats"]["ttft_s"]["values"]
        assert rates == pytest.approx([16 / t for t in times])
        assert entry["prefill_tokens_per_s"] == pytest.approx(sum(rates) / 2)  # the median of two
    assert result["baseline"]["model"] == str(src.resolve())
    assert result["params"] == result["baseline"]["params"]
    assert result["nonzero_params"] < result["baseline"]["nonzero_params"]
    assert result["ratios"]["decode_tokens_per_s"] == pytest.approx(
        result["decode_tokens_per_s"] / result["baseline"]["decode_tokens_per_s"])
    # magnitude 50% of the layer weights: the ideal is above 1 for a sparse kernel, exactly 1 for a dense one
    assert result["ideal"]["prefill_tokens_per_s"] > 1.2
    assert result["ideal"]["dense_kernel_prefill_tokens_per_s"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "prefill tokens/s" in printed and "ideal" in printed


@pytest.mark.parametrize("origin,expected", [
    ({"kind": "embedded", "name": "smollm2-135m", "location": "/x/y.gguf"}, "smollm2-135m"),
    ({"kind": "hub", "hub_id": "owner/model", "location": "owner/model"}, "owner/model"),
    ({"kind": "gguf", "location": "/models/m.gguf"}, "/models/m.gguf"),
    ({"kind": "folder", "location": "/models/dense", "path": "/models/dense"}, "/models/dense"),
])
def test_default_baseline_is_the_recorded_source(tmp_path, origin, expected):
    (tmp_path / "prunelab.json").write_text(json.dumps({"model_source": origin}))
    assert default_baseline(str(tmp_path)) == expected
    assert default_baseline(str(tmp_path / "missing")) is None
