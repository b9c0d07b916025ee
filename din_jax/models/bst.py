"""Behavior Sequence Transformer (Chen et al., DLP-KDD 2019, arXiv 1905.06874).

Follows the paper, and FuxiCTR's ``BST`` where the paper is silent: the candidate is appended to the history as
its last position; each position's item vector plus a learnt positional embedding enters ``blocks`` transformer
blocks (multi-head self-attention over the valid positions, dropout, residual and layer norm; a LeakyReLU
feed-forward of ``4 D``, dropout, residual and layer norm: the post-norm block of the paper's figure); the target
position's output (``output`` ``target``) or the mean of the valid outputs (``mean``) joins ``[candidate, user?]``
in the MLP, with the per-item bias.

The paper's position feature is the time gap to the candidate; our batches carry no timestamps, so a position is
its distance to the candidate in behaviours (0 for the candidate, 1 for the last behaviour, ...), which does not
depend on how much padding the batch has. Padded positions are masked as keys (``causal`` also masks later
positions, the candidate seeing everything); histories must be padded batches (self-attention needs rows).
"""

from typing import Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from din_jax.history import masked_softmax
from din_jax.layers import EmbeddingMLPModel, prediction_mlp
from din_jax.models.base import embed_rows

BST_OUTPUTS = ("target", "mean")


def attention_mask(valid_BxS, causal: bool):
    """bool ``[B, S, S]``: query ``i`` may attend to key ``j`` when ``j`` is valid (and ``j <= i`` if causal)."""
    mask = jnp.broadcast_to(valid_BxS[:, None, :], valid_BxS.shape[:1] + valid_BxS.shape[1:] * 2)
    if causal:
        size = valid_BxS.shape[1]
        mask = mask & (jnp.arange(size)[None, :] <= jnp.arange(size)[:, None])[None]
    return mask


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention over ``[B, S, D]`` with a ``[B, S, S]`` mask (biased Q, K, V
    and output maps; ``heads`` must divide ``D``)."""

    heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxSxD, mask_BxSxS):
        batch, size, dim = x_BxSxD.shape
        if self.heads < 1 or dim % self.heads:
            raise ValueError(
                "--attention_heads %d must divide the item vector's width %d (item_dim + category_dim)"
                % (self.heads, dim)
            )
        width = dim // self.heads

        def split(name):
            y = nn.Dense(dim, dtype=self.dtype, name=name)(x_BxSxD).reshape(batch, size, self.heads, width)
            return jnp.transpose(y, (0, 2, 1, 3))  # [B, heads, S, width]

        query, key, value = split("query"), split("key"), split("value")
        scores = jnp.einsum("bhqw,bhkw->bhqk", query, key).astype(jnp.float32) / np.sqrt(width)
        weights = masked_softmax(scores, mask_BxSxS[:, None])
        out = jnp.einsum("bhqk,bhkw->bhqw", weights.astype(self.dtype), value)
        out = jnp.transpose(out, (0, 2, 1, 3)).reshape(batch, size, dim)
        return nn.Dense(dim, dtype=self.dtype, name="output")(out)


class TransformerBlock(nn.Module):
    """Post-norm transformer block: ``LN(x + drop(attention(x)))``, then ``LN(y + drop(FFN(y)))``."""

    heads: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxSxD, mask_BxSxS, train: bool = False):
        dim = x_BxSxD.shape[-1]
        attended = SelfAttention(self.heads, self.dtype, name="attention")(x_BxSxD, mask_BxSxS)
        attended = nn.Dropout(self.dropout_rate, deterministic=not train)(attended)
        y = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x_BxSxD + attended)
        hidden = jax.nn.leaky_relu(nn.Dense(4 * dim, dtype=self.dtype, name="ffn_hidden")(y))
        out = nn.Dropout(self.dropout_rate, deterministic=not train)(
            nn.Dense(dim, dtype=self.dtype, name="ffn_out")(hidden)
        )
        return nn.LayerNorm(dtype=self.dtype, name="ffn_norm")(y + out)


class BST(EmbeddingMLPModel):
    """BST; sizes and parts are fields.

    Attributes (besides the embedding and MLP fields of ``EmbeddingMLPModel``; ``dropout_rate`` also drops in the
    transformer blocks):
      attention_heads: heads of each self-attention (the paper: 8); must divide the item vector's width.
      transformer_blocks: stacked blocks (the paper: 1, its best).
      bst_output: ``target`` (the candidate position's output) or ``mean`` (of the valid positions' outputs).
      causal_attention: each position attends only to itself and earlier ones.
      max_positions: positional embeddings; farther behaviours share the last one.
    """

    attention_heads: int = 2
    transformer_blocks: int = 1
    bst_output: str = "target"
    causal_attention: bool = False
    max_positions: int = 256

    # Read by the trainer: self-attention needs each history as a padded row.
    packed_history = False

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
        """Scores a padded batch dict; returns float32 logits ``[B]``."""
        if self.bst_output not in BST_OUTPUTS:
            raise ValueError("--bst_output must be one of %s, got %r" % (list(BST_OUTPUTS), self.bst_output))
        if self.transformer_blocks < 1:
            raise ValueError("--transformer_blocks must be >= 1, got %r" % self.transformer_blocks)
        embedded, history_BxTxD, valid_BxT = embed_rows(self, batch, "bst attends within each history")
        candidate_BxD = embedded["candidate"]
        batch_size, length, width = history_BxTxD.shape

        # The candidate as position T; distances to it: hist_len - t for the history, 0 for the candidate.
        sequence_BxSxD = jnp.concatenate([history_BxTxD, candidate_BxD[:, None]], axis=1)
        valid_BxS = jnp.concatenate([valid_BxT, jnp.ones((batch_size, 1), bool)], axis=1)
        hist_len_B = jnp.sum(valid_BxT.astype(jnp.int32), axis=1)
        distance_BxS = jnp.concatenate(
            [hist_len_B[:, None] - jnp.arange(length, dtype=jnp.int32)[None], jnp.zeros((batch_size, 1), jnp.int32)],
            axis=1,
        )
        distance_BxS = jnp.clip(distance_BxS, 0, self.max_positions - 1)
        table = self.param("position_embedding", nn.initializers.normal(0.02), (self.max_positions, width), jnp.float32)
        x_BxSxD = sequence_BxSxD + jnp.take(table, distance_BxS, axis=0).astype(self.dtype)
        x_BxSxD = nn.Dropout(self.dropout_rate, deterministic=not train)(x_BxSxD)

        mask_BxSxS = attention_mask(valid_BxS, self.causal_attention)
        for index in range(self.transformer_blocks):
            block = TransformerBlock(self.attention_heads, self.dropout_rate, self.dtype, name="block_%d" % index)
            x_BxSxD = block(x_BxSxD, mask_BxSxS, train=train)

        if self.bst_output == "target":
            pooled_BxD = x_BxSxD[:, -1]
        else:
            weights_BxS = valid_BxS.astype(x_BxSxD.dtype)
            pooled_BxD = jnp.einsum("bs,bsd->bd", weights_BxS, x_BxSxD) / jnp.sum(weights_BxS, axis=1, keepdims=True)
        features = [pooled_BxD, candidate_BxD]
        if embedded["user"] is not None:
            features.append(embedded["user"])
        logits_B = prediction_mlp(self)(jnp.concatenate(features, axis=-1), train=train)
        if embedded["item_bias"] is not None:
            logits_B = logits_B + embedded["item_bias"].astype(jnp.float32)
        return logits_B
