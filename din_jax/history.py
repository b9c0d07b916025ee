"""Where a batch's history positions are: padded rows or a packed buffer, and per-sample reductions over them.

Shape letters: B batch, T history positions of a padded batch, P history positions of the batch (``B * T`` padded,
the buffer's length packed).
"""

from typing import Dict

import jax
import jax.numpy as jnp

# Finite: -inf would give NaN (inf - inf) for an empty history, and exp of this underflows to 0 in float16 too.
_MASK_FILL = -1e9


def masked_softmax(scores_BxT, mask_BxT):
    """Softmax over the valid positions, all zeros for an empty history, zero gradient to masked scores.

    Written by hand (no ``jax.nn.softmax(where=...)``) for the IPU stack.
    """
    scores_BxT = scores_BxT.astype(jnp.float32)
    filled_BxT = jnp.where(mask_BxT, scores_BxT, _MASK_FILL)
    shifted_BxT = filled_BxT - jax.lax.stop_gradient(jnp.max(filled_BxT, axis=-1, keepdims=True))
    exp_BxT = jnp.where(mask_BxT, jnp.exp(shifted_BxT), 0.0)
    denom_Bx1 = jnp.sum(exp_BxT, axis=-1, keepdims=True)
    return exp_BxT / jnp.where(denom_Bx1 > 0, denom_Bx1, 1.0)


def history_mask(hist_len_B, max_len: int):
    """Boolean ``[B, T]`` mask of the valid (left-aligned) history positions."""
    return jnp.arange(max_len, dtype=jnp.int32)[None, :] < hist_len_B.astype(jnp.int32)[:, None]


class History:
    """Where a batch's history positions are, and the per-sample reductions over them (one pooler code for both
    layouts, docs/TRAINING.md "Packed batches").

    Padded batches (``hist_item`` ``[B, T]``): position ``b * T + t`` belongs to sample ``b``, valid for ``t <
    hist_len[b]``; the reductions are reshapes. Packed batches (``hist_item`` ``[P]`` and ``hist_segment`` ``[P]``):
    the samples' histories laid end to end, oldest first, ``hist_segment`` naming each position's sample and ``B``
    at unused positions; the reductions are segment sums, and ``weight`` ``[B]`` (0: an empty slot) comes along.
    Poolers see the keys flat, ``[P, D]`` (``P = B * T`` when padded).
    """

    def __init__(self, segment_P, valid_P, num_samples: int, row_length: int, sample_valid_B):
        self.segment_P, self.valid_P, self.sample_valid_B = segment_P, valid_P, sample_valid_B
        self.num_samples, self.row_length, self.num_positions = int(num_samples), int(row_length), int(valid_P.shape[0])

    @classmethod
    def of(cls, batch: Dict[str, jnp.ndarray]) -> "History":
        """The layout of a batch dict, padded or packed (the keys say which)."""
        if "hist_segment" not in batch:
            return cls.padded(batch["hist_len"], int(batch["hist_item"].shape[1]))
        segment_P = batch["hist_segment"].astype(jnp.int32)
        num_samples = int(batch["item"].shape[0])
        real_B = batch["weight"] > 0 if "weight" in batch else jnp.ones((num_samples,), bool)
        return cls(segment_P, segment_P < num_samples, num_samples, 0, real_B)

    @classmethod
    def padded(cls, hist_len_B, max_len: int) -> "History":
        """The padded layout of ``[B, max_len]`` histories of lengths ``hist_len_B``."""
        num_samples = int(hist_len_B.shape[0])
        segment_P = jnp.repeat(jnp.arange(num_samples, dtype=jnp.int32), max_len)
        valid_P = history_mask(hist_len_B, max_len).reshape(-1)
        return cls(segment_P, valid_P, num_samples, max_len, jnp.ones((num_samples,), bool))

    @property
    def packed(self) -> bool:
        return self.row_length == 0

    @property
    def sample_mask(self):
        """The real samples for batch statistics: None (all) when padded, ``sample_valid_B`` when packed."""
        return self.sample_valid_B if self.packed else None

    def flat(self, x):
        """``[B, T, ...]`` or ``[P, ...]`` per-position values as ``[P, ...]``."""
        return x.reshape((self.num_positions,) + x.shape[(1 if self.packed else 2) :])

    def rows(self, x_P):
        """Padded layout only: ``[P, ...]`` as ``[B, T, ...]``."""
        return x_P.reshape((self.num_samples, self.row_length) + x_P.shape[1:])

    def spread(self, x_B):
        """Per-sample values ``[B, ...]`` at each position, ``[P, ...]`` (unused positions: any sample's)."""
        if not self.packed:
            shape = (self.num_samples, self.row_length) + x_B.shape[1:]
            return jnp.broadcast_to(x_B[:, None], shape).reshape((self.num_positions,) + x_B.shape[1:])
        return jnp.take(x_B, jnp.minimum(self.segment_P, self.num_samples - 1), axis=0)

    def weighted_sum(self, weights_P, x_PxD):
        """``sum_j w_j x_j`` over each sample's positions, ``[B, D]``; ``weights_P`` must be 0 at invalid ones."""
        weights_P = weights_P.astype(x_PxD.dtype)
        if not self.packed:
            return jnp.einsum("bt,btd->bd", self.rows(weights_P), self.rows(x_PxD))
        return jax.ops.segment_sum(weights_P[:, None] * x_PxD, self.segment_P, self.num_samples)

    def count(self):
        """float32 ``[B]``: each sample's number of valid positions."""
        valid_P = self.valid_P.astype(jnp.float32)
        if not self.packed:
            return jnp.sum(self.rows(valid_P), axis=-1)
        return jax.ops.segment_sum(valid_P, self.segment_P, self.num_samples)

    def softmax(self, scores_P):
        """Softmax over each sample's valid positions: 0 elsewhere and for an empty history, no gradient to
        invalid scores. Written by hand (no ``jax.nn.softmax(where=...)``) for the IPU stack."""
        if not self.packed:
            return masked_softmax(self.rows(scores_P), self.rows(self.valid_P)).reshape(-1)
        filled_P = jnp.where(self.valid_P, scores_P.astype(jnp.float32), _MASK_FILL)
        # At least the fill, so that an empty sample's max (-inf) cannot make inf at unused positions.
        max_B = jnp.maximum(jax.ops.segment_max(filled_P, self.segment_P, self.num_samples), _MASK_FILL)
        shifted_P = filled_P - jax.lax.stop_gradient(self.spread(max_B))
        exp_P = jnp.where(self.valid_P, jnp.exp(shifted_P), 0.0)
        denom_P = self.spread(jax.ops.segment_sum(exp_P, self.segment_P, self.num_samples))
        return exp_P / jnp.where(denom_P > 0, denom_P, 1.0)
