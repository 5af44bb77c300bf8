"""Tiny random-weight models of every supported family, built from configs (no download).

Used by the ``check-algorithm`` gate (a plug-in must run on every family) and by the tests."""
import torch
import transformers as tf

VOCAB = 128

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128),
    "mistral": lambda: tf.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
                                        sliding_window=8),
    "qwen2": lambda: tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128),
    "qwen3": lambda: tf.Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, max_position_embeddings=128),
    "smollm3": lambda: tf.SmolLM3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                        max_position_embeddings=128, no_rope_layer_interval=2, pad_token_id=0),
    "phi3": lambda: tf.Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
                                  pad_token_id=0),
    "gemma": lambda: tf.GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, max_position_embeddings=128),
    "gemma2": lambda: tf.Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, max_position_embeddings=128,
                                      sliding_window=6, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3_text": lambda: tf.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                               vocab_size=VOCAB, max_position_embeddings=128, sliding_window=6,
                                               sliding_window_pattern=2),
    "opt": lambda: tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=VOCAB, max_position_embeddings=128, word_embed_proj_dim=32),
    "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=128),
}
FAMILY_NAMES = sorted(CONFIGS)


def tiny_model(name: str, seed: int = 0, vocab: int = VOCAB):
    torch.manual_seed(seed)
    config = CONFIGS[name]()
    config.vocab_size = vocab
    config._attn_implementation = "eager" if name.startswith("gemma") else "sdpa"
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.config.use_cache = False
    return model


def random_ids(n: int, seqlen: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seqlen), generator=g)
