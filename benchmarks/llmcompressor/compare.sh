#!/usr/bin/env bash
# prunelab vs llm-compressor (SparseGPTModifier, WandaPruningModifier) on the same model, the same calibration
# token ids and the same evaluation (prunelab eval: WikiText-2 test, seqlen 512, first 128 windows).
# llm-compressor lives in its own virtual environment (it pins its own transformers); torch stays 2.13.0 CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/llmc}
VENV=$WORK/venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q torch==2.13.0 llmcompressor==0.14.0.1 accelerate psutil
fi
HF_FOLDER=$(python benchmarks/llmcompressor/export_inputs.py "$WORK" | head -1)
mkdir -p "$WORK/results"
for method in sparsegpt wanda; do
  for level in 0.5 0.7 2:4; do
    tag=$method-${level/:/of}
    if [ "$level" = "2:4" ]; then args="--sparsity 0.5 --mask-structure 2:4"; else args="--sparsity $level --mask-structure 0:0"; fi
    "$VENV/bin/python" benchmarks/llmcompressor/run_llmc.py --model "$HF_FOLDER" --calib "$WORK/calib.pt" \
      --method $method $args --out "$WORK/out_$tag" > "$WORK/results/$tag.log" 2>&1
    prunelab eval "$WORK/out_$tag" --data wikitext2 --split test --seqlen 512 --max-windows 128 \
      --json "$WORK/results/$tag-eval.json" --quiet
    cp "$WORK/out_$tag/llmc_run.json" "$WORK/results/$tag-run.json"
  done
done
