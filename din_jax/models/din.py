"""Deep Interest Network (Zhou et al., KDD 2018).

Follows the paper and the authors' Amazon code (github zhougr1993/DeepInterestNetwork, ``din/model.py``): item ⊕
category vectors, the local activation unit over the history, an MLP over ``[interest, candidate, interest *
candidate]``, a per-item bias on the logit. Deliberately differs from their code: no batch normalisation on the
MLP input (theirs was not shared between the positive and the negative branch: a label leak that inflated their
GAUC); every sample, the negative too, is scored with its own attention (their code once scored the negative
with the user vector attended on the positive, another leak); Dice uses moving averages at inference.
``use_history_sum`` and ``user_dim`` give the DIEN/Graphcore variant.
"""

from typing import Dict, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers import (
    ActivationFactory,
    AttentionFactory,
    EmbeddingMLPModel,
    feature_embedding,
    make_attention,
    prediction_mlp,
)


class DIN(EmbeddingMLPModel):
    """DIN; every size and swappable part is a field (presets are configurations).

    Attributes (besides the embedding and MLP fields of ``EmbeddingMLPModel``):
      attention: pooler name in ``ATTENTIONS`` or a module factory; ``attention_hidden``, ``_activation`` and
        ``_normalization`` go to poolers with those fields (``din``), ``split_attention`` to ``split_first_layer``,
        ``attention_heads`` to ``heads`` (``mha``).
      use_history_sum: the MLP also sees the sum-pooled history and its product with the candidate.
    """

    attention: Union[str, AttentionFactory] = "din"
    attention_hidden: Sequence[int] = (80, 40)
    attention_activation: Union[str, ActivationFactory] = "sigmoid"
    attention_normalization: str = "none"
    split_attention: bool = True
    attention_heads: int = 2
    use_history_sum: bool = False

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False, return_attention: bool = False):
        """Scores a batch dict (docs/DATASET_FORMAT.md), padded or packed: float32 logits ``[B]``, with
        ``return_attention`` also the attention weights (zero on padding), ``[B, T]`` padded, ``[P]`` packed."""
        embedded = feature_embedding(self)(batch)
        candidate_BxD = embedded["candidate"]
        history_PxD = embedded["history"]
        positions = embedded["positions"]

        pool = make_attention(
            self.attention,
            hidden=tuple(self.attention_hidden),
            activation=self.attention_activation,
            normalization=self.attention_normalization,
            split_first_layer=self.split_attention,
            heads=self.attention_heads,
            dtype=self.dtype,
            axis_name=self.axis_name,
            name="attention_unit",
        )
        interest_BxD, weights_P = pool(candidate_BxD, history_PxD, positions, train=train)

        features = [interest_BxD, candidate_BxD, interest_BxD * candidate_BxD]
        if self.use_history_sum:
            history_sum_BxD = positions.weighted_sum(positions.valid_P, history_PxD)
            features += [history_sum_BxD, candidate_BxD * history_sum_BxD]
        if embedded["user"] is not None:
            features.append(embedded["user"])
        mlp = prediction_mlp(self)
        logits_B = mlp(jnp.concatenate(features, axis=-1), train=train, mask=positions.sample_mask)
        if embedded["item_bias"] is not None:
            logits_B = logits_B + embedded["item_bias"].astype(jnp.float32)
        if return_attention:
            return logits_B, weights_P if positions.packed else positions.rows(weights_P)
        return logits_B
