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
    # Ranges that hold in both supported stacks: the current one and the
    # Graphcore IPU one (jax 0.3.16+ipu, flax 0.6.0, optax 0.1.4, numpy
    # 1.23.5, Python 3.8; see requirements-ipu.txt). jax is left open below
    # so that pip never replaces the IPU build of jax.
    install_requires=[
        "jax",
        "jaxlib",
        "flax>=0.6.0",
        "optax>=0.1.4",
        "numpy>=1.23",
        "pandas>=1.3",
        "absl-py>=1.0",
    ],
    extras_require={
        "test": ["pytest>=7"],
        "watch": ["tqdm>=4.60", "tensorboardX>=2.5", "matplotlib>=3.5"],
        "parquet": ["pyarrow>=8"],
        "lint": ["ruff>=0.4"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
