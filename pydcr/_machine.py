"""What a run ran on, for reports and benchmarks (processor, threads, GPU, torch), and the one default
that depends on it: whether the model runs in bfloat16 autocast."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .allocator import freed_memory_retained


def machine(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        # CPU timings depend on it: with glibc's default, blocks above 32 MiB are paged in anew at each use.
        "malloc": "retains freed memory" if freed_memory_retained() else "default",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def use_amp(amp: bool | None, device: torch.device | str) -> bool:
    """bfloat16 autocast as asked, else on CUDA only: on a CPU it pays where the processor has
    bfloat16 arithmetic (AMX, AVX512-BF16) and may cost time where it has not."""
    return torch.device(device).type == "cuda" if amp is None else bool(amp)


def describe(m: dict) -> str:
    return m.get("gpu") or f"{m['cpu']} ({m['torch_threads']} threads)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
