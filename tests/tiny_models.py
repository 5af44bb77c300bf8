"""Tiny random-weight models of every supported family (defined in prunelab.models.tiny, which the
check-algorithm gate also uses), and a tiny tokenizer, built without download."""
import torch

from prunelab.models.tiny import CONFIGS, FAMILY_NAMES, VOCAB, random_ids, tiny_model  # noqa: F401

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
