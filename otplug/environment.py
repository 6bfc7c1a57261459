"""What a run ran on: library versions, the CPU / GPU and its instruction set, threads, and the precision path.

Recorded in every run's ``run_info.json`` (``environment``, ``precision``) and every study's ``study_summary.json``, so
that a rerun elsewhere can tell what differed (issue #30: the same command, seeds and data gave a different real-A
column on another 2-core machine). :func:`environment_key` is the part that decides numerics -- versions, CPU model
and instruction set, GPU -- and labels runs that come from different environments.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "bf16_support", "environment", "environment_key", "precision_info"]

#: the packages whose versions change numbers (kernels, decoders, image resampling, the OT reference)
PACKAGES = ("torch", "torchvision", "numpy", "lerobot", "pillow", "av", "pot", "accelerate", "otplug")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@cache
def _cpu() -> dict[str, Any]:
    model, flags = platform.processor() or None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in (None, "", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": flags}


def bf16_support(device: str = "cpu") -> bool | None:
    """Whether ``device`` computes bfloat16 natively: a CPU with AVX512-BF16 or AMX-BF16 (x86) or the BF16 extension
    (aarch64); a CUDA GPU that torch says supports it. ``None`` when it cannot be told (no /proc/cpuinfo)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    flags = _cpu()["flags"]
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def environment() -> dict[str, Any]:
    """Versions, machine, threads (JSON-able)."""
    import torch

    cpu = _cpu()
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu["model"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": bf16_support("cpu"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": None,
    }
    if torch.cuda.is_available():
        info["cuda"] = {"device": torch.cuda.get_device_name(0), "version": torch.version.cuda,
                        "bf16": bf16_support("cuda")}
    return info


def environment_key(env: dict[str, Any]) -> str:
    """A short hash of what decides the numbers: package versions, CPU model and instruction set, GPU (not the
    thread count or the host name). Two runs with one key ran the same kernels."""
    keep = {"packages": env.get("packages"), "cpu": env.get("cpu"), "cpu_capability": env.get("cpu_capability"),
            "machine": env.get("machine"), "cuda": (env.get("cuda") or {}).get("device")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def precision_info(device: str, mixed_precision: str, memory_format: str) -> dict[str, Any]:
    """The precision path a run took: accelerate's ``mixed_precision`` (``no`` / ``bf16`` / ``fp16``), the autocast
    dtype it implies, the memory format of the policy's conv weights, whether the device computes bf16 natively,
    and that the OT plan and loss are float32 whatever the features (``otplug.precision``)."""
    kind = "cuda" if str(device).startswith("cuda") else str(device).split(":")[0]
    return {
        "mixed_precision": mixed_precision,
        "autocast_dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(mixed_precision),
        "memory_format": memory_format,
        "device": str(device),
        "bf16_native": bf16_support(kind) if kind in ("cpu", "cuda") else None,
        "ot_plan_dtype": "float32 (at least; the solver's declared dtype)",
        "path": f"{kind}-{'fp32' if mixed_precision == 'no' else mixed_precision}"
                + ("+channels_last" if memory_format == "channels_last" else ""),
    }
