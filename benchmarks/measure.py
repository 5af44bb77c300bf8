"""What the benchmark scripts measure about a process and the host: load average, and a command's wall time and
peak RSS as the kernel reports them through GNU time (`/usr/bin/time -v`), i.e. for that one process tree, not a
figure the measured tool computes about itself; the CPU a figure was measured on; the engine's matmul rates
on its kernel; and writing a results page.

Scripts in sub-folders import it with `sys.path.insert(0, str(Path(__file__).resolve().parents[1]))`.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

TIME = "/usr/bin/time"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, e.g. '1.92 1.98 1.97' (how busy the machine was around a run)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parse_time_v(text: str) -> dict:
    """Maximum RSS (bytes) and elapsed wall time (seconds) from GNU time's verbose report; None where absent."""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = None
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        seconds = sum(p * 60 ** (len(parts) - 1 - k) for k, p in enumerate(parts))
    return {"max_rss_bytes": int(rss.group(1)) * 1024 if rss else None, "wall_seconds": seconds}


def run_measured(cmd: list[str]) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `cmd` under GNU time (output captured as text); returns the process and parse_time_v of its report."""
    if not Path(TIME).is_file():
        raise SystemExit(f"{TIME} not found: install GNU time (apt-get install time) to measure peak memory")
    proc = subprocess.run([TIME, "-v", *cmd], capture_output=True, text=True)
    return proc, parse_time_v(proc.stderr)


def cpu_description() -> str:
    """The CPU's model and the vector extensions torch dispatches to: another instruction set rounds matmuls
    differently, so float32 figures name it."""
    import torch
    from prunelab.record import host_description

    host = host_description()
    generation = f", family {host['cpu_family']} model {host['cpu_model_number']}" if host.get("cpu_family") else ""
    return f"{host['cpu_model']} ({torch.backends.cpu.get_cpu_capability()}{generation})"


def git_commit() -> str | None:
    """The commit of the code being measured, with "+dirty" when the tree has uncommitted changes outside
    benchmarks/results (a benchmark rewriting its own results file between rows changes no code)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def linear_gflops(m: int, k: int, n: int, dtype=None, repeat: int = 5, kernel: str | None = None) -> float:
    """Measured rate of an (m x k) Linear to n outputs, the shape of a block's Linear on a batch of tokens, on the
    kernel the engine used (``kernel``: its record's engine.cpu_linear; None: torch's own)."""
    import torch
    from prunelab.engine.linear import linear_kernel

    dtype = dtype or torch.float32
    layer = torch.nn.Linear(k, n, bias=False).to(dtype)
    a = torch.randn(m, k).to(dtype)
    with torch.no_grad(), linear_kernel(layer, kernel):
        layer(a)
        start = time.perf_counter()
        for _ in range(repeat):
            layer(a)
        seconds = time.perf_counter() - start
    return 2 * m * k * n * repeat / seconds / 1e9


def gram_gflops(tokens: int, d: int, repeat: int = 5, kernel: str | None = None) -> float:
    """Measured rate of XᵀX accumulation as the engine does it, on its kernel (counted as 2·tokens·d² FLOPs)."""
    import torch
    from prunelab.stats import StatsAccumulator

    x = torch.randn(1, tokens, d)
    acc = StatsAccumulator(d, frozenset({"hessian"}), "cpu", kernel)
    acc.add(x)
    start = time.perf_counter()
    for _ in range(repeat):
        acc.add(x)
    return 2 * tokens * d * d * repeat / (time.perf_counter() - start) / 1e9


def write_markdown(path: Path, lines: list[str]) -> None:
    """Write a results page and echo it to the terminal."""
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
