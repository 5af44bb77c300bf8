"""Measured inference speed and memory of a model, next to the ideal speedup its weights allow.

One measurement = load the model, run one warm-up generation (not counted), then ``repeats`` timed
generations of ``new_tokens`` greedy tokens (argmax, KV cache, never stopping early) after a prompt of
``prompt_len`` seeded random token ids (timing does not depend on the text), ``batch`` prompts at once:

- time to first token (``ttft_s``): the prefill forward over the prompt plus the first token's argmax;
  only the last position's logits are computed (``logits_to_keep=1``), as a generation server does;
- prefill tokens/s = batch × prompt_len / ttft; decode tokens/s = batch × (new_tokens − 1) / the time of
  the remaining new_tokens − 1 single-token steps;
- medians over the repeats (with min/max and every value kept).

Peak RSS is only honest when each model has a process of its own (one model's memory would otherwise hide
the other's), so ``measure_isolated`` runs every model in a fresh child Python process
(``python -m prunelab.eval.speed``) and reads that child's high-water mark (VmHWM) at the end.

The ideal ratios come from ``inference_costs``: prefill FLOPs (2 per non-zero weight of the decoder blocks'
Linear layers per token, attention scores and values over the causal prompt, the LM head once for the last
position) and bytes read per decode step (every non-zero weight once, the whole LM head, which on tied models
is the embedding matrix, one embedding row, and the KV cache at the mean decode context). Norms, activations
and rotary embeddings are left out of the FLOPs (under 1% for the embedded model). Non-zero counts make the
ideal what a kernel that skips every zero could reach; the ``dense_*`` costs are what a dense kernel does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SPEED_KEYS = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_rss_bytes", "params",
              "nonzero_params", "disk_bytes")
TIMED_KEYS = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class SpeedSettings:
    batch: int = 1
    prompt_len: int = 512
    new_tokens: int = 128
    repeats: int = 5
    threads: int | None = None  # None: torch's default
    device: str = "cpu"
    dtype: str = "float32"
    kernel: str = "dense"  # see prunelab.kernels
    seed: int = 0
    cache: str = "dynamic"  # KV cache: "dynamic" (grown every step, transformers' default) | "static" (preallocated)

    def __post_init__(self):
        from ..kernels import KERNELS
        from ..models.loading import DTYPES

        for name in ("batch", "prompt_len", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"speed {name} must be >= 1, got {getattr(self, name)}")
        if self.new_tokens < 2:
            raise ValueError(f"new_tokens must be >= 2 (the first comes from the prefill), got {self.new_tokens}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.cache not in ("dynamic", "static"):
            raise ValueError(f"cache must be dynamic or static, got {self.cache!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel {self.kernel!r} is not one of {KERNELS}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available here; use --device cpu")
        if self.device.startswith("cuda") and self.kernel != "dense":
            raise ValueError(f"the {self.kernel} kernel is a CPU path; use --kernel dense on CUDA")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- costs ------------------------------------------------------------------------------------------------------
def inference_costs(model, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Parameter counts, prefill FLOPs and bytes read per decode step (see the module docstring)."""
    from ..models.adapters import ModelAdapter

    adapter = ModelAdapter(model)
    config = model.config
    prunable = {id(layer.weight): layer for _, layer in adapter.named_prunable_layers()}
    linear_nonzero = linear_total = 0
    for layer in prunable.values():
        weight = layer.weight
        linear_nonzero += int(torch.count_nonzero(weight))
        linear_total += weight.numel()
    block_params = {id(p) for p in adapter.blocks.parameters()}
    block_other = sum(p.numel() for p in adapter.blocks.parameters() if id(p) not in prunable)
    head = model.get_output_embeddings()
    head_params = {id(p) for p in head.parameters()}
    head_numel = sum(p.numel() for p in head.parameters())
    embedding_weights = {id(m.weight): m.embedding_dim for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    rest = 0  # final norm, projections outside the blocks: read once per step
    params = nonzero = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        params += p.numel()
        nonzero += int(torch.count_nonzero(p))
        if id(p) not in block_params and id(p) not in head_params and id(p) not in embedding_weights:
            rest += p.numel()
    embedding_row = sum(embedding_weights.values())  # one row of each embedding table per token
    element = next(model.parameters()).element_size()

    blocks = len(adapter.blocks)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    # causal prompt: position i attends to i + 1 keys; QKᵀ and AV are 2 FLOPs per multiply-add each
    attention = 4 * heads * head_dim * blocks * batch * prompt_len * (prompt_len + 1) // 2
    mean_context = prompt_len + new_tokens / 2  # decode step k reads prompt_len + k cached positions
    kv_bytes = 2 * blocks * kv_heads * head_dim * element * batch * mean_context

    def prefill(linear: int) -> int:
        return 2 * batch * prompt_len * linear + attention + 2 * batch * head_numel

    def decode(linear: int) -> float:
        return (linear + block_other + rest + head_numel + embedding_row) * element + kv_bytes

    return {"params": params, "nonzero_params": nonzero, "linear_params": linear_total,
            "linear_nonzero_params": linear_nonzero, "lm_head_params": head_numel,
            "prefill_flops": prefill(linear_nonzero), "decode_bytes_per_token": decode(linear_nonzero),
            "dense_prefill_flops": prefill(linear_total), "dense_decode_bytes_per_token": decode(linear_total),
            "lm_head_share_of_decode_bytes": head_numel * element / decode(linear_nonzero)}


def weight_files_bytes(folder: str | Path) -> int:
    """Bytes of the weight files in a model folder (safetensors, bin, gguf), as they are on disk."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


# -- one measurement, in this process ---------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_now_and_peak() -> tuple[int | None, int | None]:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        from ..record import peak_rss_bytes
        return None, peak_rss_bytes()


def greedy_timed(model, prompt: torch.Tensor, new_tokens: int, device: str, cache: str = "dynamic"
                 ) -> tuple[float, float, torch.Tensor]:
    """Prefill seconds, decode seconds and the (batch, new_tokens) greedy tokens; KV cache, no early stop.
    ``cache="static"``: a KV cache preallocated (before the clock starts) for prompt + new tokens."""
    from .generation import kv_cache_argument

    cache_name = kv_cache_argument(model)
    first = {}
    if cache == "static":
        from transformers import StaticCache
        first[cache_name] = StaticCache(config=model.config, max_cache_len=prompt.shape[1] + new_tokens)
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **first)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        prefilled = time.perf_counter()
        tokens = [token]
        for _ in range(new_tokens - 1):
            cache = getattr(out, cache_name, None)
            if cache is None:
                cache = out.get("cache", out.get("past_key_values"))
            out = model(input_ids=token, use_cache=True, **{cache_name: cache})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
        _sync(device)
        done = time.perf_counter()
    return prefilled - start, done - prefilled, torch.cat(tokens, dim=1).cpu()


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def measure(source: str, settings: SpeedSettings, progress: bool = False) -> dict:
    """Measure ``source`` (anything ``load_model`` accepts) in this process; see ``measure_isolated``."""
    from ..kernels import apply_kernel
    from ..models.loading import load_model, resolve_source

    if settings.threads:
        torch.set_num_threads(settings.threads)
    rss_before, _ = _rss_now_and_peak()
    if settings.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model, _tokenizer, resolved = load_model(source, settings.dtype)
    model.to(settings.device)
    costs = inference_costs(model, settings.batch, settings.prompt_len, settings.new_tokens)
    kernel_info = apply_kernel(model, settings.kernel, settings)
    load_seconds = time.perf_counter() - started
    generator = torch.Generator().manual_seed(settings.seed)
    prompt = torch.randint(0, model.config.vocab_size, (settings.batch, settings.prompt_len), generator=generator)
    prompt = prompt.to(settings.device)

    greedy_timed(model, prompt, settings.new_tokens, settings.device, settings.cache)  # warm-up (not counted)
    prefill_s, decode_s, tokens = [], [], None
    for repeat in range(settings.repeats):
        p, d, tokens = greedy_timed(model, prompt, settings.new_tokens, settings.device, settings.cache)
        prefill_s.append(p)
        decode_s.append(d)
        if progress:
            print(f"[prunelab] {source}: repeat {repeat + 1}/{settings.repeats}: prefill {p:.3f} s, decode {d:.3f} s",
                  file=sys.stderr, flush=True)
    _, peak_rss = _rss_now_and_peak()
    spread = {
        "prefill_tokens_per_s": _spread([settings.batch * settings.prompt_len / s for s in prefill_s]),
        "decode_tokens_per_s": _spread([settings.batch * (settings.new_tokens - 1) / s for s in decode_s]),
        "ttft_s": _spread(prefill_s),
    }
    location = resolved.location
    if resolved.kind in ("embedded", "gguf"):  # what is loaded is the dequantized cache folder
        from ..models.loading import _gguf_as_folder
        location = str(_gguf_as_folder(Path(resolved.location), resolved.identity["sha256"]))
    result = {key: spread[key]["median"] for key in TIMED_KEYS}
    result.update({
        "peak_rss_bytes": peak_rss,
        "params": costs["params"],
        "nonzero_params": costs["nonzero_params"],
        "disk_bytes": weight_files_bytes(location) if Path(location).is_dir() else None,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if settings.device.startswith("cuda") else None,
        "model": source,
        "model_source": {"kind": resolved.kind, **resolved.identity},
        "repeats": spread,
        "costs": costs,
        "kernel": kernel_info,
        "threads": torch.get_num_threads(),
        "rss_before_load_bytes": rss_before,
        "load_seconds": load_seconds,
        "generated_sha256": hashlib.sha256(tokens.numpy().tobytes()).hexdigest()[:16],
    })
    if resolved.kind in ("embedded", "gguf"):
        result["gguf_bytes"] = Path(resolved.location).stat().st_size
    return result


# -- one measurement per child process --------------------------------------------------------------------------
def measure_isolated(source: str, settings: SpeedSettings, progress: bool = False) -> dict:
    """``measure`` in a fresh Python process, so the peak RSS is this model's alone."""
    env = dict(os.environ)
    if settings.threads:  # OpenMP/MKL read these when torch is imported, before set_num_threads
        env.update({"OMP_NUM_THREADS": str(settings.threads), "MKL_NUM_THREADS": str(settings.threads)})
    with tempfile.TemporaryDirectory(prefix="prunelab-speed-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"source": source, "settings": settings.to_dict(), "progress": progress}))
        proc = subprocess.run([sys.executable, "-m", "prunelab.eval.speed", str(spec), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE, text=True)
        if proc.returncode != 0 or not out.is_file():
            detail = (proc.stderr or "")[-3000:] + (proc.stdout or "")[-1000:]
            raise RuntimeError(f"speed measurement of {source!r} failed in its child process "
                               f"(exit {proc.returncode}):\n{detail}")
        return json.loads(out.read_text())


def _child_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = measure(spec["source"], SpeedSettings(**spec["settings"]), progress=spec.get("progress", False))
    result["isolated"] = True
    Path(out_path).write_text(json.dumps(result))
    return 0


# -- a model against its baseline -------------------------------------------------------------------------------
def default_baseline(source: str) -> str | None:
    """The source model named in a prunelab folder's record, or None when there is no record."""
    from ..export import read_record

    if not Path(source).is_dir():
        return None
    record = read_record(source)
    origin = (record or {}).get("model_source") or {}
    kind = origin.get("kind")
    if kind == "embedded":
        return origin.get("name")
    if kind == "hub":
        return origin.get("hub_id")
    if kind in ("folder", "gguf"):
        return origin.get("location") or origin.get("path")
    return None


def compare(source: str, baseline: str | None, settings: SpeedSettings, *, isolate: bool = True,
            baseline_kernel: str = "dense", progress: bool = False) -> dict:
    """Measure ``source`` and (if given) ``baseline`` under the same settings; the baseline runs the dense
    kernel. Returns the model's keys at the top level, ``baseline`` holding the same keys, ``ratios``
    (model over baseline; for ttft baseline over model, so > 1 is faster) and ``ideal`` ratios."""
    from ..record import host_description, package_versions, timestamp

    run = measure_isolated if isolate else measure
    load_before = os.getloadavg()
    result = run(source, settings, progress)
    if baseline is not None:
        base_settings = dataclasses.replace(settings, kernel=baseline_kernel)
        base = run(baseline, base_settings, progress)
        result["baseline"] = base
        result["ratios"] = {
            "prefill_tokens_per_s": result["prefill_tokens_per_s"] / base["prefill_tokens_per_s"],
            "decode_tokens_per_s": result["decode_tokens_per_s"] / base["decode_tokens_per_s"],
            "ttft_s": base["ttft_s"] / result["ttft_s"],
            **{k: (result[k] / base[k] if result[k] is not None and base[k] else None)
               for k in ("peak_rss_bytes", "params", "nonzero_params", "disk_bytes")},
        }
        result["ideal"] = {
            "prefill_tokens_per_s": base["costs"]["prefill_flops"] / result["costs"]["prefill_flops"],
            "decode_tokens_per_s": base["costs"]["decode_bytes_per_token"] / result["costs"]["decode_bytes_per_token"],
            "dense_kernel_prefill_tokens_per_s":
                base["costs"]["dense_prefill_flops"] / result["costs"]["dense_prefill_flops"],
            "dense_kernel_decode_tokens_per_s":
                base["costs"]["dense_decode_bytes_per_token"] / result["costs"]["dense_decode_bytes_per_token"],
        }
        result["ideal"]["ttft_s"] = result["ideal"]["prefill_tokens_per_s"]
        result["of_ideal"] = {k: result["ratios"][k] / result["ideal"][k] for k in TIMED_KEYS}
    result.update({"settings": settings.to_dict(), "isolated": isolate, "loadavg_before": load_before,
                   "loadavg_after": os.getloadavg(), "versions": package_versions(), "host": host_description(),
                   "created": timestamp()})
    return result


def format_table(result: dict) -> str:
    """The measurements as a text table: model, baseline, ratio, ideal ratio and how much of it was reached."""
    base = result.get("baseline")
    mib = 2 ** 20
    rows = [("prefill tokens/s", "prefill_tokens_per_s", 1, ".1f"), ("decode tokens/s", "decode_tokens_per_s", 1, ".2f"),
            ("time to first token s", "ttft_s", 1, ".3f"), ("peak RSS MiB", "peak_rss_bytes", mib, ".0f"),
            ("params M", "params", 1e6, ".2f"), ("non-zero params M", "nonzero_params", 1e6, ".2f"),
            ("disk MiB", "disk_bytes", mib, ".1f")]
    if result.get("peak_gpu_bytes") is not None:
        rows.insert(4, ("peak GPU MiB", "peak_gpu_bytes", mib, ".0f"))

    def cell(entry, key, scale, fmt):
        value = entry.get(key)
        if value is None:
            return "-"
        text = format(value / scale, fmt)
        spread = entry.get("repeats", {}).get(key)
        if spread:
            text += f" [{format(spread['min'] / scale, fmt)}-{format(spread['max'] / scale, fmt)}]"
        return text

    header = f"{'':<22} {'model':>26}" + (f" {'baseline':>26} {'ratio':>7} {'ideal':>7} {'of ideal':>8}" if base else "")
    lines = [header]
    for label, key, scale, fmt in rows:
        line = f"{label:<22} {cell(result, key, scale, fmt):>26}"
        if base:
            ratio = result["ratios"].get(key)
            ideal = result.get("ideal", {}).get(key)
            line += (f" {cell(base, key, scale, fmt):>26} {format(ratio, '.3f') + 'x' if ratio else '-':>7}"
                     f" {format(ideal, '.3f') + 'x' if ideal else '':>7}"
                     f" {format(ratio / ideal, '.2f') if ideal and ratio else '':>8}")
        lines.append(line)
    settings = result["settings"]
    lines.append(f"batch {settings['batch']}, prompt {settings['prompt_len']}, {settings['new_tokens']} new tokens, "
                 f"{result['threads']} threads, {settings['device']}, {settings['dtype']}, {settings['cache']} KV cache, "
                 f"kernel {settings['kernel']}"
                 f" ({result['kernel']['summary']}); median [min-max] of {settings['repeats']} repeats after a warm-up; "
                 "ratios >1 = faster/larger; ideal: FLOPs (prefill) and bytes read per token (decode) from non-zero "
                 "weights")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_child_main(*sys.argv[1:3]))
