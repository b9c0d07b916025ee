"""The version of the code that runs: the git commit and whether the code differs from it, for every record.

Results name the code that produced them (run summaries, ablation records), so that a table never mixes rows of
different code silently. Only the code counts as dirty (``din_jax``, ``experiments``, ``data_prep``,
``setup.py``): editing docs does not change a result.
"""

import functools
import os
import subprocess
from typing import Any, Dict, Optional

import din_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_PATHS = ("din_jax", "experiments", "data_prep", "setup.py")


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(
            ("git", "-C", ROOT) + args, capture_output=True, text=True, timeout=30, check=False, env=_git_env()
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("GIT_DIR", None)  # the checkout this file is in, whatever the caller's environment says
    return env


@functools.lru_cache(maxsize=1)
def code_version() -> Dict[str, Any]:
    """``{"package", "commit", "dirty"}``: commit and dirty are None outside a git checkout (an installed copy)."""
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
        dirty = None if status is None else bool(status)
    return {"package": din_jax.__version__, "commit": commit, "dirty": dirty}


def describe(version: Optional[Dict[str, Any]]) -> str:
    """``'3f2c1ab'``, ``'3f2c1ab+dirty'`` or ``'unknown'`` (a record without a version)."""
    commit = (version or {}).get("commit")
    if not commit:
        return "unknown"
    return commit[:7] + ("+dirty" if version.get("dirty") else "")
