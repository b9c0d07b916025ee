"""What a benchmark row records of the machine: platform, device, CPU, library versions, load and peak memory."""

import os
import platform
import resource
import sys
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - a missing library is reported, not fatal
        return "n/a"


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def environment_info(devices: Optional[List[Any]] = None) -> Dict[str, Any]:
    """Platform, device, CPU and library versions."""
    devices = devices or jax.local_devices()
    kind = str(getattr(devices[0], "device_kind", devices[0].platform))
    info = dict(platform=devices[0].platform, device_kind=kind, devices=len(devices), cpu_model=_cpu_model())
    info.update(cpu_count=os.cpu_count(), python=platform.python_version(), jax=jax.__version__, numpy=np.__version__)
    info.update({name: _version(name) for name in ("jaxlib", "flax", "optax")})
    return info


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def device_peak_mb(devices: Sequence[Any]) -> Optional[float]:
    """The largest ``peak_bytes_in_use`` of the devices, in MiB, where the backend reports it (GPU)."""
    peaks = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - CPU and older backends have none
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"] / (1024.0 * 1024.0))
    return max(peaks) if peaks else None
