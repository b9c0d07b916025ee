"""Named configurations: model fields plus the training settings that go with them.

A preset is only a dictionary; the train command applies it first and lets
every flag given on the command line override it.
"""

from typing import Any, Dict

PRESETS: Dict[str, Dict[str, Any]] = {
    # The authors' Amazon code (zhougr1993/DeepInterestNetwork, din/): item 64 +
    # category 64, attention 80-40 sigmoid with a masked softmax over
    # score / sqrt(D), MLP 80-40 sigmoid, per-item bias, SGD batch 32 with the
    # learning rate 1.0 dropped to 0.1 after 336,000 steps.
    "din_amazon": {
        "model": "din",
        "model_config": {
            "item_dim": 64, "category_dim": 64, "user_dim": 0, "use_item_bias": True,
            "attention": "din", "attention_hidden": (80, 40), "attention_activation": "sigmoid",
            "attention_normalization": "softmax", "mlp_hidden": (80, 40), "activation": "sigmoid",
        },
        "train_config": {
            "optimizer": "sgd", "learning_rate": 1.0, "lr_schedule": "paper", "lr_decay_steps": 336000,
            "micro_batch_size": 32,
        },
    },
    # The paper's DIN (section 4 and 6): unnormalised attention weights, MLP
    # 200-80 with PReLU (use --activation dice for DIN + Dice).
    "din_paper": {
        "model": "din",
        "model_config": {
            "item_dim": 64, "category_dim": 64, "user_dim": 0, "use_item_bias": True,
            "attention": "din", "attention_hidden": (80, 40), "attention_activation": "sigmoid",
            "attention_normalization": "none", "mlp_hidden": (200, 80), "activation": "prelu",
        },
        "train_config": {
            "optimizer": "sgd", "learning_rate": 1.0, "lr_schedule": "paper", "lr_decay_steps": 336000,
            "micro_batch_size": 32,
        },
    },
    # Graphcore's TF1 IPU port (DIEN code base): item 18 + category 18 (their
    # attention size 36), user 18, MLP 200-80 with Dice, the MLP also sees the
    # sum-pooled history, attention 80-40 sigmoid with a masked softmax.
    "din_graphcore": {
        "model": "din",
        "model_config": {
            "item_dim": 18, "category_dim": 18, "user_dim": 18, "use_item_bias": False,
            "attention": "din", "attention_hidden": (80, 40), "attention_activation": "sigmoid",
            "attention_normalization": "softmax", "mlp_hidden": (200, 80), "activation": "dice",
            "use_history_sum": True,
        },
        "train_config": {
            "optimizer": "sgd", "learning_rate": 0.1, "lr_schedule": "fixed", "micro_batch_size": 32,
        },
    },
    # The competitors as the authors' Amazon code configures them
    # (zhougr1993/DeepInterestNetwork base_model/, wide_deep/, pnn/, deepFM/):
    # item 64 + category 64, mean-pooled history, MLP 80-40 sigmoid, per-item
    # bias; SGD batch 32 at 1.0 (0.1 after 336,000 steps), DeepFM Adam 0.001.
    # The model parts follow this project's definitions (see each module).
    "base_amazon": {
        "model": "base",
        "model_config": {
            "item_dim": 64, "category_dim": 64, "user_dim": 0, "use_item_bias": True, "pooling": "mean",
            "mlp_hidden": (80, 40), "activation": "sigmoid",
        },
        "train_config": {
            "optimizer": "sgd", "learning_rate": 1.0, "lr_schedule": "paper", "lr_decay_steps": 336000,
            "micro_batch_size": 32,
        },
    },
    "wide_deep_amazon": {
        "model": "wide_deep",
        "model_config": {
            "item_dim": 64, "category_dim": 64, "user_dim": 0, "use_item_bias": True, "pooling": "mean",
            "mlp_hidden": (80, 40), "activation": "sigmoid",
        },
        "train_config": {
            "optimizer": "sgd", "learning_rate": 1.0, "lr_schedule": "paper", "lr_decay_steps": 336000,
            "micro_batch_size": 32,
        },
    },
    # The authors' "PNN" is the element-wise product of history and candidate.
    "pnn_amazon": {
        "model": "pnn",
        "model_config": {
            "item_dim": 64, "category_dim": 64, "user_dim": 0, "use_item_bias": True, "pooling": "mean",
            "product": "elementwise", "mlp_hidden": (80, 40), "activation": "sigmoid",
        },
        "train_config": {
            "optimizer": "sgd", "learning_rate": 1.0, "lr_schedule": "paper", "lr_decay_steps": 336000,
            "micro_batch_size": 32,
        },
    },
    "deepfm_amazon": {
        "model": "deepfm",
        "model_config": {
            "item_dim": 64, "category_dim": 64, "user_dim": 0, "use_item_bias": True, "pooling": "mean",
            "mlp_hidden": (80, 40), "activation": "sigmoid",
        },
        "train_config": {"optimizer": "adam", "learning_rate": 0.001, "lr_schedule": "fixed", "micro_batch_size": 32},
    },
}


def get_preset(name: str) -> Dict[str, Any]:
    """A deep-enough copy of a preset, so that callers may edit it."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError("unknown preset %r; choose from %s" % (name, sorted(PRESETS))) from None
    return {
        "model": preset["model"],
        "model_config": dict(preset["model_config"]),
        "train_config": dict(preset["train_config"]),
    }
