"""Checkpoint sizes per format and level, read from the files prunelab writes (the embedded model).

For each level (unstructured 50/70/90% and 2:4, 4:8, pruned with magnitude: sizes depend only on how many weights
are kept, not on which) the pruned model is saved as dense (zeros stored), bitmask and, for N:M, nm, in float32
and bfloat16 (``prunelab export --dtype bfloat16``). From each safetensors header: the bytes of the pruned layers'
tensors (dense weights; or values + bitmask / indices), the whole file, and the ratio to the dense checkpoint's
pruned-layer bytes. Each folder is also loaded back with ``prunelab.load`` and compared tensor by tensor with the
dense one (the round trip must be exact). Rows are kept in the JSON as they finish; a rerun skips them.

    flock /tmp/prunelab-heavy.lock python benchmarks/checkpoint_sizes.py [--work /tmp/sizes]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

LEVELS = ("0.5", "0.7", "0.9", "2:4", "4:8")


def layer_bytes(folder: Path, compressible: set[str]) -> tuple[int, int]:
    """(bytes of the pruned layers' tensors, bytes of every tensor) from the folder's safetensors headers."""
    from prunelab.formats import tensor_bytes

    layers = total = 0
    for f in folder.glob("*.safetensors"):
        for name, size in tensor_bytes(f).items():
            total += size
            base = name.rsplit(".", 1)[0] if name.endswith((".values", ".bitmask", ".indices")) else name
            layers += size if base in compressible else 0
    return layers, total


def main(argv=None) -> int:
    import prunelab
    from prunelab.export import save_pruned
    from prunelab.formats import prunable_weight_names

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/prunelab-sizes", help="scratch folder for the checkpoints")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "checkpoint_sizes"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_json = Path(args.out + ".json")
    saved = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": []}
    rows = saved["rows"]
    done = {(r["level"], r["dtype"], r["format"]) for r in rows}
    saved.setdefault("loadavg", []).append(os.getloadavg())
    for level in LEVELS:
        nm = ":" in level
        formats = ("dense", "bitmask", "nm") if nm else ("dense", "bitmask")
        if all((level, d, f) in done for d in ("float32", "bfloat16") for f in formats):
            continue
        kwargs = {"pattern": level} if nm else {"sparsity": float(level)}
        result = prunelab.prune(method="magnitude", device="cpu", progress=False, **kwargs)
        model, tokenizer = result.model, result.tokenizer
        compressible = set(prunable_weight_names(model))
        for dtype in ("float32", "bfloat16"):
            model = model.to(getattr(torch, dtype))
            folders = {}
            for fmt in formats:
                folder = work / f"{level.replace(':', 'of')}-{dtype}-{fmt}"
                folders[fmt] = save_pruned(model, tokenizer, folder, result.record, force=True, save_format=fmt,
                                           nm=tuple(int(x) for x in level.split(":")) if fmt == "nm" else None)
            dense_layers, dense_total = layer_bytes(folders["dense"], compressible)
            reference = prunelab.load(folders["dense"], dtype=dtype)[0].state_dict()
            for fmt, folder in folders.items():
                layers, total = layer_bytes(folder, compressible)
                loaded = prunelab.load(folder, dtype=dtype)[0].state_dict()
                exact = loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)
                row = {"level": level, "dtype": dtype, "format": fmt, "layer_bytes": layers, "file_tensor_bytes": total,
                       "files_on_disk_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
                       "layer_ratio": layers / dense_layers, "file_ratio": total / dense_total,
                       "sparsity": result.record["summary"]["sparsity"], "round_trip_exact": exact}
                rows = [r for r in rows if (r["level"], r["dtype"], r["format"]) != (level, dtype, fmt)] + [row]
                print(json.dumps(row), flush=True)
            for folder in folders.values():
                shutil.rmtree(folder)
        out_json.write_text(json.dumps({**saved, "rows": rows}, indent=1))
    saved["rows"] = rows
    saved["loadavg"][-1] = [saved["loadavg"][-1], os.getloadavg()]
    out_json.write_text(json.dumps(saved, indent=1))
    Path(args.out + ".md").write_text(render(rows))
    print(render(rows))
    return 0


def render(rows) -> str:
    lines = ["# Checkpoint sizes per format (embedded model, measured from the files)", "",
             "Command: `flock /tmp/prunelab-heavy.lock python benchmarks/checkpoint_sizes.py`. Pruned with magnitude "
             "(sizes depend only on how many weights are kept). Pruned layers = the decoder blocks' Linear weights "
             "(106.2M of the 134.5M parameters; the rest, mostly the tied 28.3M embedding, is stored as it is in every "
             "format). Bytes are each tensor's data in the safetensors file; 'file' adds the unchanged tensors; "
             "ratios are to the dense checkpoint of the same dtype. Round trip: `prunelab.load` gives every tensor "
             "of the dense checkpoint back exactly.", "",
             "| level | dtype | format | pruned layers MiB | ratio to dense layers | whole file MiB | ratio to dense file | round trip exact |",
             "|---|---|---|---|---|---|---|---|"]
    order = {lv: i for i, lv in enumerate(LEVELS)}
    for r in sorted(rows, key=lambda r: (order[r["level"]], r["dtype"] != "float32", ("dense", "bitmask", "nm").index(r["format"]))):
        lines.append(f"| {r['level']} | {r['dtype']} | {r['format']} | {r['layer_bytes'] / 2**20:.1f} | "
                     f"{r['layer_ratio']:.4f}x | {r['files_on_disk_bytes'] / 2**20:.1f} | {r['file_ratio']:.4f}x | "
                     f"{'yes' if r['round_trip_exact'] else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
