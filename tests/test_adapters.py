import pytest
import torch

from prunelab.models import ModelAdapter
from tiny_models import FAMILY_NAMES, random_ids, tiny_model


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_block_replay_reproduces_full_model_logits(family):
    model = tiny_model(family)
    adapter = ModelAdapter(model)
    ids = random_ids(3, 16)
    calls = adapter.record_block_calls(ids)
    hidden = adapter.block_inputs(ids)
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        outs = []
        for row in hidden:
            h = row[None]
            for block, call in zip(adapter.blocks, calls):
                h = adapter.run_block(block, h, call)
            outs.append(adapter.head(h))
        got = torch.cat(outs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_prunable_layers_are_the_block_linears(family):
    model = tiny_model(family)
    adapter = ModelAdapter(model)
    names = list(adapter.named_prunable_layers())
    assert names, "no prunable layers found"
    total = sum(adapter.get_weight(layer).numel() for _, layer in names)
    embed = model.get_input_embeddings().weight
    # Embeddings and the LM head are never among them.
    assert all(layer.weight is not embed for _, layer in names)
    assert all(layer is not model.get_output_embeddings() for _, layer in names)
    for _, layer in names:
        w = adapter.get_weight(layer)
        assert w.shape[1] == layer.in_features if hasattr(layer, "in_features") else w.shape[1] == layer.weight.shape[0]
    assert total > 0


def test_unsupported_family_is_rejected_with_the_list():
    import transformers as tf
    model = tf.AutoModelForCausalLM.from_config(tf.BloomConfig(hidden_size=16, n_layer=1, n_head=2, vocab_size=32))
    with pytest.raises(ValueError, match="supported: llama"):
        ModelAdapter(model)
