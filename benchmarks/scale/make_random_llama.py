"""Write a random-initialised Llama as fp32 safetensors shards without ever holding the model in memory.

One shard per decoder block plus one for the embeddings, final norm and LM head, each tensor drawn from its own
seeded generator (Linear and embedding weights N(0, 0.02) as transformers initialises Llama, norms 1), written
one tensor at a time. The tokenizer is the embedded model's (its vocabulary sets the model's), so the usual
calibration and evaluation corpora tokenize as for SmolLM2.

    python benchmarks/scale/make_random_llama.py --preset 1.1b --out /work/big/llama-1.1b
    python benchmarks/scale/make_random_llama.py --preset 7b --out /work/big/llama-7b
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

PRESETS = {  # with the embedded tokenizer's 49152-token vocabulary
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4),  # TinyLlama's blocks: 1.17B parameters, 4.7 GB in fp32
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=33, num_attention_heads=32,
               num_key_value_heads=32),  # Llama-2-7B's blocks, one more of them: 7.08B parameters, 28.3 GB in fp32
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}


def tensor_specs(config) -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    """Shard name -> [(tensor name, shape, init)] for a Llama config, in the order HF names them."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shards = {}
    total = n + 1
    for b in range(n):
        p = f"model.layers.{b}."
        shards[f"model-{b + 1:05d}-of-{total:05d}.safetensors"] = [
            (p + "input_layernorm.weight", (h,), "ones"), (p + "post_attention_layernorm.weight", (h,), "ones"),
            (p + "self_attn.q_proj.weight", (h, h), "normal"), (p + "self_attn.k_proj.weight", (kv, h), "normal"),
            (p + "self_attn.v_proj.weight", (kv, h), "normal"), (p + "self_attn.o_proj.weight", (h, h), "normal"),
            (p + "mlp.gate_proj.weight", (i, h), "normal"), (p + "mlp.up_proj.weight", (i, h), "normal"),
            (p + "mlp.down_proj.weight", (h, i), "normal")]
    shards[f"model-{total:05d}-of-{total:05d}.safetensors"] = [
        ("model.embed_tokens.weight", (config.vocab_size, h), "normal"), ("model.norm.weight", (h,), "ones"),
        ("lm_head.weight", (config.vocab_size, h), "normal")]
    return shards


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import LlamaConfig

    from prunelab.models.loading import load_config_and_tokenizer
    from prunelab.models.streaming import write_safetensors

    _, tokenizer, _ = load_config_and_tokenizer("smollm2-135m")
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, dtype="float32",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         **PRESETS[args.preset])
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it first")
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    weight_map, total_bytes, params = {}, 0, 0
    for k, (shard, specs) in enumerate(tensor_specs(config).items()):
        def draw(name, _specs=dict((s[0], s) for s in specs), _k=k):
            _, shape, init = _specs[name]
            if init == "ones":
                return torch.ones(shape)
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + _k * 1009 + sorted(_specs).index(name))
            return torch.empty(shape).normal_(0.0, config.initializer_range, generator=g)

        total_bytes += write_safetensors(staging / shard, {n: (torch.float32, s) for n, s, _ in specs}, read=draw)
        for name, shape, _ in specs:
            weight_map[name] = shard
            params += torch.Size(shape).numel()
        print(f"{shard}: {total_bytes / 1e9:.2f} GB written, {time.perf_counter() - started:.0f} s", flush=True)
    (staging / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=2) + "\n")
    config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(args.out)
    print(json.dumps({"out": str(args.out), "params": params, "bytes": total_bytes,
                      "seconds": time.perf_counter() - started}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
