"""Checkpoints and resuming: an interrupted run continues exactly, broken checkpoints fail clearly."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from din_jax import checkpoint as ckpt
from din_jax.config import ConfigError, TrainConfig
from din_jax.data.batching import plan_epoch
from din_jax.train import loop as training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 640 samples, global batch 32 on two devices: 20 steps per epoch in 5 calls of
# 4 steps, plus one when a packed micro-batch overflows (epoch 1 here:
# test_the_packed_epochs_have_the_steps_the_checkpoints_assume); Dice (batch statistics), dropout (the dropout key), Adam (optimiser
# state), fresh negatives every epoch (the sampler's state) and evaluations
# inside epochs (the history) must all be restored for the result to match.
CONFIG = dict(
    use_synthetic_data=True,
    synthetic_samples=(640, 128, 128),
    max_seq_len=8,
    epochs=2,
    micro_batch_size=16,
    eval_micro_batch_size=64,
    device_iterations=4,
    replicas=0,
    optimizer="adam",
    learning_rate=0.01,
    eval_every=6,
    checkpoint_every=5,
    keep_checkpoints=2,
    resample_negatives=True,
    model_config={
        "item_dim": 4,
        "category_dim": 4,
        "attention_hidden": (8,),
        "mlp_hidden": (8,),
        "activation": "dice",
        "dropout_rate": 0.2,
    },
)


class _StopAt:
    """Calls ``action()`` at the given on_train_call counts."""

    def __init__(self, calls, action):
        self.calls = set(calls)
        self.seen = 0
        self.action = action

    def on_train_call(self, record):
        self.seen += 1
        if self.seen in self.calls:
            self.action()


def _train_and_stop(config, calls, source=None):
    """Trains ``config``, asking the Trainer to stop at the given on_train_call counts."""
    stopper = _StopAt(calls, None)
    trainer = training.Trainer(config, source, hooks=[stopper])
    stopper.action = lambda: trainer.request_stop("a test")
    return trainer.train()


def _flat(path):
    return ckpt.load_checkpoint(path)[0]


def _assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    different = [key for key in a if not np.array_equal(a[key], b[key])]
    assert not different, "differ: %s" % different[:5]


def _comparable(summary):
    keys = ("history", "best_step", "steps", "validation", "test")
    return json.dumps({k: summary[k] for k in keys}, sort_keys=True, default=str)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("straight") / "run")
    summary = training.train_and_evaluate(TrainConfig(model_path=path, **CONFIG))
    return path, summary


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit(straight_run, tmp_path):
    straight_path, straight = straight_run
    path = str(tmp_path / "run")
    if jax.local_device_count() < 2:
        pytest.skip("needs two CPU devices (tests/conftest.py)")
    previous_handler = signal.getsignal(signal.SIGINT)

    # 1. Ctrl-C in the middle of epoch 1 (during the second call's metrics):
    #    the handler only sets a flag; the loop saves a checkpoint at the
    #    next call boundary and raises.
    with pytest.raises(training.TrainingInterrupted, match=r"stopped by SIGINT at step \d+ \(epoch 1\)") as stop:
        training.train_and_evaluate(
            TrainConfig(model_path=path, **CONFIG), hooks=[_StopAt([2], lambda: os.kill(os.getpid(), signal.SIGINT))]
        )
    assert stop.value.signum == signal.SIGINT and stop.value.step == 8
    assert signal.getsignal(signal.SIGINT) is previous_handler  # restored
    assert os.path.isfile(os.path.join(stop.value.checkpoint, ckpt.STATE_FILE))

    # 2. Resume (without prefetching: the data must not depend on it) and stop
    #    on the last call of epoch 1: the stop waits for the epoch's end.
    resumed = TrainConfig(model_path=path, resume=True, **dict(CONFIG, prefetch=0))
    with pytest.raises(training.TrainingInterrupted, match=r"at step 20 \(epoch 1\)"):
        _train_and_stop(resumed, [3])

    # 3. Resume, then simulate `kill -9` after two more checkpoints: drop the
    #    newest, so the next resume replays the steps after the one before.
    with pytest.raises(training.TrainingInterrupted):
        _train_and_stop(resumed, [3])
    checkpoints = ckpt.list_step_checkpoints(os.path.join(path, "checkpoints"))
    assert len(checkpoints) == 2  # --keep_checkpoints
    newest_step, newest = checkpoints[-1]
    os.rename(newest, os.path.join(path, "checkpoints", ".step_%d.tmp-killed" % newest_step))

    # 4. Resume to the end.
    summary = training.train_and_evaluate(resumed)
    assert summary["resumed_from"] == [8, 20, checkpoints[0][0]]
    assert _comparable(summary) == _comparable(straight)
    _assert_same_arrays(_flat(os.path.join(path, "last")), _flat(os.path.join(straight_path, "last")))
    _assert_same_arrays(_flat(os.path.join(path, "best")), _flat(os.path.join(straight_path, "best")))
    # The half-written directory of the "killed" save was cleaned up.
    assert not [n for n in os.listdir(os.path.join(path, "checkpoints")) if n.startswith(".")]


def _epoch_steps(config, epoch, replicas):
    source = training.load_source(config)
    return sum(int(call.shape[1]) for call in plan_epoch(source, config, epoch, replicas).calls)


def test_the_packed_epochs_have_the_steps_the_checkpoints_assume():
    config = TrainConfig(**CONFIG)
    assert [_epoch_steps(config, epoch, 2) for epoch in (1, 2)] == [21, 20]
    assert _epoch_steps(TrainConfig(**dict(CONFIG, replicas=1)), 1, 1) == 41
    padded = TrainConfig(**dict(CONFIG, batching="padded"))
    assert [_epoch_steps(padded, epoch, 2) for epoch in (1, 2)] == [20, 20]


def test_checkpoints_are_kept_k_at_a_time_with_checksums(straight_run):
    path, summary = straight_run
    checkpoints = ckpt.list_step_checkpoints(os.path.join(path, "checkpoints"))
    # Every 5 steps at call boundaries (4, 8, ..., 20, 21 | 25, ..., 41), the last 2 kept.
    assert [step for step, _ in checkpoints] == [37, 41]
    flat, meta = ckpt.load_checkpoint(checkpoints[-1][1])
    assert meta["train"]["epoch"] == 2 and meta["train"]["epoch_complete"]
    assert meta["step"] == summary["steps"] == 41
    assert int(flat["state/step"]) == 41
    assert any(key.startswith("state/opt_state/") for key in flat)
    assert any(key.startswith("best/params/") for key in flat)
    categories = ckpt.load_array(checkpoints[-1][1], "item_category", meta)
    assert categories.shape == (meta["vocabulary"]["items"],)


def _interrupted_run(path, **overrides):
    config = TrainConfig(model_path=path, **dict(CONFIG, replicas=1, **overrides))
    with pytest.raises(training.TrainingInterrupted):
        _train_and_stop(config, [3])
    return config


def test_broken_or_mismatched_checkpoints_give_one_line_errors_and_stay(tmp_path):
    path = str(tmp_path / "run")
    config = _interrupted_run(path, checkpoint_every=4)
    checkpoints = ckpt.list_step_checkpoints(os.path.join(path, "checkpoints"))
    assert len(checkpoints) == 2
    resume = dict(CONFIG, replicas=1, checkpoint_every=4, resume=True)

    def resume_error(**changes):
        with pytest.raises(Exception) as error:
            training.Trainer(TrainConfig(model_path=path, **dict(resume, **changes)))
        message = str(error.value)
        assert "\n" not in message
        return error.value

    # A fresh run never silently replaces an unfinished one.
    fresh = dict(resume, resume=False)
    with pytest.raises(ConfigError, match="unfinished run .* pass --resume"):
        training.Trainer(TrainConfig(model_path=path, **fresh))
    # Model flags, training settings and data that do not match name what differs.
    error = resume_error(model_config=dict(CONFIG["model_config"], mlp_hidden=(16,)))
    assert isinstance(error, ckpt.CheckpointError) and "mlp_hidden" in str(error)
    assert "--seed" in str(resume_error(seed=7))
    assert "--micro_batch_size" in str(resume_error(micro_batch_size=8))
    # Every difference at once, in one line.
    message = str(
        resume_error(
            seed=7,
            micro_batch_size=8,
            positions_per_pass=64,
            model_config=dict(CONFIG["model_config"], mlp_hidden=(16,)),
        )
    )
    for name in (
        "--seed is 7 here but 1234",
        "--micro_batch_size is 8 here but 16",
        "--positions_per_pass is 64 here but 0",
        "model setting mlp_hidden is [16] here but [8]",
    ):
        assert name in message, message
    from din_jax.data.synthetic import make_synthetic_dataset

    other_data = make_synthetic_dataset(640, 128, 128, max_seq_len=8, num_items=400, seed=config.seed)
    with pytest.raises(ckpt.CheckpointError, match="vocabulary"):
        training.Trainer(TrainConfig(model_path=path, **resume), source=other_data)

    # A flipped byte in the newest checkpoint: named, with the way out.
    newest = checkpoints[-1][1]
    before = {name: os.path.getmtime(os.path.join(newest, name)) for name in os.listdir(newest)}
    state_file = os.path.join(newest, ckpt.STATE_FILE)
    data = bytearray(open(state_file, "rb").read())
    data[len(data) // 3] ^= 0x01
    open(state_file, "wb").write(bytes(data))
    error = resume_error()
    assert isinstance(error, ckpt.CheckpointError)
    assert "corrupt" in str(error) and newest in str(error) and "step %d" % checkpoints[0][0] in str(error)
    # A truncated file and a truncated JSON.
    open(state_file, "wb").write(bytes(data[: len(data) // 2]))
    assert "corrupt" in str(resume_error())
    meta_file = os.path.join(newest, ckpt.META_FILE)
    text = open(meta_file).read()
    open(meta_file, "w").write(text[: len(text) // 2])
    assert "not valid JSON" in str(resume_error())
    # Nothing was overwritten or removed by the failed attempts.
    assert ckpt.list_step_checkpoints(os.path.join(path, "checkpoints")) == checkpoints
    assert set(os.listdir(newest)) == set(before)
    ckpt.load_checkpoint(checkpoints[0][1])


def test_a_finished_run_resumes_to_itself_and_a_fresh_run_replaces_it(tmp_path):
    path = str(tmp_path / "run")
    settings = dict(CONFIG, replicas=1, epochs=1, checkpoint_every=0)
    first = training.train_and_evaluate(TrainConfig(model_path=path, **settings))
    assert [s for s, _ in ckpt.list_step_checkpoints(os.path.join(path, "checkpoints"))] == [41]
    # Resuming a finished run trains nothing and reports the same.
    again = training.train_and_evaluate(TrainConfig(model_path=path, resume=True, **settings))
    assert _comparable(again) == _comparable(first)
    # What the earlier run's hooks and --plots left.
    os.makedirs(os.path.join(path, "plots"))
    open(os.path.join(path, "plots", "training_curves.png"), "wb").write(b"png")
    os.makedirs(os.path.join(path, "tensorboard"))
    open(os.path.join(path, "tensorboard", "events.out.tfevents.1.host"), "wb").write(b"events")
    open(os.path.join(path, "tensorboard", "notes.txt"), "w").write("the user's")
    open(os.path.join(path, "train_log.jsonl"), "w").write('{"event": "end", "step": 41}\n')
    previous = (
        "best",
        "last",
        "checkpoints",
        "summary.json",
        "plots",
        "train_log.jsonl",
        os.path.join("tensorboard", "events.out.tfevents.1.host"),
    )

    # A fresh run refused for another reason deletes nothing.
    with pytest.raises(ConfigError):
        training.train_and_evaluate(TrainConfig(model_path=path, **dict(settings, model_config={"no_such": 1})))
    assert all(os.path.exists(os.path.join(path, name)) for name in previous)

    # A fresh run in the same directory replaces it: nothing of the earlier
    # run is left for infer.py or the figures to mistake for this one's.
    left = {}

    class Look:
        def on_train_begin(self, record):
            left.update({name: os.path.exists(os.path.join(path, name)) for name in previous})

    os.remove(os.path.join(path, "checkpoints", "step_41", ckpt.STATE_FILE))  # it is not even read
    fresh = training.train_and_evaluate(TrainConfig(model_path=path, **settings), hooks=[Look()])
    assert left and not any(left.values()), left
    assert os.path.isfile(os.path.join(path, "tensorboard", "notes.txt"))
    assert _comparable(fresh) == _comparable(first) and fresh["resumed_from"] == []


def test_resume_without_a_checkpoint_warns_that_it_starts_from_scratch(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(training.logging, "warning", lambda fmt, *args: warnings.append(fmt % args))
    path = str(tmp_path / "not_yet")
    training.Trainer(TrainConfig(model_path=path, resume=True, **dict(CONFIG, replicas=1)))
    assert any(
        "--resume: no checkpoint under %s (it does not exist); starting from scratch" % path in w for w in warnings
    ), warnings


def test_resume_checks_the_dataset_and_warns_on_another_evaluation_batch(tmp_path, monkeypatch):
    from din_jax.data.synthetic import make_synthetic_dataset

    settings = dict(CONFIG, replicas=1, epochs=1)
    path = str(tmp_path / "run")

    def data(sha, where):
        source = make_synthetic_dataset(*settings["synthetic_samples"], max_seq_len=8, seed=1234)
        source.meta = {
            "name": "x",
            "sources": [{"path": where, "bytes": 10, "sha256": sha}],
            "created": where,
        }  # as a built dataset's meta.json
        return source

    with pytest.raises(training.TrainingInterrupted):
        _train_and_stop(TrainConfig(model_path=path, **settings), [1], source=data("aaa", "/raw/a"))
    resume = TrainConfig(model_path=path, resume=True, **settings)
    with pytest.raises(ckpt.CheckpointError, match="trained on another dataset .*meta.json fingerprint") as error:
        training.Trainer(resume, source=data("bbb", "/raw/a"))
    assert "\n" not in str(error.value)
    # The same files, moved and built again: the same data.
    warnings = []
    monkeypatch.setattr(training.logging, "warning", lambda fmt, *args: warnings.append(fmt % args))
    training.Trainer(
        TrainConfig(model_path=path, resume=True, **dict(settings, eval_micro_batch_size=32, loss_scaling=256.0)),
        source=data("aaa", "/moved/a"),
    )
    assert any(
        "--eval_micro_batch_size 32 instead of the checkpoint's 64: training is unchanged" in w for w in warnings
    ), warnings
    assert any("--loss_scaling 256.0 instead of the checkpoint's 0.0: the run will differ" in w for w in warnings), (
        warnings
    )


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_sparse_updates_resume_bit_for_bit(tmp_path, optimizer):
    # The sparse optimiser keys its moments by table path ("embedding/item"):
    # they must come back as the same flat keys.
    settings = dict(
        CONFIG,
        replicas=1,
        synthetic_samples=(320, 64, 64),
        embedding_updates="sparse",
        optimizer=optimizer,
        epochs=1,
        eval_every=6,
        checkpoint_every=4,
    )
    straight_path, path = str(tmp_path / "straight"), str(tmp_path / "run")
    straight = training.train_and_evaluate(TrainConfig(model_path=straight_path, **settings))
    with pytest.raises(training.TrainingInterrupted, match="at step 8 "):
        _train_and_stop(TrainConfig(model_path=path, **settings), [2])
    flat = _flat(ckpt.list_step_checkpoints(os.path.join(path, "checkpoints"))[-1][1])
    assert any("/tables/" in key and key.endswith("%2Fitem") for key in flat)
    summary = training.train_and_evaluate(TrainConfig(model_path=path, resume=True, **settings))
    assert summary["resumed_from"] == [8]
    assert _comparable(summary) == _comparable(straight)
    for name in ("last", "best"):
        _assert_same_arrays(_flat(os.path.join(path, name)), _flat(os.path.join(straight_path, name)))


def _signal_at_test_evaluation(signum, times):
    class Hook:
        def on_evaluation_begin(self, record):
            if record["split"] == "test":
                for _ in range(times):
                    os.kill(os.getpid(), signum)

    return Hook()


def test_a_signal_during_the_final_test_evaluation_stops_cleanly_and_resumes(tmp_path):
    settings = dict(CONFIG, replicas=1, synthetic_samples=(320, 64, 64), epochs=1, eval_every=0)
    path = str(tmp_path / "run")
    previous_handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(
        training.TrainingInterrupted,
        match=r"stopped by SIGTERM at step 20 \(epoch 1, during the final test evaluation\): "
        r"checkpoint .*step_20; continue with --resume$",
    ) as stop:
        training.train_and_evaluate(
            TrainConfig(model_path=path, **settings), hooks=[_signal_at_test_evaluation(signal.SIGTERM, 1)]
        )
    assert stop.value.signum == signal.SIGTERM and not isinstance(stop.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is previous_handler
    assert not os.path.exists(os.path.join(path, "summary.json"))  # unfinished: a fresh run refuses
    with pytest.raises(ConfigError, match="unfinished run"):
        training.Trainer(TrainConfig(model_path=path, **settings))
    summary = training.train_and_evaluate(TrainConfig(model_path=path, resume=True, **settings))
    assert summary["test"] is not None and summary["resumed_from"] == [20]

    # A second signal stops at once, in one line, naming the checkpoint to resume from.
    with pytest.raises(
        training.TrainingAborted,
        match=r"stopped at once by a second SIGINT near step 20 "
        r"\(epoch 1\): nothing saved after checkpoint .*step_20 \(step 20\); continue with "
        r"--resume$",
    ) as abort:
        training.train_and_evaluate(
            TrainConfig(model_path=path, resume=True, **settings), hooks=[_signal_at_test_evaluation(signal.SIGINT, 2)]
        )
    assert isinstance(abort.value, KeyboardInterrupt) and abort.value.signum == signal.SIGINT


def test_a_non_finite_loss_stops_naming_the_step_keeps_the_last_good_state_and_scores_test(tmp_path):
    lr_file = tmp_path / "lr.txt"
    lr_file.write_text("0 0.01\n12 1e30\n")
    path = str(tmp_path / "run")
    config = TrainConfig(
        model_path=path,
        **dict(
            CONFIG,
            replicas=1,
            optimizer="sgd",
            lr_schedule="file",
            lr_file=str(lr_file),
            checkpoint_every=4,
            eval_every=4,
        ),
    )
    summary = training.train_and_evaluate(config)
    # Update 13 is the first at 1e30: finite but huge parameters, whose predictions are NaN; update 14's loss is
    # NaN, so the program skips it and every later one. Test is scored with the best evaluated step.
    stopped = summary["stopped"]
    assert stopped["reason"] == "non-finite" and stopped["step"] == 14
    assert "at step 14 (epoch 1)" in stopped["message"] and "\n" not in stopped["message"]
    assert summary["steps"] == 13 and summary["best_step"] in (4, 8, 12) and summary["test"] is not None
    with open(os.path.join(path, "summary.json")) as handle:
        assert json.load(handle)["stopped"]["step"] == 14
    assert ckpt.list_step_checkpoints(os.path.join(path, "checkpoints"))[-1][0] == 12
    last, _ = ckpt.load_checkpoint(os.path.join(path, "last"))
    assert all(np.all(np.isfinite(v)) for k, v in last.items() if k.startswith("params/"))


def test_sigterm_saves_a_checkpoint_and_exits_with_128_plus_the_signal(tmp_path):
    path = str(tmp_path / "run")
    args = [
        sys.executable,
        os.path.join(ROOT, "experiments", "train.py"),
        "--use_synthetic_data",
        "--synthetic_samples=2048,128,128",
        "--max_seq_len=8",
        "--attention_size=8",
        "--mlp_hidden=8",
        "--attention_hidden=8",
        "--micro_batch_size=16",
        "--eval_micro_batch_size=64",
        "--device_iterations=2",
        "--replicas=1",
        "--epochs=50",
        "--checkpoint_every=8",
        "--notensorboard",
        "--progress=none",
        "--model_path",
        path,
    ]
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if "checkpoint %s" % os.path.join(path, "checkpoints", "step_8") in line:
                process.send_signal(signal.SIGTERM)
                break
        _, rest = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = "".join(lines) + rest
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: training stopped by SIGTERM at step ")
    step = int(last.split(" at step ")[1].split()[0])
    checkpoint = ckpt.step_checkpoint_dir(os.path.join(path, "checkpoints"), step)
    assert "checkpoint %s; continue with --resume" % checkpoint in last
    flat, meta = ckpt.load_checkpoint(checkpoint)
    assert meta["step"] == step and int(flat["state/step"]) == step

    # It continues from there.
    finish = subprocess.run(
        args[:-2] + ["--model_path", path, "--resume", "--epochs=1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert "resuming from %s: step %d" % (checkpoint, step) in finish.stderr
    assert json.load(open(os.path.join(path, "summary.json")))["resumed_from"] == [step]


def test_resume_says_when_the_newest_step_directory_has_no_json(tmp_path, caplog):
    from din_jax.train import run_dir

    root = tmp_path / "run" / "checkpoints"
    for step, complete in ((5, True), (9, False)):
        (root / ("step_%d" % step)).mkdir(parents=True)
        (root / ("step_%d" % step) / ckpt.STATE_FILE).write_bytes(b"state")
        if complete:
            (root / ("step_%d" % step) / ckpt.META_FILE).write_text("{}")
    config = TrainConfig(model_path=str(tmp_path / "run"), resume=True, **CONFIG)
    with caplog.at_level("WARNING"):
        chosen, _ = run_dir.prepare(config, is_chief=True)
    assert chosen == str(root / "step_5")
    assert (
        "step_9 has no %s (incomplete or deleted): skipped; resuming from %s" % (ckpt.META_FILE, chosen) in caplog.text
    )


def test_resume_checks_the_arrays_saved_beside_the_state(tmp_path):
    path = str(tmp_path / "run")
    settings = dict(CONFIG, replicas=1, epochs=1, checkpoint_every=20)
    training.train_and_evaluate(TrainConfig(model_path=path, **settings))
    (_, first), (_, newest) = ckpt.list_step_checkpoints(os.path.join(path, "checkpoints"))[-2:]
    os.remove(os.path.join(newest, "item_category.npy"))
    resume = TrainConfig(model_path=path, resume=True, **dict(settings, epochs=2))
    with pytest.raises(ckpt.CheckpointError, match=r"is incomplete \(item_category.npy missing\); delete it to resume"):
        training.Trainer(resume)
