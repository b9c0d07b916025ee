"""Multi-process (multi-host) start-up through JAX's own runtime.

Every process runs the same command with its own ``process_id``; the train program is pmapped over the devices of
all processes, each feeding its slice of every global micro-batch (``Trainer`` slices), and the ``pmean`` spans all.
"""

import os
from typing import Optional

import jax


def cpu_collectives_supported() -> bool:
    """Whether this jax can run cross-process collectives on the CPU backend.

    Releases with a Gloo CPU backend have ``jax_cpu_collectives_implementation``; older ones (0.4.13, the IPU-proxy
    lane) run multi-process CPU programs without collectives and fail.
    """
    option = "jax_cpu_collectives_implementation"
    return hasattr(jax.config, option) or option in getattr(jax.config, "values", {})


def initialize(
    coordinator_address: str, num_processes: int, process_id: int, local_device_ids: Optional[list] = None
) -> None:
    """Connects this process to the others (before any other jax use); process 0 listens at ``coordinator_address``."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms in ("", "cpu") and cpu_collectives_supported():
        # CPU collectives across processes need an explicit implementation.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {} if local_device_ids is None else {"local_device_ids": local_device_ids}
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
