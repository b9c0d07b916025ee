"""Data preparation: download, convert, remap and build din_jax dataset directories."""
