"""din_jax: Deep Interest Network (DIN) for CTR prediction in JAX/Flax."""

import os

from setuptools import find_packages, setup

here = os.path.abspath(os.path.dirname(__file__))
with open(os.path.join(here, "README.md"), encoding="utf-8") as handle:
    long_description = handle.read()

setup(
    name="din_jax",
    version="0.1.0",
    description="Deep Interest Network (Zhou et al., KDD 2018) in JAX/Flax for CPU, GPU and Graphcore IPU",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["din_jax", "din_jax.*"]),
    python_requires=">=3.8",
    # Ranges that hold in both supported stacks: the Graphcore IPU one (jax
    # 0.3.16+ipu / jaxlib 0.3.15+ipu, flax 0.6.0, optax 0.1.4, numpy 1.23.5,
    # Python 3.8; see requirements-ipu.txt, installed with --no-deps so pip
    # never replaces the IPU build) and the newest releases tested here. The
    # upper bounds stop a fresh install from picking a major change (pmap's
    # future, flax's module API) that no test has seen; raise them after the
    # suite passes on the new release.
    install_requires=[
        "jax>=0.3.16,<0.11",
        "jaxlib>=0.3.15,<0.11",
        "flax>=0.6.0,<0.13",
        "optax>=0.1.4,<0.3",
        "numpy>=1.23,<3",
        "pandas>=1.3,<4",
        "absl-py>=1.0,<3",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3.0,<4", "hypothesis>=6.100"],
        "watch": ["tqdm>=4.60", "tensorboardX>=2.5", "matplotlib>=3.5"],
        "parquet": ["pyarrow>=8"],
        # Pinned: the formatter's output (checked in CI) changes between releases.
        "lint": ["ruff==0.17.6"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
