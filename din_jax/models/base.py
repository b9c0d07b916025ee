"""BaseModel (Embedding&MLP) of the DIN paper, and the parts its extensions share.

Follows the paper (section 4.2, "Base Model") and the authors' Amazon code
(github zhougr1993/DeepInterestNetwork, ``base_model/model.py``): the history
is pooled without looking at the candidate (masked mean there; a sum here
on request) and an MLP scores ``[pooled history, candidate]``, plus a
per-item bias on the logit.

Deliberate differences from the authors' code:
- no batch normalisation of the pooled history and the MLP input, and no
  extra dense layer on the pooled history (a linear map straight before the
  MLP's first dense layer adds nothing the MLP cannot learn);
- the sizes and the activation are fields (their code: item 64 + category
  64, MLP 80-40 sigmoid), so every model of the comparison can share them;
- the pooling is any pooler of ``din_jax.layers.ATTENTIONS`` by name, so
  ``pooling='din'`` gives DIN without the interest-candidate product.

Wide&Deep, PNN and DeepFM (the other modules of this package) are this model
plus one more part; ``embed_and_pool``, ``field_vectors`` and ``deep_logits``
are the pieces they share, called inside their own compact ``__call__``.

Shape letters: B batch, T history positions, D item-vector width
(item_dim + category_dim), F fields, E field width.
"""

from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers.activations import ActivationFactory
from din_jax.layers.attention import AttentionFactory, make_attention
from din_jax.layers.embedding import EmbeddingFields, FeatureEmbedding, history_mask
from din_jax.layers.mlp import MLP


class EmbeddedBatch(NamedTuple):
    """What the shared embedding layer and the history pooling give a model."""

    candidate_BxD: jnp.ndarray
    history_BxTxD: jnp.ndarray
    mask_BxT: jnp.ndarray
    pooled_BxD: jnp.ndarray
    user_BxU: Optional[jnp.ndarray]
    item_bias_B: Optional[jnp.ndarray]


class EmbeddingMLPModel(EmbeddingFields):
    """The fields every model of the comparison shares: the embedding layer and the prediction MLP.

    Subclasses add their own parts as fields of their own (flax modules are
    dataclasses, so the fields are inherited) and write their own compact
    ``__call__``, building the shared parts with ``feature_embedding`` and
    ``prediction_mlp``.

    Attributes (besides the embedding's, see ``EmbeddingFields``):
      mlp_hidden, activation, dropout_rate: the prediction MLP.
      axis_name: pmap axis for cross-device batch statistics (Dice).
    """

    mlp_hidden: Sequence[int] = (80, 40)
    activation: Union[str, ActivationFactory] = "prelu"
    dropout_rate: float = 0.0
    axis_name: Optional[str] = None


def feature_embedding(model: EmbeddingMLPModel) -> FeatureEmbedding:
    """The model's embedding layer (submodule ``embedding``); call it inside a compact ``__call__``."""
    return FeatureEmbedding(name="embedding", **model.embedding_fields())


def prediction_mlp(model: EmbeddingMLPModel) -> MLP:
    """The model's prediction MLP (submodule ``mlp``); call it inside a compact ``__call__``."""
    return MLP(
        hidden=tuple(model.mlp_hidden),
        activation=model.activation,
        dropout_rate=model.dropout_rate,
        dtype=model.dtype,
        axis_name=model.axis_name,
        name="mlp",
    )


def embed_and_pool(model: nn.Module, batch: Dict[str, jnp.ndarray], train: bool) -> EmbeddedBatch:
    """Embeds a batch with the model's ``FeatureEmbedding`` and pools its history.

    Call it inside the model's compact ``__call__``: it creates the submodules
    ``embedding`` and ``history_pooling`` there. ``model`` must have the
    fields of ``BaseModel`` (vocabulary sizes, widths, ``pooling``, ``dtype``,
    ``axis_name``).
    """
    embedded = feature_embedding(model)(batch)
    history_BxTxD = embedded["history"]
    mask_BxT = history_mask(batch["hist_len"], history_BxTxD.shape[1])
    pool = make_attention(model.pooling, dtype=model.dtype, axis_name=model.axis_name, name="history_pooling")
    pooled_BxD, _ = pool(embedded["candidate"], history_BxTxD, mask_BxT, train=train)
    return EmbeddedBatch(embedded["candidate"], history_BxTxD, mask_BxT, pooled_BxD.astype(model.dtype),
                         embedded["user"], embedded["item_bias"])


def field_vectors(model: nn.Module, inputs: EmbeddedBatch) -> jnp.ndarray:
    """The per-field vectors of PNN's product layer and DeepFM's FM part, ``[B, F, E]``.

    Fields: candidate item, candidate category, pooled history items, pooled
    history categories, and the user when the model has one. When the widths
    differ (item_dim != category_dim, or a user width of its own) every field
    is mapped to ``item_dim`` by a bias-free dense layer of its own, so that
    inner products between fields are defined.
    """
    item_dim = model.item_dim
    fields: List[jnp.ndarray] = [
        inputs.candidate_BxD[:, :item_dim],
        inputs.candidate_BxD[:, item_dim:],
        inputs.pooled_BxD[:, :item_dim],
        inputs.pooled_BxD[:, item_dim:],
    ]
    if inputs.user_BxU is not None:
        fields.append(inputs.user_BxU)
    if len({field.shape[-1] for field in fields}) > 1:
        fields = [nn.Dense(item_dim, use_bias=False, dtype=model.dtype, name="field_projection_%d" % i)(field)
                  for i, field in enumerate(fields)]
    return jnp.stack(fields, axis=1)


def deep_logits(model: nn.Module, inputs: EmbeddedBatch, extra: Sequence[jnp.ndarray], train: bool) -> jnp.ndarray:
    """The MLP (submodule ``mlp``) over ``[pooled history, candidate, user?, *extra]``: float32 ``[B]``."""
    features = [inputs.pooled_BxD, inputs.candidate_BxD]
    if inputs.user_BxU is not None:
        features.append(inputs.user_BxU)
    features.extend(extra)
    return prediction_mlp(model)(jnp.concatenate([f.astype(model.dtype) for f in features], axis=-1), train=train)


def add_item_bias(logits_B: jnp.ndarray, inputs: EmbeddedBatch) -> jnp.ndarray:
    if inputs.item_bias_B is None:
        return logits_B
    return logits_B + inputs.item_bias_B.astype(jnp.float32)


class BaseModel(EmbeddingMLPModel):
    """Embedding&MLP: candidate-blind pooling of the history, then an MLP.

    Attributes (besides those of ``EmbeddingMLPModel``):
      pooling: pooler name in ``ATTENTIONS`` (``mean``, the paper's and the
        authors' choice, or ``sum``) or a module factory.
    """

    pooling: Union[str, AttentionFactory] = "mean"

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
        """Scores a batch dict (docs/DATASET_FORMAT.md); returns float32 logits ``[B]``."""
        inputs = embed_and_pool(self, batch, train)
        return add_item_bias(deep_logits(self, inputs, (), train), inputs)
