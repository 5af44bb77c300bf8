"""Calibration activations between blocks: the hidden states of every calibration sequence at one depth.

One buffer of shape (sequences, seqlen, hidden) is enough: a block's output pass reads batch b and writes the
block's output for batch b back in its place (nothing reads batch b's input afterwards). The buffer lives
where it fits: on the compute device (no host round-trips), in host memory, or in a file read and written one
batch at a time with explicit reads and writes (no memory map, so the file's pages never count in the process's
resident memory) when it is larger than the memory allowed for it.
"""
from __future__ import annotations

import os
import tempfile

import torch

PLACES = ("device", "host", "disk")


def parse_size(value) -> int | None:
    """'2GB', '512MiB', '1.5G', 1048576 -> bytes; None/'auto'/'none' -> None."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "")
    if text in ("", "auto", "none"):
        return None
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
             "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
    number = text.rstrip("kmgtib")
    unit = text[len(number):]
    if unit not in units:
        raise ValueError(f"cannot read memory size {value!r}; write e.g. 2GB, 512MiB or a number of bytes")
    try:
        size = int(float(number) * units[unit])
    except ValueError:
        raise ValueError(f"cannot read memory size {value!r}; write e.g. 2GB, 512MiB or a number of bytes") from None
    if size <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return size


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else psutil's figure."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil
    return psutil.virtual_memory().available


class ActivationBuffer:
    """(n, seqlen, hidden) activations of one dtype, kept on ``place`` ("device", "host" or "disk").

    ``read(start, end)`` returns rows [start, end) on the compute device; ``write(start, rows)`` stores rows.
    """

    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype, place: str, device: torch.device,
                 directory: str | None = None):
        if place not in PLACES:
            raise ValueError(f"activation place must be one of {PLACES}, got {place!r}")
        self.shape, self.dtype, self.place, self.device = tuple(shape), dtype, place, torch.device(device)
        self.row_bytes = shape[1] * shape[2] * torch.empty((), dtype=dtype).element_size()
        self._tensor = None
        self._fd = None
        self.path = None
        if place == "disk":
            handle, self.path = tempfile.mkstemp(prefix="prunelab-activations-", suffix=".bin", dir=directory)
            self._fd = handle
            os.ftruncate(self._fd, self.row_bytes * shape[0])
        else:
            self._tensor = torch.empty(shape, dtype=dtype, device=self.device if place == "device" else "cpu")

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]

    def read(self, start: int, end: int) -> torch.Tensor:
        if self._tensor is not None:
            return self._tensor[start:end].to(self.device)
        rows = torch.empty((end - start, *self.shape[1:]), dtype=self.dtype)
        view = memoryview(rows.view(-1).view(torch.uint8).numpy())
        offset, done = start * self.row_bytes, 0
        while done < len(view):  # a single read may return less than asked (and at most 2 GiB on Linux)
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"short read from the activation file {self.path}")
            done += got
        return rows.to(self.device)

    def write(self, start: int, rows: torch.Tensor) -> None:
        rows = rows.detach()
        if self._tensor is not None:
            self._tensor[start:start + rows.shape[0]].copy_(rows)
            return
        rows = rows.to("cpu", self.dtype).contiguous()
        view = memoryview(rows.view(-1).view(torch.uint8).numpy())
        offset, done = start * self.row_bytes, 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def close(self) -> None:
        self._tensor = None
        if self._fd is not None:
            os.close(self._fd)
            os.unlink(self.path)
            self._fd = None

    def __del__(self):  # an exception mid-run must not leave the (possibly large) file behind
        try:
            self.close()
        except Exception:
            pass


def choose_place(nbytes: int, device: torch.device, max_host_bytes: int | None) -> str:
    """Device when computing on a GPU whose free memory holds the activations with room to spare (half its free
    memory), else host memory up to ``max_host_bytes`` (None: half of the memory available now), else disk."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if nbytes <= free // 2:
            return "device"
    limit = max_host_bytes if max_host_bytes is not None else available_memory_bytes() // 2
    return "host" if nbytes <= limit else "disk"
