"""What the scripts comparing prunelab with llm-compressor share: where llm-compressor's venv and the exported
inputs live ($WORK, made once by compare.sh), the command that prunes with it, and the one evaluation both tools'
outputs get (`prunelab eval`, the protocol of benchmarks/core_methods.py).

Scripts elsewhere import it with `sys.path.insert(0, str(ROOT / "benchmarks" / "llmcompressor"))`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("WORK", "/tmp/llmc"))
EVAL = ["--data", "wikitext2", "--split", "test", "--seqlen", "512", "--max-windows", "128"]


def venv_python() -> Path:
    """llm-compressor's interpreter (it pins its own transformers, so it lives in a venv of its own)."""
    python = WORK / "venv/bin/python"
    if not python.exists():
        raise SystemExit(f"no llm-compressor venv in {WORK}: run benchmarks/llmcompressor/compare.sh once (or set WORK)")
    return python


def exported_model() -> str:
    """The dense embedded model as an HF folder (and WORK/calib.pt, the protocol's calibration ids)."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/llmcompressor/export_inputs.py"), str(WORK)],
                          check=True, capture_output=True, text=True).stdout.splitlines()[0]


def llmc_prune_command(folder: str, calib: Path, method: str, out: Path, *extra: str) -> list[str]:
    """run_llmc.py in llm-compressor's venv: ``method`` at 50% unstructured on the ids in ``calib``."""
    return [str(venv_python()), str(ROOT / "benchmarks/llmcompressor/run_llmc.py"), "--model", folder, "--calib",
            str(calib), "--method", method, "--sparsity", "0.5", "--mask-structure", "0:0", *extra, "--out", str(out)]


def evaluate(folder: Path, json_path: Path) -> float:
    """`prunelab eval` of a pruned folder on the protocol; its WikiText-2 perplexity (also kept in ``json_path``)."""
    subprocess.run([sys.executable, "-m", "prunelab.cli", "eval", str(folder), *EVAL, "--json", str(json_path),
                    "--quiet"], check=True, capture_output=True)
    return json.loads(json_path.read_text())["ppl"]
