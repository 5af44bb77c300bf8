"""Table of prunelab vs llm-compressor from compare.sh's results and benchmarks/results/core_methods.json.

    python benchmarks/llmcompressor/summarize.py /tmp/llmc/results   # writes benchmarks/results/llmcompressor.md
"""
import json
import sys
from pathlib import Path

results = Path(sys.argv[1])
root = Path(__file__).resolve().parents[1] / "results"
ours = {(r["method"], r["level"]): r for r in json.loads((root / "core_methods.json").read_text())["rows"]}
lines = ["# prunelab vs llm-compressor on the embedded model", "",
         "Same dense model (prunelab's dequantized GGUF folder), the same 64 x 512 C4 calibration token ids "
         "(seed 0), the same evaluation (`prunelab eval`, WikiText-2 test, seqlen 512, first 128 windows). "
         "llm-compressor runs its SparseGPTModifier / WandaPruningModifier with library defaults on all decoder "
         "Linear layers (lm_head ignored), in its own venv (`compare.sh`).", "",
         "| method | level | prunelab ppl | llm-compressor ppl | llm-compressor sparsity |", "|---|---|---|---|---|"]
for method in ("sparsegpt", "wanda"):
    for level in ("0.5", "0.7", "2:4"):
        tag = f"{method}-{level.replace(':', 'of')}"
        ev, run = results / f"{tag}-eval.json", results / f"{tag}-run.json"
        if not ev.is_file():
            lines.append(f"| {method} | {level} | {ours[(method, level)]['ppl']:.3f} | not run | |")
            continue
        theirs = json.loads(ev.read_text())
        info = json.loads(run.read_text())
        lines.append(f"| {method} | {level} | {ours[(method, level)]['ppl']:.3f} | {theirs['ppl']:.3f} | "
                     f"{info['zero_fraction_targeted']:.4f} |")
lines += ["", "Reproduce: `bash benchmarks/llmcompressor/compare.sh && python benchmarks/llmcompressor/summarize.py /tmp/llmc/results`", ""]
(root / "llmcompressor.md").write_text("\n".join(lines))
print("\n".join(lines))
