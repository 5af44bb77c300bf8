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
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = set(fields.get("flags", "").split())
    # virtual machines often name the CPU only "AMD EPYC": family and model tell its generation (AMD 25: Zen 3/4; 26: Zen 5)
    return {"cpu_model": fields.get("model name"), "cpu_family": fields.get("cpu family"),
            "cpu_model_number": fields.get("model"), "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"})}


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
