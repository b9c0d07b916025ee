"""Ablation grids (``grid``: cells, run keys, the results store, the runner) and their reports (``report``)."""

from din_jax.ablation.grid import *  # noqa: F401,F403
from din_jax.ablation.report import *  # noqa: F401,F403
