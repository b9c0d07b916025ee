"""din_jax: Deep Interest Network (DIN) for CTR prediction in JAX/Flax."""

__version__ = "0.1.0"
