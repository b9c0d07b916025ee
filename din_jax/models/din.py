"""Deep Interest Network (Zhou et al., KDD 2018).

Follows the paper and the authors' Amazon code
(github zhougr1993/DeepInterestNetwork, ``din/model.py``): item ⊕ category
vectors, the local activation unit over the history, a prediction MLP over
``[interest, candidate, interest * candidate]``, a per-item bias on the logit.

Deliberate differences from the authors' code:
- no batch normalisation on the MLP input (the authors' BatchNorm was not
  shared between the positive and the negative branch, so its statistics
  told the two apart: a label leak that inflated their published GAUC);
- the negative is scored with its own attention (the authors' code once
  scored it with the user vector attended on the positive item, another
  leak); every sample is scored independently;
- Dice uses batch statistics in training and moving averages at inference.

``use_history_sum`` and ``user_dim`` give the DIEN/Graphcore variant, whose
MLP also sees the user embedding, the sum-pooled history and its product with
the candidate.
"""

from typing import Dict, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers.activations import ActivationFactory
from din_jax.layers.attention import AttentionFactory, make_attention
from din_jax.layers.embedding import history_mask
from din_jax.models.base import EmbeddingMLPModel, feature_embedding, prediction_mlp


class DIN(EmbeddingMLPModel):
    """DIN; every size and swappable part is a field (presets are configurations).

    Attributes (besides the embedding and MLP fields of ``EmbeddingMLPModel``):
      attention: pooler name in ``ATTENTIONS`` or a module factory.
      attention_hidden, attention_activation, attention_normalization: handed
        to poolers that have those fields (``din``).
      split_attention: evaluate the first attention layer in split form.
      use_history_sum: add the sum-pooled history and its product with the
        candidate to the MLP input (DIEN/Graphcore variant).
    """

    attention: Union[str, AttentionFactory] = "din"
    attention_hidden: Sequence[int] = (80, 40)
    attention_activation: Union[str, ActivationFactory] = "sigmoid"
    attention_normalization: str = "none"
    split_attention: bool = True
    use_history_sum: bool = False

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False, return_attention: bool = False):
        """Scores a batch dict (docs/DATASET_FORMAT.md).

        Returns:
          float32 logits ``[B]``; with ``return_attention`` also the attention
          weights ``[B, T]`` (zero on padding).
        """
        embedded = feature_embedding(self)(batch)
        candidate_BxD = embedded["candidate"]
        history_BxTxD = embedded["history"]
        mask_BxT = history_mask(batch["hist_len"], history_BxTxD.shape[1])

        pool = make_attention(
            self.attention,
            hidden=tuple(self.attention_hidden),
            activation=self.attention_activation,
            normalization=self.attention_normalization,
            split_first_layer=self.split_attention,
            dtype=self.dtype,
            axis_name=self.axis_name,
            name="attention_unit",
        )
        interest_BxD, weights_BxT = pool(candidate_BxD, history_BxTxD, mask_BxT, train=train)

        features = [interest_BxD, candidate_BxD, interest_BxD * candidate_BxD]
        if self.use_history_sum:
            history_sum_BxD = jnp.einsum("bt,btd->bd", mask_BxT.astype(history_BxTxD.dtype), history_BxTxD)
            features += [history_sum_BxD, candidate_BxD * history_sum_BxD]
        if embedded["user"] is not None:
            features.append(embedded["user"])
        logits_B = prediction_mlp(self)(jnp.concatenate(features, axis=-1), train=train)
        if embedded["item_bias"] is not None:
            logits_B = logits_B + embedded["item_bias"].astype(jnp.float32)
        if return_attention:
            return logits_B, weights_BxT
        return logits_B
