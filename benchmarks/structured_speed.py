"""Benchmark: measured speed of structurally pruned models against the ideal ratio (resumable).

Each model is pruned (calibration 64 x 512 C4, seed 0) into --work and measured by `prunelab speed` against the
dense embedded model in the same invocation: 2 threads, batch 1, prompt 512, 128 new tokens, 5 timed repeats
after a warm-up, each model in its own process. The ideal ratios are `prunelab speed`'s (prefill FLOPs, bytes
read per decode step including the LM head and KV cache). Targets (issue 15): prefill >= 0.9x and decode >= 0.85x
of the ideal ratio for channels+heads at 30% and 50% and depth pruning of 4 and 8 blocks.

    python benchmarks/structured_speed.py                       # writes benchmarks/results/structured_speed.*
    python benchmarks/structured_speed.py --runs obs+refit+round64@0.3 --name structured_speed_extra

Run labels as in benchmarks/structured.py. Finished rows are kept in the JSON and skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from structured import CALIB, RESULTS, loadavg, parse_run  # noqa: E402

DEFAULT_RUNS = ("obs+refit@0.3", "obs+refit@0.5", "block-influence@4b:blocks", "block-influence@8b:blocks",
                "obs+refit+round64@0.3", "obs+refit+round64@0.5")
SPEED = ["--threads", "2", "--batch", "1", "--prompt-len", "512", "--new-tokens", "128", "--repeats", "5"]
TARGET = {"prefill_tokens_per_s": 0.9, "decode_tokens_per_s": 0.85}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS))
    parser.add_argument("--name", default="structured_speed")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--work", default="/tmp/prunelab-structured-speed", help="where pruned models are kept")
    args = parser.parse_args()
    runs = args.runs.split(",")
    for label in runs:
        parse_run(label)
    path = RESULTS / f"{args.name}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for label in runs:
        if label in data["rows"]:
            continue
        flags, structure = parse_run(label)
        out = work / label.replace("@", "_at_").replace(":", "_").replace("+", "_")
        if not (out / "prunelab.json").is_file():
            subprocess.run([sys.executable, "-m", "prunelab.cli", "prune", "--model", args.model, *flags, *CALIB,
                            "--out", str(out), "--force", "--quiet"], check=True)
        record = json.loads((out / "prunelab.json").read_text())
        speed_json = work / f"{out.name}.speed.json"
        load_start = loadavg()
        cmd = [sys.executable, "-m", "prunelab.cli", "speed", str(out), "--baseline", args.model, *SPEED,
               "--json", str(speed_json)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        result = json.loads(speed_json.read_text())
        data["rows"][label] = {"structure": structure, "achieved": record["summary"]["achieved_sparsity"],
                               "config": record["structured"].get("config"), "speed": result,
                               "loadavg": [load_start, loadavg()]}
        save(path, data, args)
    save(path, data, args)
    return 0


def save(path: Path, data: dict, args) -> None:
    from prunelab.record import host_description, package_versions

    data["meta"] = {"settings": " ".join(SPEED), "model": args.model, "versions": package_versions(),
                    "host": host_description(), "date": time.strftime("%Y-%m-%d %H:%M")}
    path.write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# {args.name}: measured speed of structured pruning vs the ideal ratio", "",
             f"`prunelab speed` {data['meta']['settings']}, float32 on {data['meta']['host']['cpu_count']} CPUs, "
             f"each model in its own process, the dense {args.model} measured in the same invocation. Ideal: prefill "
             "FLOPs and bytes read per decode step (incl. LM head and KV cache). Target: prefill >= 0.9 and decode "
             ">= 0.85 of the ideal ratio.", "",
             "| run | achieved | params (M) | prefill tok/s (dense) | prefill ratio / ideal = of ideal | decode tok/s "
             "(dense) | decode ratio / ideal = of ideal | loadavg start/end |", "|---|---|---|---|---|---|---|---|"]
    for label, r in data["rows"].items():
        s = r["speed"]
        cells = []
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            of = s["of_ideal"][key]
            mark = "" if of >= TARGET[key] else " (below target)"
            cells.append(f"{s[key]:.1f} ({s['baseline'][key]:.1f})")
            cells.append(f"{s['ratios'][key]:.3f} / {s['ideal'][key]:.3f} = {of:.2f}{mark}")
        lines.append(f"| {label} | {r['achieved']:.4f} | {s['params'] / 1e6:.1f} | " + " | ".join(cells)
                     + f" | {'/'.join(r['loadavg'])} |")
    labels = ",".join(data["rows"])
    lines += ["", f"Reproduce: `python benchmarks/structured_speed.py --name {args.name} --runs {labels}` "
              f"({data['meta']['date']}). Timings on a shared machine: see the load averages.", ""]
    path.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
