"""Structured pruning on tiny models of every family: exact unit removal, smaller configs, stock loading."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunelab
from prunelab.cli import main
from prunelab.engine.structured import StructuredSpec, block_params, prune_structured
from prunelab.models import ModelAdapter
from tiny_models import FAMILY_NAMES, TEXT, random_ids, save_tiny_folder, tiny_model

HEAD_FAMILIES = [f for f in FAMILY_NAMES if f not in ("opt", "gpt2", "phi3")]  # see adapters.UNITS_NOT_OFFERED


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def zero_units(model, kind, block_index, units):
    """The dense model with these units' contributions removed: their consumer input columns set to zero."""
    adapter = ModelAdapter(model)
    block = adapter.blocks[block_index]
    g = adapter.units(block, kind)
    layer = block.get_submodule(g.consumer)
    w = adapter.get_weight(layer).clone()
    for u in units:
        w[:, u * g.unit_size:(u + 1) * g.unit_size] = 0
    adapter.set_weight(layer, w)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_removing_channels_equals_zeroing_their_contribution(family):
    ids = random_ids(2, 12, seed=3)
    pruned, reference = tiny_model(family), tiny_model(family)
    adapter = ModelAdapter(pruned)
    width = adapter.units(adapter.blocks[0], "channels").count
    removed = [1, 5, width - 1]
    adapter.remove_units(adapter.blocks[0], "channels", [u for u in range(width) if u not in removed])
    zero_units(reference, "channels", 0, removed)
    assert adapter.units(adapter.blocks[0], "channels").count == width - 3
    # same arithmetic on fewer terms: equal up to float32 summation order
    torch.testing.assert_close(logits(pruned, ids), logits(reference, ids), rtol=0, atol=2e-6)


@pytest.mark.parametrize("family", HEAD_FAMILIES)
@pytest.mark.parametrize("keep", [[0, 2], [2, 3]])  # one query head per kv group | kv group 0 removed entirely
def test_removing_heads_equals_zeroing_their_contribution(family, keep):
    ids = random_ids(2, 12, seed=3)
    pruned, reference = tiny_model(family), tiny_model(family)
    adapter = ModelAdapter(pruned)
    adapter.remove_units(adapter.blocks[1], "heads", keep)
    zero_units(reference, "heads", 1, [h for h in range(4) if h not in keep])
    g = adapter.units(adapter.blocks[1], "heads")
    assert (g.count, g.groups) == ((2, 2) if keep == [0, 2] else (2, 1))
    torch.testing.assert_close(logits(pruned, ids), logits(reference, ids), rtol=0, atol=2e-6)


def test_unequal_heads_per_kv_group_are_refused():
    adapter = ModelAdapter(tiny_model("llama"))
    with pytest.raises(ValueError, match="same number"):
        adapter.remove_units(adapter.blocks[0], "heads", [0, 1, 2])


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "flap", "obs"])
def test_zero_units_are_found_and_removed_without_changing_the_model(criterion):
    """Hand-built weights: in every block three channels and one query head per kv group carry only zeros."""
    model = tiny_model("llama")  # 4 heads of 8 in 2 kv groups, 64 channels
    adapter = ModelAdapter(model)
    for block in adapter.blocks:
        for name in ("mlp.gate_proj", "mlp.up_proj"):
            block.get_submodule(name).weight.data[[3, 10, 40]] = 0
        block.mlp.down_proj.weight.data[:, [3, 10, 40]] = 0
        for head in (1, 2):  # one in each kv group
            block.self_attn.q_proj.weight.data[8 * head:8 * head + 8] = 0
            block.self_attn.o_proj.weight.data[:, 8 * head:8 * head + 8] = 0
    ids = random_ids(4, 12, seed=3)
    dense = logits(model, ids)
    params = block_params(adapter.blocks[0])
    channel = adapter.units(adapter.blocks[0], "channels").unit_params
    for structure, share, expected in (("channels", 3 * channel / params, [3, 10, 40]),
                                       ("heads", 2 * 2 * 8 * 32 / params, [1, 2])):
        record = prune_structured(model, StructuredSpec(structure, share, criterion, bias=False), ids, progress=False)
        assert all(r["removed"] == expected for r in record["layers"]), record["layers"]
    # zero units contributed nothing: same outputs up to float32 summation order
    torch.testing.assert_close(logits(model, ids), dense, rtol=0, atol=2e-6)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("structure", ["channels", "channels,heads", "blocks"])
def test_saved_structured_model_loads_stock_with_equal_logits(family, structure, tmp_path):
    if structure == "channels,heads" and family not in HEAD_FAMILIES:
        pytest.skip("heads are not offered for OPT, GPT-2 and Phi-3")
    corpus = tmp_path / "calib.txt"
    corpus.write_text(TEXT)
    src = save_tiny_folder(family, tmp_path / "src")
    method = "block-influence" if structure == "blocks" else "flap"
    sparsity = 0.34 if structure == "blocks" else 0.3
    result = prunelab.prune(model=str(src), method=method, structure=structure, sparsity=sparsity, device="cpu",
                            refit=structure != "blocks",
                            calibration=prunelab.CalibrationConfig(str(corpus), "train", 4, 32, 0),
                            out=tmp_path / "out", progress=False)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # stock: no trust_remote_code
    reloaded.eval()
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(result.model, ids), logits(reloaded, ids))
    record = json.loads((tmp_path / "out" / "prunelab.json").read_text())
    summary = record["summary"]
    assert summary["block_params_after"] == sum(block_params(b) for b in ModelAdapter(reloaded).blocks)
    assert summary["achieved_sparsity"] == pytest.approx(1 - summary["block_params_after"] / summary["block_params_before"])
    config = reloaded.config
    dense = tiny_model(family).config
    if structure == "blocks":
        assert config.num_hidden_layers == dense.num_hidden_layers - 1
        assert len(record["structured"]["removed_blocks"]) == 1
        if getattr(dense, "layer_types", None):
            kept = [i for i in range(dense.num_hidden_layers) if i not in record["structured"]["removed_blocks"]]
            assert list(config.layer_types) == [dense.layer_types[i] for i in kept]
        return
    assert summary["achieved_sparsity"] == pytest.approx(0.3, abs=0.06)  # tiny blocks: coarse units
    width_key = {"opt": "ffn_dim", "gpt2": "n_inner"}.get(family, "intermediate_size")
    width = getattr(config, width_key)
    adapter = ModelAdapter(reloaded)
    assert width < (getattr(dense, width_key) or 4 * dense.hidden_size)
    assert all(adapter.units(b, "channels").count == width for b in adapter.blocks)
    if structure == "channels,heads":
        assert config.num_attention_heads < dense.num_attention_heads
        assert config.head_dim == 8
        assert all(adapter.units(b, "heads").count == config.num_attention_heads for b in adapter.blocks)
    layers = record["layers"]
    assert {(r["block"], r["kind"]) for r in layers} == {(b, k) for b in range(dense.num_hidden_layers)
                                                         for k in ("channels", "heads") if k in structure}
    assert all(r["reconstruction_error"] is not None and r["units_before"] - r["units_after"] == len(r["removed"])
               for r in layers)


def test_refit_lowers_every_layers_error_and_bias_flags_load():
    model = tiny_model("llama")
    ids = random_ids(6, 24)
    record = prune_structured(model, StructuredSpec("channels,heads", 0.4, "wanda", refit=True), ids, progress=False)
    for r in record["layers"]:
        assert r["reconstruction_error"] <= r["error_before_refit"] + 1e-9, r
    assert sum(r["reconstruction_error"] for r in record["layers"]) < 0.8 * sum(r["error_before_refit"]
                                                                                for r in record["layers"])
    # the compensation biases switched Llama's flags on, with zero biases for gate/up and q/k/v
    assert model.config.mlp_bias and model.config.attention_bias
    block = ModelAdapter(model).blocks[0]
    assert torch.count_nonzero(block.mlp.gate_proj.bias) == 0 and torch.count_nonzero(block.mlp.down_proj.bias) > 0


def test_adaptive_widths_are_zero_padded_and_exact(tmp_path):
    model = tiny_model("llama")
    ids = random_ids(6, 24)
    record = prune_structured(model, StructuredSpec("channels", 0.3, "magnitude", allocation="adaptive"), ids,
                              progress=False)
    kept = {r["block"]: r["units_after"] for r in record["layers"]}
    assert kept[0] != kept[1]  # scores standardised per block, ranked together: the blocks end up different
    narrow = min(kept, key=kept.get)
    assert record["config"]["channels"] == {"width": max(kept.values()), "padded_blocks": [narrow]}
    # the budget counts only real (non-padding) channels
    removed = sum(64 - k for k in kept.values()) * ModelAdapter(model).units(ModelAdapter(model).blocks[0], "channels").unit_params
    assert removed == pytest.approx(0.3 * record["block_params_before"], abs=96)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    probe = random_ids(2, 16, seed=7)
    assert torch.equal(logits(model, probe), logits(reloaded, probe))


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_depth_pruned_model_generates_with_a_kv_cache_like_its_reload(family, tmp_path):
    model = tiny_model(family)
    record = prune_structured(model, StructuredSpec("blocks", 0.4, "block-influence"), random_ids(4, 16),
                              progress=False)
    assert len(record["block_influence"]) == tiny_model(family).config.num_hidden_layers
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = random_ids(1, 6, seed=2)
    outs = [m.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
            for m in (model, reloaded)]
    assert torch.equal(outs[0], outs[1])


def test_unsupported_combinations_fail_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="structures available for it: channels, blocks"):
        prune_structured(tiny_model("gpt2"), StructuredSpec("heads", 0.2, "magnitude"), progress=False)
    with pytest.raises(ValueError, match="reads num_attention_heads from the shared config"):
        prune_structured(tiny_model("phi3"), StructuredSpec("heads", 0.2, "magnitude"), progress=False)
    with pytest.raises(ValueError, match="--method block-influence"):
        StructuredSpec("blocks", 0.2, "flap")
    with pytest.raises(ValueError, match="no-bias-correction"):
        prune_structured(tiny_model("mistral"), StructuredSpec("channels", 0.2, "flap", bias=True), random_ids(2, 8),
                         progress=False)
    with pytest.raises(ValueError, match="--pattern, --scope and --refine"):
        prunelab.PruneConfig(method="flap", structure="channels", sparsity=0.2, pattern="2:4")


def test_cli_structured_prune_reports_the_achieved_fraction(tmp_path, capsys):
    corpus = tmp_path / "calib.txt"
    corpus.write_text(TEXT)
    src = save_tiny_folder("qwen2", tmp_path / "src")
    code = main(["prune", "--model", str(src), "--method", "obs", "--structure", "channels,heads", "--sparsity",
                 "0.25", "--refit", "--calib", str(corpus), "--calib-samples", "4", "--calib-seqlen", "32",
                 "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((tmp_path / "out" / "prunelab.json").read_text())
    assert printed["achieved_sparsity"] == record["summary"]["achieved_sparsity"] > 0.15
    assert record["config"]["structure"] == "channels,heads" and record["structured"]["spec"]["refit"]
    assert main(["prune", "--model", str(src), "--method", "flap", "--structure", "heads", "--sparsity", "1.5",
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 2


@pytest.mark.slow
def test_embedded_model_half_its_blocks_removed_as_channels_and_heads(tmp_path):
    """SmolLM2-135M (9 query heads in 3 kv groups of 64, 1536 channels): 50% by magnitude, data-free."""
    result = prunelab.prune(method="magnitude", structure="channels,heads", sparsity=0.5, out=tmp_path / "m",
                            progress=False)
    config = AutoModelForCausalLM.from_pretrained(tmp_path / "m").config
    # half the attention is exactly 2 of every group's 3 query heads; the kv heads stay
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (3, 3, 64)
    channel, block = 3 * 576, 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576  # q,o + k,v + MLP + norms
    assert config.intermediate_size == 1536 - round((0.5 * block - 6 * 2 * 64 * 576) / channel)
    summary = result.record["summary"]
    assert summary["achieved_sparsity"] == pytest.approx(0.5, abs=channel / block)
    assert summary["total_params_after"] == sum(p.numel() for p in result.model.parameters())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(result.model, ids), logits(reloaded, ids))
