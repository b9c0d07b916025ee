"""Multi-process (multi-host) start-up through JAX's own runtime.

Every process runs the same command with its own ``process_id``; the train
program is pmapped over the devices of all processes, each process feeding its
slice of every global micro-batch (``Trainer`` does the slicing), and the
gradient ``pmean`` spans all of them.
"""

import os
from typing import Optional

import jax


def cpu_collectives_supported() -> bool:
    """Whether this jax can run cross-process collectives on the CPU backend.

    jax releases with a Gloo CPU backend have the config option
    ``jax_cpu_collectives_implementation``; older ones (0.4.13, the IPU-proxy
    lane) run multi-process CPU programs without collectives and fail.
    """
    return hasattr(jax.config, "jax_cpu_collectives_implementation") or \
        "jax_cpu_collectives_implementation" in getattr(jax.config, "values", {})


def initialize(coordinator_address: str, num_processes: int, process_id: int,
               local_device_ids: Optional[list] = None) -> None:
    """Connects this process to the others (call before any other jax use).

    Args:
      coordinator_address: ``host:port`` where process 0 listens.
      num_processes: number of processes in the run.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      local_device_ids: restrict this process to some local accelerators.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms in ("", "cpu") and cpu_collectives_supported():
        # CPU collectives across processes need an explicit implementation.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if local_device_ids is not None:
        kwargs["local_device_ids"] = local_device_ids
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
