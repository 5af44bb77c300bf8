"""Streaming (--offload disk): blocks read lazily from disk and written out as they are pruned, bit for bit the
same result as an in-memory run; activations spilled to a file; no half-written output on failure."""
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import prunelab
from prunelab.algorithms import register
from prunelab.algorithms.wanda import Wanda
from prunelab.engine.activations import ActivationBuffer, parse_size
from prunelab.eval.perplexity import blockwise_perplexity, perplexity
from prunelab.models.streaming import SafetensorsTensors, write_safetensors
from tiny_models import FAMILY_NAMES, TEXT, random_ids, save_tiny_folder, tiny_model


@pytest.fixture()
def corpus_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    return path


def _prune(src, out, corpus, **kw):
    calib = prunelab.CalibrationConfig(str(corpus), "train", 5, 32, 0)
    return prunelab.prune(model=str(src), device="cpu", calibration=calib, out=out, progress=False, **kw)


def _weights(folder) -> dict:
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.mark.parametrize("family,method", [("llama", "sparsegpt"), ("gpt2", "wanda"), ("opt", "sparsegpt"),
                                           ("gemma2", "wanda")])
def test_streamed_run_is_bit_identical_to_in_memory(family, method, tmp_path, corpus_file):
    src = save_tiny_folder(family, tmp_path / "src")
    # batch of 2 over 5 sequences: a partial last batch on both sides
    memory = _prune(src, tmp_path / "mem", corpus_file, method=method, sparsity=0.5, offload="none",
                    calib_batch_size=2)
    streamed = _prune(src, tmp_path / "disk", corpus_file, method=method, sparsity=0.5, offload="disk",
                      calib_batch_size=2)
    a, b = _weights(tmp_path / "mem"), _weights(tmp_path / "disk")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert streamed.record["engine"]["offload"] == "disk" and memory.record["engine"]["offload"] == "none"
    assert streamed.record["summary"] == {k: v for k, v in memory.record["summary"].items()}
    # one shard per block plus one for the rest, all named in the index
    index = json.loads((tmp_path / "disk" / "model.safetensors.index.json").read_text())
    config = json.loads((tmp_path / "disk" / "config.json").read_text())
    n_blocks = config.get("num_hidden_layers") or config.get("n_layer")
    assert len(set(index["weight_map"].values())) == len(list((tmp_path / "disk").glob("*.safetensors"))) == n_blocks + 1


def test_activations_spilled_to_disk_give_the_same_weights(tmp_path, corpus_file):
    src = save_tiny_folder("llama", tmp_path / "src")
    host = _prune(src, tmp_path / "host", corpus_file, method="sparsegpt", sparsity=0.6, offload="disk")
    disk = _prune(src, tmp_path / "file", corpus_file, method="sparsegpt", sparsity=0.6, offload="disk",
                  max_activation_memory="1KB")
    assert host.record["engine"]["activations"] == "host" and disk.record["engine"]["activations"] == "disk"
    a, b = _weights(tmp_path / "host"), _weights(tmp_path / "file")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])  # gpt2: the LM head is the (tied) input embedding
def test_streamed_output_has_the_exact_sparsity_and_evaluates_blockwise(family, tmp_path, corpus_file):
    src = save_tiny_folder(family, tmp_path / "src")
    result = _prune(src, tmp_path / "out", corpus_file, method="wanda", sparsity=0.5, offload="disk",
                    eval_data=str(corpus_file), eval_seqlen=32)
    record = json.loads((tmp_path / "out" / "prunelab.json").read_text())
    assert record["eval"][str(corpus_file)]["blockwise"] is True
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    adapter = prunelab.models.ModelAdapter(model)
    for _, layer in adapter.named_prunable_layers():
        w = adapter.get_weight(layer)
        assert int((w == 0).sum()) == w.shape[0] * (w.shape[1] // 2)  # Wanda: exactly half of every row
    # the blockwise perplexity of the streamed output is the in-memory evaluation of the reloaded folder
    again = prunelab.evaluate(str(tmp_path / "out"), data=str(corpus_file), seqlen=32, progress=False)
    assert record["eval"][str(corpus_file)]["ppl"] == pytest.approx(again["ppl"], rel=1e-5)
    assert result.record["summary"]["sparsity"] == pytest.approx(0.5)


@register
@dataclass
class FailsOnSecondBlock(Wanda):
    name = "test-fails-later"
    calls = 0

    def scores(self, weight, stats):
        FailsOnSecondBlock.calls += 1
        if FailsOnSecondBlock.calls > 7:  # block 0 of the tiny Llama has 7 prunable layers
            raise RuntimeError("interrupted on purpose")
        return super().scores(weight, stats)


def test_an_interrupted_streamed_run_leaves_no_output(tmp_path, corpus_file):
    src = save_tiny_folder("llama", tmp_path / "src")
    FailsOnSecondBlock.calls = 0
    with pytest.raises(RuntimeError, match="on purpose"):
        _prune(src, tmp_path / "out", corpus_file, method="test-fails-later", sparsity=0.5, offload="disk")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.staging")]


def test_auto_offload_streams_above_the_memory_share_and_says_so(tmp_path, corpus_file, capsys):
    src = save_tiny_folder("llama", tmp_path / "src")
    calib = prunelab.CalibrationConfig(str(corpus_file), "train", 2, 32, 0)
    result = prunelab.prune(model=str(src), method="magnitude", sparsity=0.5, device="cpu", calibration=calib,
                            out=tmp_path / "out", offload_share=1e-9)
    assert result.record["engine"]["offload"] == "disk"
    assert "streaming it block by block from disk" in capsys.readouterr().out
    result = prunelab.prune(model=str(src), method="magnitude", sparsity=0.5, device="cpu", calibration=calib,
                            out=tmp_path / "out2", progress=False)
    assert result.record["engine"]["offload"] == "none"


def test_streaming_needs_an_output_folder(tmp_path):
    src = save_tiny_folder("llama", tmp_path / "src")
    with pytest.raises(ValueError, match="--out"):
        prunelab.prune(model=str(src), method="magnitude", sparsity=0.5, device="cpu", offload="disk", progress=False)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_blockwise_perplexity_equals_the_full_forward(family):
    model = tiny_model(family)
    windows = random_ids(5, 24)
    full = perplexity(model, windows, batch_size=5, progress=False)
    blockwise = blockwise_perplexity(model, windows, batch_size=5, progress=False)
    spilled = blockwise_perplexity(model, windows, batch_size=5, progress=False, max_activation_memory=1)
    assert blockwise["nll"] == full["nll"] == spilled["nll"]  # same ops on the same batches: exactly equal


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_file_round_trips_rows(dtype, tmp_path):
    x = torch.randn(7, 5, 3).to(dtype)
    buf = ActivationBuffer((7, 5, 3), dtype, "disk", torch.device("cpu"), str(tmp_path))
    buf.write(0, x[:4])
    buf.write(4, x[4:])
    assert torch.equal(buf.read(0, 7), x) and torch.equal(buf.read(2, 5), x[2:5])
    path = Path(buf.path)
    buf.close()
    assert not path.exists()


def test_sizes_are_parsed_with_units():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size(1024) == 1024
    assert parse_size(None) is None and parse_size("auto") is None
    with pytest.raises(ValueError, match="memory size"):
        parse_size("lots")


def test_safetensors_writer_reads_back_exactly(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).bfloat16(),
               "empty": torch.zeros(0, 3)}
    write_safetensors(tmp_path / "x.safetensors", tensors)
    back = load_file(tmp_path / "x.safetensors")
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    lazy = SafetensorsTensors(tmp_path)
    assert all(torch.equal(lazy.read(k), tensors[k]) for k in tensors)
    # lazily given tensors (name -> (dtype, shape) and a reader) give the same file
    write_safetensors(tmp_path / "y.safetensors", {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()},
                      read=tensors.__getitem__)
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()


@pytest.mark.slow
def test_gguf_blocks_dequantize_to_the_bytes_of_a_full_load():
    """The embedded model's GGUF read one tensor at a time equals transformers' whole-file dequantization."""
    from prunelab.models.loading import _gguf_as_folder, resolve_source
    from prunelab.models.streaming import open_streaming

    source = resolve_source("smollm2-135m")
    folder = _gguf_as_folder(Path(source.location), source.identity["sha256"])
    reference = SafetensorsTensors(folder)
    _, _, _, blocks = open_streaming("smollm2-135m")
    names = [n for n in reference.entries if not n.startswith("model.layers.") or n.startswith("model.layers.0.")]
    assert set(blocks.tensors.tensors) == set(reference.entries)
    for name in names:
        assert torch.equal(blocks.tensors.read(name), reference.read(name)), name
