"""What a run record says about the environment, so any number can be traced and repeated."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import sys
import time

PACKAGES = ("prunelab", "torch", "transformers", "tokenizers", "safetensors", "gguf", "accelerate", "numpy")


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> dict:
    """The CPU's name and whether it multiplies bfloat16 natively (timings differ several-fold between hosts)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {}
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"cpu_model": name, "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"})}


def host_description() -> dict:
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), **_cpu_model()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
