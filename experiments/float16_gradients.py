"""How much of the gradient float16 loses, with and without loss scaling (docs/PERFORMANCE.md).

    python experiments/float16_gradients.py --dataset build/grocery --max_seq_len 30 --attention_size 32 \\
        --attention_hidden 80,40 --mlp_hidden 80,40 --activation prelu --micro_batch_size 512

Takes the model and data flags of train.py, initialises the model with
--seed, and computes the gradient of one micro-batch (the first
--micro_batch_size training samples in a --seed permutation) three times:
in float32, in float16 without scaling, and in float16 with --loss_scaling
(1024 when 0). For every parameter it prints the relative error
|g16 - g32| / |g32| and the share of the float32 gradient's nonzero entries
that float16 turned into zeros.
"""

import dataclasses

import flag_defs
import flax
import jax
import numpy as np
from absl import flags
from flax import traverse_util

from din_jax.config import DEFAULT_FLOAT16_LOSS_SCALING, ConfigError
from din_jax.data.dataset import DatasetError
from din_jax.train import step as train_lib
from din_jax.train.setup import build_model_for, load_source, vocabulary

flag_defs.define_model_flags()
flag_defs.define_run_flags(micro_batch_size=512, epochs=1)
flag_defs.define_aliases()
FLAGS = flags.FLAGS


def _gradient(config, vocab, data_type, loss_scale, variables, batch):
    """``{parameter path: float64 gradient}`` of the batch's loss, computed in ``data_type``."""
    model = build_model_for(dataclasses.replace(config, data_type=data_type), vocab, axis_name=None)

    def loss_fn(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, batch, train=True, mutable=["batch_stats"]
        )
        return train_lib.compute_loss(logits, batch["label"]), None

    _, grads = jax.jit(train_lib.value_and_scaled_grad(loss_fn, loss_scale))(variables["params"])
    return {
        "/".join(key): np.asarray(value, np.float64)
        for key, value in traverse_util.flatten_dict(flax.core.unfreeze(grads)).items()
    }


def main(argv):
    del argv
    try:
        config = flag_defs.build_train_config()
        source = load_source(config)
        vocab = vocabulary(source)
        variables = train_lib.init_variables(
            build_model_for(config, vocab, axis_name=None), config.seed, config.max_seq_len
        )
        rows = np.random.default_rng(config.seed).permutation(source.num_samples("train"))[: config.micro_batch_size]
        batch = {key: np.asarray(value) for key, value in source.gather("train", rows, config.max_seq_len).items()}
    except (ConfigError, DatasetError, ValueError, OSError) as error:
        flag_defs.fail("float16_gradients.py", error)
    scale = config.loss_scaling or DEFAULT_FLOAT16_LOSS_SCALING
    reference = _gradient(config, vocab, "float32", 1.0, variables, batch)
    plain = _gradient(config, vocab, "float16", 1.0, variables, batch)
    scaled = _gradient(config, vocab, "float16", scale, variables, batch)
    print(
        "%d samples, max_seq_len %d; relative error (zeroed share of nonzero entries)" % (len(rows), config.max_seq_len)
    )
    print("%-40s %22s %22s" % ("parameter", "float16 unscaled", "float16 x %g" % scale))
    for key, want in reference.items():
        norm = np.linalg.norm(want)
        if norm == 0:
            continue
        nonzero = want != 0
        cells = []
        for got in (plain[key], scaled[key]):
            zeroed = np.sum(nonzero & (got == 0)) / max(np.sum(nonzero), 1)
            cells.append("%8.2f %% (%5.1f %%)" % (100 * np.linalg.norm(got - want) / norm, 100 * zeroed))
        print("%-40s %22s %22s" % (key, cells[0], cells[1]))


if __name__ == "__main__":
    flag_defs.run(main)
