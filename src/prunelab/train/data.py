"""Fine-tuning data: a corpus split into training and held-out documents, packed into fixed-length windows.

Documents (the corpus's rows) are split once by a seeded draw, so the held-out loss is measured on text the
model never trains on; the split is recorded. A corpus that is one running text (a .txt file, WikiText-2, PTB)
is split by position instead: its last ``heldout_fraction`` of tokens is held out. Each side is tokenized, every
document followed by the end-of-sequence token, concatenated and cut into windows of ``seqlen`` (tail dropped).

Batches are a pure function of (seed, step): sample i = step·batch + j reads window perm_e[i mod n] of epoch
e = i // n, perm_e a seeded permutation. So a resumed run needs only the step number to continue on exactly the
same data, and runs with the same seed see the same batches.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ..data import load_corpus, tensor_sha256


@dataclass
class TrainingData:
    train: torch.Tensor  # (windows, seqlen) token ids
    heldout: torch.Tensor  # (windows, seqlen)
    seed: int
    identity: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _perms: dict = field(default_factory=dict, repr=False)

    def batch(self, step: int, size: int) -> torch.Tensor:
        rows = []
        n = self.train.shape[0]
        for i in range(step * size, (step + 1) * size):
            epoch, pos = divmod(i, n)
            if epoch not in self._perms:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perms = {epoch: torch.randperm(n, generator=g)}  # only the current epoch is kept
            rows.append(self.train[self._perms[epoch][pos]])
        return torch.stack(rows)

    @property
    def epoch_tokens(self) -> int:
        return self.train.numel()


def _pack(tokenizer, texts: list[str], seqlen: int, eos: int | None) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text).input_ids)
        if eos is not None:
            ids.append(eos)
    count = len(ids) // seqlen
    return torch.tensor(ids[: count * seqlen], dtype=torch.long).view(count, seqlen)


def training_data(tokenizer, corpus: str = "c4", split: str | None = None, seqlen: int = 512,
                  heldout_fraction: float = 0.05, heldout_windows: int | None = 16, seed: int = 0,
                  split_seed: int = 0) -> TrainingData:
    """Load ``corpus`` (anything ``load_corpus`` reads), split it into train / held-out and pack both."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    split = split or "train"  # never an evaluation split unless asked for
    data = load_corpus(corpus, split)
    eos = tokenizer.eos_token_id
    rows = [r for r in data.rows if r.strip()]
    if data.stream or len(rows) < 2:
        stream = _pack(tokenizer, [data.joined()], 1, None).flatten()
        cut = int(stream.numel() * (1 - heldout_fraction))
        train = stream[:cut][: cut // seqlen * seqlen].view(-1, seqlen)
        held = stream[cut:][: (stream.numel() - cut) // seqlen * seqlen].view(-1, seqlen)
        split_info = {"by": "position", "train_tokens": [0, cut], "heldout_tokens": [cut, int(stream.numel())]}
    else:
        n_held = max(1, round(len(rows) * heldout_fraction))
        held_idx = sorted(random.Random(split_seed).sample(range(len(rows)), n_held))
        held_set = set(held_idx)
        train = _pack(tokenizer, [r for i, r in enumerate(rows) if i not in held_set], seqlen, eos)
        held = _pack(tokenizer, [rows[i] for i in held_idx], seqlen, eos)
        split_info = {"by": "document", "documents": len(rows), "split_seed": split_seed,
                      "heldout_documents": held_idx, "train_documents": len(rows) - n_held,
                      "note": "indices into the corpus's non-empty rows, in file order"}
    if heldout_windows is not None:
        held = held[:heldout_windows]
    if train.shape[0] < 1 or held.shape[0] < 1:
        raise ValueError(f"{corpus}/{split} is too small for windows of {seqlen} tokens after holding out "
                         f"{heldout_fraction:g} of it ({train.shape[0]} train and {held.shape[0]} held-out windows); "
                         "use a shorter --seqlen or a larger corpus")
    # where the file was read from is provenance, not identity (its checksum decides the data)
    identity = {"corpus": corpus, "split": data.split, "data_sha256": data.sha256,
                "seqlen": seqlen, "eos_token_id": eos, "split_rule": split_info,
                "heldout_fraction": heldout_fraction, "train_windows": int(train.shape[0]),
                "heldout_windows": int(held.shape[0]), "train_tokens_sha256": tensor_sha256(train),
                "heldout_tokens_sha256": tensor_sha256(held), "order_seed": seed}
    return TrainingData(train, held, seed, identity, provenance=dict(data.provenance or {"source": data.source}))


@torch.no_grad()
def heldout_loss(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """Mean token negative log-likelihood over the held-out windows (no context carried between windows)."""
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = model.get_input_embeddings().weight.device
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"))
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count
