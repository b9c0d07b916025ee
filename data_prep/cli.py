"""What every data_prep entry point shares: one-line errors with exit code 2, repo-root imports."""

import os
import sys
import traceback
from typing import Any, Callable, List, Optional

from data_prep.report import DataPrepError
from din_jax.cli import run_main
from din_jax.data.dataset import DatasetError

DEBUG_VARIABLE = "DATA_PREP_DEBUG"


def _fail(program: str, message: str, error: Optional[BaseException]) -> None:
    if error is not None and os.environ.get(DEBUG_VARIABLE):
        traceback.print_exception(type(error), error, error.__traceback__)
    message = " ".join(message.split("\n"))
    sys.stderr.write(f"{program}: error: {message}\n")
    sys.stderr.flush()
    sys.exit(2)


def run_safely(program: str, work: Callable[[], None]) -> None:
    """Runs ``work``; a DataPrepError or DatasetError becomes ``program: error: ...`` on stderr and exit 2.

    So does an OSError (an unreadable input, a full disk, a read-only output
    folder) and, as a last resort, a UnicodeDecodeError: only input bytes are
    decoded, so it is a bad file, not a bug. Other exceptions keep their
    traceback: they are bugs. ``DATA_PREP_DEBUG=1`` prints the traceback of
    one-line errors too.
    """
    try:
        work()
    except (DataPrepError, DatasetError, OSError) as error:
        _fail(program, str(error), error)
    except UnicodeDecodeError as error:
        # Readers report bad bytes with file and line; this one escaped them.
        _fail(
            program,
            f"an input file is not UTF-8 text ({error}); set {DEBUG_VARIABLE}=1 to see where it was read",
            error,
        )
    except KeyboardInterrupt:
        sys.stderr.write(f"{program}: interrupted\n")
        sys.exit(130)


def run_app(main: Callable[[List[str]], Any]) -> None:
    """``absl.app.run(main)`` with bad flags and stray arguments told in one line (exit 2), like every other error."""
    run_main(main, lambda program, message: _fail(program, message, None))


def require_flags(**values) -> None:
    """Raises DataPrepError naming the first required flag without a value."""
    for name, value in values.items():
        if value is None or value == "":
            raise DataPrepError(f"--{name} is required")
