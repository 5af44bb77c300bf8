#!/usr/bin/env bash
# One quiet slot, one after the other on the same machine: prunelab SparseGPT 50%, llm-compressor SparseGPT 50%
# (same model, same 64 x 512 calibration ids), prunelab ALPS 50%. Wall time and max RSS from /usr/bin/time -v;
# the tools' own timers are in OUT/*/prunelab.json (prune_seconds) and OUT/llmc/llmc_run.json (seconds_oneshot).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/llmc}
OUT=${OUT:-/tmp/timing}
HF_FOLDER=$(python benchmarks/llmcompressor/export_inputs.py "$WORK" | head -1)
rm -rf "$OUT"; mkdir -p "$OUT"
/usr/bin/time -v prunelab prune --method sparsegpt --sparsity 0.5 --out "$OUT/ours" --quiet > "$OUT/ours.log" 2>&1
/usr/bin/time -v "$WORK/venv/bin/python" benchmarks/llmcompressor/run_llmc.py --model "$HF_FOLDER" --calib "$WORK/calib.pt" \
  --method sparsegpt --sparsity 0.5 --mask-structure 0:0 --out "$OUT/llmc" > "$OUT/llmc.log" 2>&1
/usr/bin/time -v prunelab prune --method alps --sparsity 0.5 --out "$OUT/ours-alps" --quiet > "$OUT/ours-alps.log" 2>&1
grep -H -E "Elapsed|Maximum resident" "$OUT"/*.log
