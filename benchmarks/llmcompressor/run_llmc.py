#!/usr/bin/env python
"""Baseline for comparison: prune a HF causal LM with llm-compressor's SparseGPT / Wanda modifiers on CPU,
using exactly the calibration token ids in --calib (LongTensor [n, seqlen]); all decoder Linears, not lm_head.
Measures the oneshot call's wall time and peak RSS and writes OUT/llmc_run.json. Run it in the venv that
compare.sh makes (llm-compressor pins its own transformers).

    $VENV/bin/python benchmarks/llmcompressor/run_llmc.py --model $HF_FOLDER \
        --calib calib.pt --method sparsegpt --sparsity 0.5 --mask-structure 0:0 --out OUT
"""
import argparse
import json
import os
import resource
import sys
import threading
import time

import torch


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="HF folder of the dense model")
    p.add_argument("--calib", required=True, help="torch file with LongTensor [n, seqlen]")
    p.add_argument("--method", choices=["sparsegpt", "wanda"], required=True)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--mask-structure", default="0:0", help="'0:0' unstructured or 'N:M' e.g. 2:4")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--dampening-frac", type=float, default=None,
                   help="SparseGPT only; default: library default")
    p.add_argument("--block-size", type=int, default=None, help="SparseGPT only; default: library default")
    return p.parse_args()


class PeakRSS:
    """Samples this process's RSS in a background thread (psutil)."""

    def __init__(self, interval=0.02):
        import psutil
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def targeted_linears(model):
    """All nn.Linear inside the decoder blocks (model.model.layers.*)."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n and "lm_head" not in n}


def check_nm(w, n, m):
    """True if every group of m consecutive input columns has >= n zeros (per row)."""
    if w.shape[1] % m:
        return False
    z = (w.reshape(w.shape[0], -1, m) == 0).sum(-1)
    return bool((z >= n).all())


def main():
    a = parse()
    if a.threads:
        torch.set_num_threads(a.threads)

    import transformers
    import llmcompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.args import DatasetArguments
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from llmcompressor.utils.pytorch.module import infer_sequential_targets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, device_map=None)
    model.eval()
    tok = AutoTokenizer.from_pretrained(a.model)

    ids = torch.load(a.calib)
    assert ids.dtype == torch.long and ids.dim() == 2, (ids.dtype, ids.shape)
    n, seqlen = ids.shape
    # Pre-tokenized dataset: llm-compressor returns a Dataset that has an `input_ids`
    # column as-is (datasets/utils.py:get_processed_dataset), no re-tokenization.
    ds = Dataset.from_dict({"input_ids": ids.tolist(),
                            "attention_mask": torch.ones_like(ids).tolist()})

    kw = dict(sparsity=a.sparsity, mask_structure=a.mask_structure,
              targets=["Linear"], ignore=["re:.*lm_head"])
    if a.method == "sparsegpt":
        if a.dampening_frac is not None:
            kw["dampening_frac"] = a.dampening_frac
        if a.block_size is not None:
            kw["block_size"] = a.block_size
        modifier = SparseGPTModifier(**kw)
    else:
        modifier = WandaPruningModifier(**kw)

    dargs = DatasetArguments()
    seq_targets = sorted(infer_sequential_targets(model, None))
    print("== modifier settings (library defaults unless set above):")
    print(json.dumps(modifier.model_dump(exclude_none=False), default=str, indent=1))
    print("== pipeline defaults: pipeline=%s (-> sequential for calibration modifiers), "
          "propagate_error=%s, sequential_targets=%s, batch_size=%s" %
          (dargs.pipeline, dargs.propagate_error, seq_targets, dargs.batch_size))
    print("== calib: n=%d seqlen=%d  torch threads=%d  cuda=%s" %
          (n, seqlen, torch.get_num_threads(), torch.cuda.is_available()))
    sys.stdout.flush()

    # Count how many calibration rows actually reach the model (sanity: must be n x seqlen).
    seen = {"batches": 0, "tokens": 0, "rows": set()}

    def count_hook(_m, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is not None:
            seen["batches"] += x.shape[0]
            seen["tokens"] += x.numel()
            seen["rows"].update(tuple(r) for r in x.tolist())
    h = model.model.embed_tokens.register_forward_pre_hook(
        lambda m, args: count_hook(m, args, {}))

    lin0 = targeted_linears(model)
    dense_zero = sum(int((m.weight == 0).sum()) for m in lin0.values()) / sum(
        m.weight.numel() for m in lin0.values())
    import psutil
    rss_before = psutil.Process().memory_info().rss
    with PeakRSS() as mon:
        t0 = time.perf_counter()
        model = oneshot(
            model=model,
            tokenizer=tok,
            recipe=[modifier],
            dataset=ds,
            num_calibration_samples=n,
            max_seq_length=seqlen,
            shuffle_calibration_samples=False,  # take the dataset in order, no subsampling
            batch_size=1,
        )
        secs = time.perf_counter() - t0
    h.remove()
    calib_exact = seen["rows"] == set(tuple(r) for r in ids.tolist())
    print("== calibration rows seen by the model == rows of --calib:", calib_exact)
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # sparsity measurement
    lin = targeted_linears(model)
    tot = zeros = 0
    per = {}
    nm_ok = True
    if a.mask_structure != "0:0":
        pn, pm = map(int, a.mask_structure.split(":"))
    for name, m in lin.items():
        w = m.weight.detach()
        z = int((w == 0).sum())
        tot += w.numel()
        zeros += z
        per[name] = z / w.numel()
        if a.mask_structure != "0:0":
            nm_ok &= check_nm(w, pn, pm)
    frac = zeros / tot
    lm_head_zero = float((model.lm_head.weight == 0).float().mean())
    print(f"== oneshot {secs:.2f}s; zeros in {len(lin)} targeted Linear: {frac:.6f}; "
          f"per-module min/max {min(per.values()):.4f}/{max(per.values()):.4f}; "
          f"lm_head zeros {lm_head_zero:.6f}; N:M ok {nm_ok}; "
          f"calib seqs seen by embed (calib + propagate passes) {seen['batches']}")

    os.makedirs(a.out, exist_ok=True)
    # save_compressed=False -> plain dense safetensors loadable by vanilla transformers
    model.save_pretrained(a.out, save_compressed=False)
    tok.save_pretrained(a.out)
    cfg_path = os.path.join(a.out, "config.json")
    cfg = json.load(open(cfg_path))
    if "quantization_config" in cfg:  # make it load as a plain model
        cfg.pop("quantization_config")
        json.dump(cfg, open(cfg_path, "w"), indent=2)

    md = modifier.model_dump()
    rec = {
        "method": a.method,
        "sparsity": a.sparsity,
        "mask_structure": a.mask_structure,
        "seconds_oneshot": secs,
        "peak_rss_bytes_during_oneshot": mon.peak,
        "rss_bytes_before_oneshot": rss_before,
        "peak_rss_bytes_process": maxrss_kb * 1024,
        "zero_fraction_targeted": frac,
        "zero_fraction_targeted_before": dense_zero,
        "zero_fraction_per_module": per,
        "n_targeted_modules": len(lin),
        "nm_structure_ok": nm_ok if a.mask_structure != "0:0" else None,
        "lm_head_zero_fraction": lm_head_zero,
        "calib_file": os.path.abspath(a.calib),
        "calib_shape": [n, seqlen],
        "calib_rows_used_exactly": calib_exact,
        "torch_threads": torch.get_num_threads(),
        "modifier_settings": {k: md.get(k) for k in
                              ["sparsity", "mask_structure", "dampening_frac", "block_size",
                               "preserve_sparsity_mask", "offload_hessians", "targets",
                               "ignore", "sparsity_profile"] if k in md},
        "pipeline": {"pipeline": dargs.pipeline, "propagate_error": dargs.propagate_error,
                     "sequential_targets": seq_targets, "batch_size": 1},
        "versions": {"llmcompressor": llmcompressor.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    json.dump(rec, open(os.path.join(a.out, "llmc_run.json"), "w"), indent=1)
    print(json.dumps({k: v for k, v in rec.items() if k != "zero_fraction_per_module"},
                     indent=1, default=str))


if __name__ == "__main__":
    main()
