"""Deep Interest Evolution Network (Zhou et al., AAAI 2019, arXiv 1809.03672).

Follows the paper and the authors' code (github mouna99/dien, ``Model_DIN_V2_Gru_Vec_attGru_Neg``): a GRU interest
extractor over the history; an auxiliary loss in which each hidden state ``h_t`` tells the next behaviour ``e_{t+1}``
from a sampled negative ``e'_{t+1}`` (an MLP 100-50 sigmoid on ``[h_t, e]``); DIN's activation unit between the
candidate and the states, softmax-normalised (the scores gate an update, so they must be bounded); interest evolution
by an AUGRU (``evolution``: ``aigru``, ``agru`` for the paper's ablation, ``din_jax.models.gru``); the MLP over
``[final evolved interest, candidate, history sum, candidate * history sum, user?]`` and the per-item bias.

Deliberately differs from their code: the AUGRU of the paper's equations (see ``gru``); no batch normalisation
(ours never has it, see ``din``); the auxiliary net has one logit (their two-way softmax is a sigmoid of a
difference) and its loss is the mean over the *valid* next positions (theirs divides by every padded slot too);
the GRU width is the item vector's (theirs: 36 = 2 x 18, the same rule). Histories must be padded batches (a GRU
reads each one in order). The negatives come with the training batches (``HISTORY_NEGATIVES``); without them
(evaluation, inference) the auxiliary loss is not computed.
"""

from typing import Any, Dict, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from din_jax.layers import (
    HISTORY_NEGATIVES,
    LOSSES,
    MLP,
    ActivationFactory,
    DinAttention,
    EmbeddingMLPModel,
    prediction_mlp,
)
from din_jax.models.base import embed_rows
from din_jax.models.gru import EVOLUTIONS, GRU


def auxiliary_loss(aux_net, states_BxTxH, clicked_BxTxD, negatives_BxTxD, valid_BxT, axis_name=None):
    """The paper's eq. 5: ``-[log sigmoid(s(h_t, e_{t+1})) + log(1 - sigmoid(s(h_t, e'_{t+1})))]`` averaged over
    the positions where ``t + 1`` is valid (over every device's, with ``axis_name``); ``s`` is ``aux_net``."""
    states = states_BxTxH[:, :-1]
    valid = valid_BxT[:, 1:].astype(jnp.float32)
    click = aux_net(jnp.concatenate([states, clicked_BxTxD[:, 1:].astype(states.dtype)], axis=-1))
    other = aux_net(jnp.concatenate([states, negatives_BxTxD[:, 1:].astype(states.dtype)], axis=-1))
    losses = -(jax.nn.log_sigmoid(click) + jax.nn.log_sigmoid(-other))
    total, count = jnp.sum(valid * losses), jnp.sum(valid)
    if axis_name is not None:
        # The global mean, pmean-ed like the data loss: each device's share of the global count.
        count = jax.lax.psum(count, axis_name) / jax.lax.psum(1.0, axis_name)
    return total / jnp.maximum(count, 1.0)


class DIEN(EmbeddingMLPModel):
    """DIEN; sizes and parts are fields.

    Attributes (besides the embedding and MLP fields of ``EmbeddingMLPModel``):
      evolution: ``augru`` (the paper's), ``aigru`` or ``agru``.
      aux_loss_weight: the auxiliary loss's weight (the paper: 1.0; 0 turns it off, and no negatives are drawn).
      aux_hidden: the auxiliary net's hidden layers (sigmoid, as the authors').
      attention_hidden, attention_activation: DIN's activation unit between the candidate and the states.
    """

    evolution: str = "augru"
    aux_loss_weight: float = 1.0
    aux_hidden: Sequence[int] = (100, 50)
    attention_hidden: Sequence[int] = (80, 40)
    attention_activation: Union[str, ActivationFactory] = "sigmoid"

    # Read by the trainer: the histories must be padded rows; training batches carry sampled negatives.
    packed_history = False

    @staticmethod
    def history_negatives(fields: Dict[str, Any]) -> bool:
        """Whether training batches need negatives: only with the auxiliary loss on."""
        return fields.get("aux_loss_weight", 0) > 0

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False, return_attention: bool = False):
        """Scores a padded batch dict: float32 logits ``[B]``, with ``return_attention`` also the attention weights
        ``[B, T]`` (zero on padding); training batches with ``HISTORY_NEGATIVES`` put the weighted auxiliary loss
        into the ``losses`` collection."""
        if self.evolution not in EVOLUTIONS:
            raise ValueError("--evolution must be one of %s, got %r" % (list(EVOLUTIONS), self.evolution))
        embedded, history_BxTxD, valid_BxT = embed_rows(self, batch, "dien reads each history in order")
        positions, candidate_BxD = embedded["positions"], embedded["candidate"]
        width = history_BxTxD.shape[-1]

        states_BxTxD, _ = GRU(width, "gru", self.dtype, name="interest_extractor")(history_BxTxD, valid_BxT)
        if self.aux_loss_weight > 0 and (train or self.is_initializing()):
            negatives_PxD = embedded["history_negatives"]
            if negatives_PxD is None and not self.is_initializing():
                raise ValueError("dien's auxiliary loss needs training batches with %s" % (HISTORY_NEGATIVES,))
            # At initialisation without negatives, the clicked items stand in (only the shapes matter).
            negatives_BxTxD = history_BxTxD if negatives_PxD is None else positions.rows(negatives_PxD)
            aux_net = MLP(tuple(self.aux_hidden), "sigmoid", dtype=self.dtype, name="auxiliary_net")
            axis_name = None if self.is_initializing() else self.axis_name  # initialisation runs outside pmap
            aux = auxiliary_loss(aux_net, states_BxTxD, history_BxTxD, negatives_BxTxD, valid_BxT, axis_name)
            if self.is_mutable_collection(LOSSES):
                self.put_variable(LOSSES, "auxiliary", self.aux_loss_weight * aux)

        attention = DinAttention(
            hidden=tuple(self.attention_hidden),
            activation=self.attention_activation,
            normalization="softmax",
            dtype=self.dtype,
            axis_name=self.axis_name,
            name="attention_unit",
        )
        _, weights_P = attention(candidate_BxD, states_BxTxD.reshape((-1, width)), positions, train=train)
        weights_BxT = positions.rows(weights_P)
        evolve = GRU(width, self.evolution, self.dtype, name="interest_evolution")
        _, interest_BxD = evolve(states_BxTxD, valid_BxT, weights_BxT)

        history_sum_BxD = positions.weighted_sum(positions.valid_P, embedded["history"])
        features = [interest_BxD, candidate_BxD, history_sum_BxD, candidate_BxD * history_sum_BxD]
        if embedded["user"] is not None:
            features.append(embedded["user"])
        logits_B = prediction_mlp(self)(jnp.concatenate(features, axis=-1), train=train)
        if embedded["item_bias"] is not None:
            logits_B = logits_B + embedded["item_bias"].astype(jnp.float32)
        if return_attention:
            return logits_B, weights_BxT
        return logits_B
