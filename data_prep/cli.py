"""What every data_prep entry point shares: one-line errors with exit code 2, repo-root imports."""

import sys
from typing import Callable

from data_prep.report import DataPrepError
from din_jax.data.dataset import DatasetError


def run_safely(program: str, work: Callable[[], None]) -> None:
    """Runs ``work``; a DataPrepError or DatasetError becomes ``program: error: ...`` on stderr and exit 2."""
    try:
        work()
    except (DataPrepError, DatasetError, OSError) as error:
        # OSError: unreadable inputs, a full disk, a read-only output folder.
        message = " ".join(str(error).split("\n"))
        sys.stderr.write(f"{program}: error: {message}\n")
        sys.stderr.flush()
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write(f"{program}: interrupted\n")
        sys.exit(130)


def require_flags(**values) -> None:
    """Raises DataPrepError naming the first required flag without a value."""
    for name, value in values.items():
        if value is None or value == "":
            raise DataPrepError(f"--{name} is required")
