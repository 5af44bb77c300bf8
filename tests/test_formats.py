"""Compressed checkpoints (bitmask, nm): exact packing, bit-identical round trips through save + prunelab.load for
every family (GPT-2 Conv1D packed transposed, tied embeddings stored once), byte counts read from the files,
export to a plain HF folder, and clear refusals."""
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunelab
from prunelab.cli import main
from prunelab.export import save_pruned
from prunelab.formats import (COMPRESSED_FILE, decode_bitmask, decode_nm, encode_bitmask, encode_nm, pack_bits,
                              pack_ints, prunable_weight_names, read_layout, tensor_bytes, unpack_bits, unpack_ints)
from tiny_models import FAMILY_NAMES, TEXT, random_ids, save_tiny_folder


@pytest.mark.parametrize("count", [1, 7, 8, 9, 1000])
def test_bits_and_small_ints_pack_and_unpack_exactly(count):
    g = torch.Generator().manual_seed(count)
    bits = torch.rand(count, generator=g) < 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(count / 8)
    assert torch.equal(unpack_bits(packed, count), bits)
    for width in (1, 2, 3, 4):
        ints = torch.randint(0, 2 ** width, (count,), generator=g)
        packed = pack_ints(ints, width)
        assert packed.numel() == math.ceil(count * width / 8)
        assert torch.equal(unpack_ints(packed, count, width), ints)


def test_bit_order_is_little_endian_within_a_byte():
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 1])).tolist() == [1, 2]
    assert pack_ints(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0b10_01_00_11]


def test_bitmask_and_nm_encodings_round_trip_exactly_on_hand_built_weights():
    w = torch.tensor([[0.0, 1.5, 0.0, -2.0, 3.0, 0.0, 0.0, 4.0],
                      [5.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    bm = encode_bitmask(w)
    assert bm["values"].tolist() == [1.5, -2.0, 3.0, 4.0, 5.0, 6.0]
    assert torch.equal(decode_bitmask(bm, w.shape, w.dtype), w)
    nm = encode_nm(w, 2, 4)
    # kept per group of 4 columns, in column order; a group with fewer non-zeros keeps its first zero(s)
    assert nm["values"].tolist() == [[[1.5, -2.0], [3.0, 4.0]], [[5.0, 6.0], [0.0, 0.0]]]
    assert unpack_ints(nm["indices"], 8, 2).tolist() == [1, 3, 0, 3, 0, 2, 0, 1]
    assert torch.equal(decode_nm(nm, w.shape, w.dtype, 2, 4), w)


def test_nm_refuses_weights_that_are_not_n_of_m_sparse():
    w = torch.ones(2, 8)
    w[:, ::2] = 0
    w[0, 1:4] = 1.0  # three non-zeros in the first group
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        encode_nm(w, 2, 4)
    with pytest.raises(ValueError, match="multiple of m=4"):
        encode_nm(torch.zeros(2, 6), 2, 4)


def _pruned(family, tmp_path, **prune_args):
    src = save_tiny_folder(family, tmp_path / "src")
    return prunelab.prune(model=str(src), method="magnitude", device="cpu", progress=False, **prune_args)


def _assert_same_model(loaded, reference, ids):
    ref_state = reference.state_dict()
    state = loaded.state_dict()
    assert state.keys() == ref_state.keys()
    for name, tensor in ref_state.items():
        assert state[name].dtype == tensor.dtype
        assert torch.equal(state[name], tensor), name
        assert torch.equal(state[name].view(torch.int32), tensor.view(torch.int32)), name  # bit for bit
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, reference(input_ids=ids).logits)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_round_trips_bit_identically_in_every_format(family, tmp_path):
    result = _pruned(family, tmp_path, pattern="2:4")
    model, tokenizer = result.model, result.tokenizer
    assert not any(torch.signbit(p[p == 0]).any() for p in model.parameters())  # no -0.0: +0.0 comes back exact
    ids = random_ids(2, 12)
    folders = {}
    for fmt in ("dense", "bitmask", "nm"):
        folders[fmt] = save_pruned(model, tokenizer, tmp_path / fmt, result.record, save_format=fmt,
                                   nm=(2, 4) if fmt == "nm" else None)
    reference = AutoModelForCausalLM.from_pretrained(folders["dense"])  # the dense-with-zeros model, stock loader
    for fmt, folder in folders.items():
        loaded, tok = prunelab.load(folder)
        assert tok is not None
        _assert_same_model(loaded, reference, ids)
        assert loaded.config.tie_word_embeddings == reference.config.tie_word_embeddings
        if loaded.config.tie_word_embeddings:
            assert loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    layout = read_layout(folders["nm"] / COMPRESSED_FILE)
    assert set(layout) == set(prunable_weight_names(model))
    assert all(entry["transposed"] == (family == "gpt2") for entry in layout.values())  # Conv1D is (in, out)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_compressed_bytes_in_the_file_are_the_values_plus_one_bit_or_two_index_bits(family, tmp_path):
    result = _pruned(family, tmp_path, pattern="2:4")
    names = prunable_weight_names(result.model)
    state = result.model.state_dict()
    for fmt in ("bitmask", "nm"):
        folder = save_pruned(result.model, result.tokenizer, tmp_path / fmt, result.record, save_format=fmt,
                             nm=(2, 4))
        sizes = tensor_bytes(folder / COMPRESSED_FILE)
        for name in names:
            numel = state[name].numel()
            assert sizes[f"{name}.values"] == numel // 2 * 4  # float32, half kept
            if fmt == "bitmask":
                assert sizes[f"{name}.bitmask"] == math.ceil(numel / 8)
            else:
                assert sizes[f"{name}.indices"] == math.ceil(numel // 2 * 2 / 8)
        tied = result.model.config.tie_word_embeddings
        assert ("lm_head.weight" in sizes) == (not tied)


def test_bitmask_round_trips_unstructured_sparsity_and_a_stock_loader_refuses_it(tmp_path):
    result = _pruned("llama", tmp_path, sparsity=0.5)
    folder = save_pruned(result.model, result.tokenizer, tmp_path / "bm", result.record, save_format="bitmask")
    dense = save_pruned(result.model, result.tokenizer, tmp_path / "dense", result.record)
    _assert_same_model(prunelab.load(folder)[0], AutoModelForCausalLM.from_pretrained(dense), random_ids(1, 10))
    assert not (folder / "model.safetensors").exists()
    with pytest.raises(OSError):  # never a silently random-initialised model
        AutoModelForCausalLM.from_pretrained(folder)


def test_cli_prune_compressed_export_dense_and_evaluate(tmp_path, capsys):
    src = save_tiny_folder("gpt2", tmp_path / "src")
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    assert main(["prune", "--model", str(src), "--method", "magnitude", "--sparsity", "0.5", "--save-format", "nm",
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "--pattern N:M" in capsys.readouterr().err
    assert main(["prune", "--model", str(src), "--method", "magnitude", "--structure", "channels", "--sparsity",
                 "0.3", "--save-format", "nm", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "structured model is smaller and dense" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    nm_dir = tmp_path / "nm"
    assert main(["prune", "--model", str(src), "--method", "magnitude", "--pattern", "2:4", "--save-format", "nm",
                 "--out", str(nm_dir), "--device", "cpu", "--quiet"]) == 0
    assert json.loads((nm_dir / "prunelab.json").read_text())["save_format"] == "nm"
    capsys.readouterr()
    plain = tmp_path / "plain"
    assert main(["export", str(nm_dir), "--format", "dense", "--out", str(plain), "--quiet"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["format"] == "dense" and exported["weight_bytes"] > 0
    stock = AutoModelForCausalLM.from_pretrained(plain)
    _assert_same_model(prunelab.load(nm_dir)[0], stock, random_ids(1, 10))
    again = tmp_path / "again"  # nm -> dense -> nm again, the pattern read from the carried record
    assert main(["export", str(plain), "--format", "nm", "--out", str(again), "--quiet"]) == 0
    first, second = (again / COMPRESSED_FILE).read_bytes(), (nm_dir / COMPRESSED_FILE).read_bytes()
    header = 8 + int.from_bytes(first[:8], "little")  # same tensors, same bytes (metadata order may differ)
    assert first[header:] == second[header:] and read_layout(again / COMPRESSED_FILE) == read_layout(
        nm_dir / COMPRESSED_FILE)
    capsys.readouterr()
    assert main(["eval", str(nm_dir), "--data", str(corpus), "--seqlen", "32", "--max-windows", "2",
                 "--quiet"]) == 0
    from_compressed = json.loads(capsys.readouterr().out)["ppl"]
    assert main(["eval", str(plain), "--data", str(corpus), "--seqlen", "32", "--max-windows", "2", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["ppl"] == from_compressed
    assert main(["eval", str(nm_dir), "--data", str(corpus), "--seqlen", "32", "--offload", "disk", "--quiet"]) == 2
    assert "compressed checkpoint" in capsys.readouterr().err
