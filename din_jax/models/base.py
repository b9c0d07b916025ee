"""BaseModel (Embedding&MLP) of the DIN paper, and the parts its extensions (Wide&Deep, PNN, DeepFM) share.

Follows the paper (section 4.2) and the authors' Amazon code (github zhougr1993/DeepInterestNetwork,
``base_model/model.py``): the history is pooled without looking at the candidate, an MLP scores
``[pooled history, candidate]``, a per-item bias joins the logit. Deliberately differs: no batch normalisation
and no extra dense layer on the pooled history (a linear map before the MLP adds nothing); sizes (theirs: item
64 + category 64, MLP 80-40 sigmoid), activation and pooler (any of ``ATTENTIONS``: ``din`` gives DIN without
the interest-candidate product) are fields, shared by every model of the comparison.

Shape letters: B batch, P history positions (``din_jax.layers.History``), D item-vector width, F fields, E field
width.
"""

from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers import (
    AttentionFactory,
    EmbeddingMLPModel,
    History,
    feature_embedding,
    make_attention,
    prediction_mlp,
)


class EmbeddedBatch(NamedTuple):
    """What the shared embedding layer and the history pooling give a model."""

    candidate_BxD: jnp.ndarray
    positions: History
    pooled_BxD: jnp.ndarray
    user_BxU: Optional[jnp.ndarray]
    item_bias_B: Optional[jnp.ndarray]


def embed_and_pool(model: nn.Module, batch: Dict[str, jnp.ndarray], train: bool) -> EmbeddedBatch:
    """Embeds a batch and pools its history (submodules ``embedding``, ``history_pooling`` of a ``BaseModel``)."""
    embedded = feature_embedding(model)(batch)
    positions = embedded["positions"]
    pool = make_attention(model.pooling, dtype=model.dtype, axis_name=model.axis_name, name="history_pooling")
    pooled_BxD, _ = pool(embedded["candidate"], embedded["history"], positions, train=train)
    return EmbeddedBatch(
        embedded["candidate"], positions, pooled_BxD.astype(model.dtype), embedded["user"], embedded["item_bias"]
    )


def embed_rows(model: nn.Module, batch: Dict[str, jnp.ndarray], why: str):
    """The shared embedding (submodule ``embedding``) of a padded batch, and its history as rows: ``(embedded,
    history [B, T, D], valid [B, T])``. A packed batch is refused: ``why`` says what the model does with each row."""
    embedded = feature_embedding(model)(batch)
    positions = embedded["positions"]
    if positions.packed:
        raise ValueError("%s: it needs padded batches (--batching padded)" % why)
    return embedded, positions.rows(embedded["history"]), positions.rows(positions.valid_P)


def field_vectors(model: nn.Module, inputs: EmbeddedBatch) -> jnp.ndarray:
    """The field vectors of PNN's product layer and DeepFM's FM part, ``[B, F, E]``.

    Fields: candidate item, candidate category, pooled history items, pooled history categories, user if any.
    Unequal widths are each mapped to ``item_dim`` by a bias-free dense layer, so inner products are defined.
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
        fields = [
            nn.Dense(item_dim, use_bias=False, dtype=model.dtype, name="field_projection_%d" % i)(field)
            for i, field in enumerate(fields)
        ]
    return jnp.stack(fields, axis=1)


def deep_logits(model: nn.Module, inputs: EmbeddedBatch, extra: Sequence[jnp.ndarray], train: bool) -> jnp.ndarray:
    """The MLP (submodule ``mlp``) over ``[pooled history, candidate, user?, *extra]``: float32 ``[B]``."""
    features = [inputs.pooled_BxD, inputs.candidate_BxD]
    if inputs.user_BxU is not None:
        features.append(inputs.user_BxU)
    features.extend(extra)
    mlp_input = jnp.concatenate([f.astype(model.dtype) for f in features], axis=-1)
    return prediction_mlp(model)(mlp_input, train=train, mask=inputs.positions.sample_mask)


def add_item_bias(logits_B: jnp.ndarray, inputs: EmbeddedBatch) -> jnp.ndarray:
    if inputs.item_bias_B is None:
        return logits_B
    return logits_B + inputs.item_bias_B.astype(jnp.float32)


class BaseModel(EmbeddingMLPModel):
    """Embedding&MLP; ``pooling``: a name in ``ATTENTIONS`` (``mean``, the paper's and the authors', or ``sum``)."""

    pooling: Union[str, AttentionFactory] = "mean"

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
        """Scores a batch dict (docs/DATASET_FORMAT.md); returns float32 logits ``[B]``."""
        inputs = embed_and_pool(self, batch, train)
        return add_item_bias(deep_logits(self, inputs, (), train), inputs)
