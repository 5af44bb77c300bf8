"""Write what llm-compressor needs to see exactly prunelab's inputs: the dense embedded model as an HF folder
(prunelab's dequantized GGUF cache) and prunelab's calibration token ids (64 x 512 from C4, seed 0).

    python benchmarks/llmcompressor/export_inputs.py OUTDIR   # writes OUTDIR/calib.pt, prints the model folder
"""
import sys
from pathlib import Path

import torch

from prunelab.api import calibration_data
from prunelab.config import CalibrationConfig
from prunelab.models.loading import _gguf_as_folder, resolve_source, load_model

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
source = resolve_source("smollm2-135m")
folder = _gguf_as_folder(Path(source.location), source.identity["sha256"])
_, tokenizer, _ = load_model("smollm2-135m")
segments, info = calibration_data(tokenizer, CalibrationConfig("c4", "train", 64, 512, 0))
torch.save(segments, out / "calib.pt")
print(folder)
print("calibration tokens sha256", info["tokens_sha256"])
