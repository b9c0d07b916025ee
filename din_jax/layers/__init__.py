"""Layers: embeddings, history pooling (attention) and activations."""

from din_jax.layers.activations import ACTIVATIONS, Dice, PReLU, make_activation, register_activation
from din_jax.layers.attention import (
    ATTENTIONS,
    DinAttention,
    DotAttention,
    MeanPooling,
    SumPooling,
    make_attention,
    masked_softmax,
    register_attention,
)
from din_jax.layers.embedding import FeatureEmbedding, history_mask, lookup
from din_jax.layers.mlp import MLP

__all__ = [
    "ACTIVATIONS", "ATTENTIONS", "Dice", "DinAttention", "DotAttention", "FeatureEmbedding", "MLP",
    "MeanPooling", "PReLU", "SumPooling", "history_mask", "lookup", "make_activation", "make_attention",
    "masked_softmax", "register_activation", "register_attention",
]
