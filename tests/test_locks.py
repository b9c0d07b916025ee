"""One run per run directory and one grid per results file: a second refuses, naming the holder."""

import os

import pytest

from din_jax import ablation
from din_jax.config import ConfigError, TrainConfig
from din_jax.fileio import ExclusiveLock, LockHeld
from din_jax.train.loop import Trainer

SMALL = dict(
    use_synthetic_data=True,
    synthetic_samples=(64, 16, 16),
    max_seq_len=4,
    micro_batch_size=8,
    device_iterations=2,
    replicas=1,
    epochs=1,
    checkpoint_every=0,
    model_config={"item_dim": 2, "category_dim": 2, "attention_hidden": (4,), "mlp_hidden": (4,)},
)


def test_a_second_run_into_the_same_directory_refuses_until_the_first_ends(tmp_path):
    config = TrainConfig(model_path=str(tmp_path / "run"), **SMALL)
    first = Trainer(config)
    with pytest.raises(ConfigError, match=r"--model_path .*run is in use by pid %d on " % os.getpid()):
        Trainer(config)
    summary = first.train(handle_signals=False)  # releases the directory at its end
    assert summary["steps"] == 64 // 8
    Trainer(TrainConfig(model_path=config.model_path, resume=True, **SMALL)).release()


def test_a_lock_file_left_by_a_dead_run_does_not_block(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / ".lock").write_text("pid 999999 on elsewhere since 2020-01-01 00:00:00 (train.py)\n")
    Trainer(TrainConfig(model_path=str(path), **SMALL)).release()


def test_a_second_grid_on_one_results_file_refuses(tmp_path):
    results = str(tmp_path / "grid.jsonl")
    with ExclusiveLock(results + ".lock", "another grid"):
        with pytest.raises(LockHeld, match="--results .*grid.jsonl is in use by pid"):
            ablation.run_grid([ablation.Cell("din", ("--model=din",))], [1], results, None, None)
    assert not os.path.exists(results)  # nothing was written


def test_a_full_disk_while_saving_an_array_names_the_file_and_the_disk(tmp_path, monkeypatch):
    import numpy as np

    from din_jax import fileio

    def short_write(handle, array, allow_pickle):
        raise OSError("778490 requested and 362464 written")

    monkeypatch.setattr(fileio.np, "save", short_write)
    path = str(tmp_path / "sequences.npy")
    with pytest.raises(OSError, match=r"sequences.npy: the disk is full \(or over quota\): could not write 40 bytes"):
        fileio.save_array(path, np.zeros(10, np.int32))
