"""Tiny random-weight models of every supported family, built from configs (no download)."""
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


TEXT = ("The quick brown fox jumps over the lazy dog. Pruning removes weights from a network while keeping its "
        "outputs close to the dense model. Calibration data gives the statistics of each layer's inputs. ") * 40


class CharTokenizer:
    """One id per character: enough to check the sampling convention exactly."""
    def __call__(self, text, return_tensors=None):
        ids = [ord(c) % 256 for c in text]

        class Enc:
            input_ids = torch.tensor([ids]) if return_tensors == "pt" else ids
        return Enc()


def tiny_tokenizer(vocab: int = 300):
    """A byte-level BPE tokenizer trained in memory on TEXT (no download)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=vocab, min_frequency=1, special_tokens=["<eos>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<eos>")
    return tok


def save_tiny_folder(name: str, path, vocab: int = 300):
    """A tiny model of family ``name`` with its tokenizer, saved as an ordinary HF folder."""
    tok = tiny_tokenizer(vocab)
    model = tiny_model(name, vocab=len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def assert_fp32_sums_close(got: torch.Tensor, terms_a: torch.Tensor, terms_b: torch.Tensor | None = None):
    """``got`` is a float32 ``aᵀb`` (or column sums of ``a`` when ``b`` is None) accumulated in any order or blocking.

    Compared with the float64 result under the worst-case rounding bound for a sum of n products,
    |error| ≤ γ_{n+1} · Σ|a_i b_i| with γ_k = k·u / (1 − k·u), u = 2⁻²⁴ (Higham, Accuracy and Stability of Numerical
    Algorithms, §3.1): a tolerance that holds on every CPU and BLAS, not one that one machine happened to give.
    """
    a = terms_a.double()
    exact = a.sum(0) if terms_b is None else a.T @ terms_b.double()
    magnitude = a.abs().sum(0) if terms_b is None else a.abs().T @ terms_b.double().abs()
    k = (a.shape[0] + 1) * 2.0 ** -24
    assert ((got.double() - exact).abs() <= k / (1 - k) * magnitude).all()
