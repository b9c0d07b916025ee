"""How flags, presets, command defaults and checkpoints resolve into a TrainConfig (din_jax/config.py)."""

import pytest

from din_jax.config import ConfigError, checkpoint_metadata, config_from_checkpoint, get_preset, resolve_config


def test_explicit_flags_win_over_the_preset_which_wins_over_command_defaults():
    defaults = {"micro_batch_size": 512, "epochs": 1}
    plain = resolve_config(None, {"use_synthetic_data": True}, defaults)
    assert (plain.micro_batch_size, plain.epochs) == (512, 1)
    preset = resolve_config("din_paper", {"use_synthetic_data": True}, defaults)
    assert preset.micro_batch_size == get_preset("din_paper")["train_config"]["micro_batch_size"] == 32
    assert preset.epochs == 1 and preset.model_config["mlp_hidden"] == (200, 80)
    given = resolve_config("din_paper", {"use_synthetic_data": True, "micro_batch_size": 8, "mlp_hidden": ["7"]})
    assert given.micro_batch_size == 8 and given.model_config["mlp_hidden"] == (7,)


def test_widths_attention_size_splits_and_explicit_widths_win():
    config = resolve_config(None, {"use_synthetic_data": True, "attention_size": 8, "item_dim": 6})
    assert (config.model_config["item_dim"], config.model_config["category_dim"]) == (6, 4)
    with pytest.raises(ConfigError, match="--attention_size must be an even number"):
        resolve_config(None, {"use_synthetic_data": True, "attention_size": 7})


def test_bad_values_name_their_flag():
    with pytest.raises(ConfigError, match="--mlp_hidden must be comma-separated integers, got 80,abc"):
        resolve_config(None, {"use_synthetic_data": True, "mlp_hidden": ["80", "abc"]})
    with pytest.raises(ConfigError, match="--mlp_hidden: every layer width must be >= 1"):
        resolve_config(None, {"use_synthetic_data": True, "mlp_hidden": ["0"]})
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve_config(None, {"use_synthetic_data": True, "no_such_flag": 1})
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("no_such_preset", {"use_synthetic_data": True})


def test_fields_a_model_lacks_are_dropped():
    config = resolve_config(None, {"use_synthetic_data": True, "model": "lr", "attention": "dot"})
    assert "attention" not in config.model_config and config.model == "lr"


def test_a_checkpoint_config_round_trips_and_model_flags_apply_to_any_model():
    trained = resolve_config(None, {"use_synthetic_data": True, "model": "wide_deep", "max_seq_len": 8, "seed": 5})
    vocab = {"users": 3, "items": 9, "categories": 2}
    meta = checkpoint_metadata(trained, vocab, step=7)
    again = config_from_checkpoint(meta)
    assert (again.model, again.model_config, again.max_seq_len, again.seed) == (
        trained.model,
        trained.model_config,
        trained.max_seq_len,
        trained.seed,
    )
    assert again.use_synthetic_data and again.synthetic_samples == trained.synthetic_samples
    changed = config_from_checkpoint(meta, {"pooling": "sum", "wide_buckets": 50, "attention_size": 6})
    assert changed.model_config["pooling"] == "sum" and changed.model_config["wide_buckets"] == 50
    assert (changed.model_config["item_dim"], changed.model_config["category_dim"]) == (3, 3)
    with pytest.raises(ConfigError, match="--preset is for train.py"):
        config_from_checkpoint(meta, {"preset": "din_paper"})


def test_dropout_and_seed_out_of_range_are_refused_naming_the_flag():
    with pytest.raises(ConfigError, match=r"--dropout must be a rate in \[0, 1\), got 2.0"):
        resolve_config(None, {"use_synthetic_data": True, "dropout": 2.0})
    with pytest.raises(ConfigError, match="--seed must be >= 0, got -1"):
        resolve_config(None, {"use_synthetic_data": True, "seed": -1})
