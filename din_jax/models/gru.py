"""GRUs over padded histories, with DIEN's attentional variants (Zhou et al., AAAI 2019, section 4.3).

The cell is the paper's (eq. 1-4), the reset gate applied after the recurrent product as in cuDNN and PyTorch:

    u = sigmoid(W_u i + U_u h + b_u),  r = sigmoid(W_r i + U_r h + b_r),  n = tanh(W_n i + r * (U_n h) + b_n)
    h' = (1 - u) * h + u * n

``kind`` picks how an attention score ``a`` (one per position) enters: ``gru`` not at all; ``aigru`` scales the
input (``i' = a i``); ``agru`` replaces the update gate (``u = a``); ``augru`` scales it (``u' = a u``, the paper's
eq. 6, as FuxiCTR's ``AUGRUCell``). The authors' TensorFlow code (mouna99/dien, ``VecAttGRUCell``) scales the
*keep* fraction instead (``(1 - a) u`` with TensorFlow's reversed ``u``), so that ``a = 0`` leaves a plain GRU
step rather than holding the state; we follow the paper.

A ``lax.scan`` over the positions of ``[B, T, ...]`` inputs: at padded positions (``valid`` False) the state is
carried unchanged and the output is 0, so padding can change nothing and gets exactly zero gradient, and the final
state is the state after each row's last valid position. Static shapes throughout (the IPU's one program).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

GRU_KINDS = ("gru", "aigru", "agru", "augru")
EVOLUTIONS = ("augru", "aigru", "agru")


def gru_step(kind: str, kernel_h, bias, h_BxH, x_proj_Bx3H, valid_B, score_B):
    """One step: the next state ``[B, H]`` from the input's projection ``x W`` (without bias), the state, the
    position's validity and attention score (ignored for ``gru``)."""
    hidden = h_BxH.shape[-1]
    a_Bx1 = score_B[:, None].astype(h_BxH.dtype)
    if kind == "aigru":
        x_proj_Bx3H = a_Bx1 * x_proj_Bx3H  # (a x) W = a (x W)
    x_proj_Bx3H = x_proj_Bx3H + bias
    h_proj_Bx3H = h_BxH @ kernel_h
    update = jax.nn.sigmoid(x_proj_Bx3H[:, :hidden] + h_proj_Bx3H[:, :hidden])
    reset = jax.nn.sigmoid(x_proj_Bx3H[:, hidden : 2 * hidden] + h_proj_Bx3H[:, hidden : 2 * hidden])
    candidate = jnp.tanh(x_proj_Bx3H[:, 2 * hidden :] + reset * h_proj_Bx3H[:, 2 * hidden :])
    if kind == "augru":
        update = a_Bx1 * update
    elif kind == "agru":
        update = jnp.broadcast_to(a_Bx1, update.shape)
    new_BxH = h_BxH + update * (candidate - h_BxH)
    return jnp.where(valid_B[:, None], new_BxH, h_BxH)


class GRU(nn.Module):
    """A GRU (``kind``: ``GRU_KINDS``) of ``hidden`` units over ``[B, T, I]`` inputs; returns the outputs ``[B, T,
    H]`` (0 at padded positions) and the final state ``[B, H]``. Glorot-uniform input kernel, orthogonal recurrent
    kernel, zero biases, zero initial state."""

    hidden: int
    kind: str = "gru"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs_BxTxI, valid_BxT, scores_BxT=None):
        if self.kind not in GRU_KINDS:
            raise ValueError("unknown GRU kind %r; choose from %s" % (self.kind, list(GRU_KINDS)))
        if self.kind != "gru" and scores_BxT is None:
            raise ValueError("a %s needs attention scores" % self.kind)
        batch, _, width = inputs_BxTxI.shape
        hidden = self.hidden
        kernel_x = self.param("input_kernel", nn.initializers.glorot_uniform(), (width, 3 * hidden), jnp.float32)
        kernel_h = self.param("recurrent_kernel", nn.initializers.orthogonal(), (hidden, 3 * hidden), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (3 * hidden,), jnp.float32)
        kernel_x, kernel_h, bias = (p.astype(self.dtype) for p in (kernel_x, kernel_h, bias))
        # The input projection of every position at once; the scan carries only the recurrent part.
        x_proj_TxBx3H = jnp.swapaxes(inputs_BxTxI.astype(self.dtype) @ kernel_x, 0, 1)
        valid_TxB = jnp.swapaxes(valid_BxT.astype(bool), 0, 1)
        scores_TxB = jnp.zeros(valid_TxB.shape, self.dtype) if scores_BxT is None else jnp.swapaxes(scores_BxT, 0, 1)
        kind = self.kind

        def step(h_BxH, inputs):
            x_proj, valid, score = inputs
            new_BxH = gru_step(kind, kernel_h, bias, h_BxH, x_proj, valid, score)
            return new_BxH, jnp.where(valid[:, None], new_BxH, 0.0)

        initial = jnp.zeros((batch, hidden), self.dtype)
        final_BxH, outputs_TxBxH = jax.lax.scan(step, initial, (x_proj_TxBx3H, valid_TxB, scores_TxB))
        return jnp.swapaxes(outputs_TxBxH, 0, 1), final_BxH
