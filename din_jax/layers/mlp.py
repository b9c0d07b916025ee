"""The prediction MLP shared by the models."""

from typing import Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers.activations import ActivationFactory, make_activation


class MLP(nn.Module):
    """Dense layers with a named activation, then a linear layer to one logit.

    Attributes:
      hidden: hidden widths (80-40 in the authors' Amazon code, 200-80 in the
        paper and Graphcore's).
      activation: registry name or factory (``prelu``, ``dice``, ...).
      dropout_rate: dropout after every hidden activation in training.
    """

    hidden: Sequence[int] = (80, 40)
    activation: Union[str, ActivationFactory] = "prelu"
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x_BxF, train: bool = False):
        """Returns float32 logits of shape [B]."""
        h = x_BxF.astype(self.dtype)
        for width in self.hidden:
            h = nn.Dense(width, dtype=self.dtype)(h)
            h = make_activation(self.activation, self.axis_name)(h, train=train)
            if self.dropout_rate > 0:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return nn.Dense(1, dtype=self.dtype)(h)[..., 0].astype(jnp.float32)
