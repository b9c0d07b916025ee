"""Importers: each turns one source format into the arrays of a din_jax dataset directory."""
