"""Watching a run: the train log, TensorBoard events, progress bars and lines."""

import io
import json
import logging
import os
import struct

import numpy as np
import pytest

from din_jax.config import TrainConfig
from din_jax.train import loop as training
from din_jax.train import observers as hooks

CONFIG = dict(
    use_synthetic_data=True,
    synthetic_samples=(320, 64, 64),
    max_seq_len=8,
    epochs=2,
    micro_batch_size=16,
    eval_micro_batch_size=32,
    device_iterations=5,
    replicas=1,
    optimizer="adam",
    learning_rate=0.01,
    eval_every=10,
    checkpoint_every=0,
    model_config={"item_dim": 4, "category_dim": 4, "attention_hidden": (8,), "mlp_hidden": (8,)},
)


def _read_events(directory):
    """(tag, step, kind) of every summary value in a directory's event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    found = []
    for name in sorted(os.listdir(directory)):
        if not name.startswith("events.out.tfevents."):
            continue
        data = open(os.path.join(directory, name), "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                found.append((value.tag, event.step, value.WhichOneof("value")))
    return found


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class _Capture:
    """Collects the absl logger's messages while active."""

    def __enter__(self):
        self.handler = _Records()
        self.logger = logging.getLogger("absl")
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        return self.handler.messages

    def __exit__(self, *exc_info):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


@pytest.fixture()
def absl_messages():
    with _Capture() as messages:
        yield messages


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    """One run with the train log, TensorBoard (when installed) and progress lines."""
    path = str(tmp_path_factory.mktemp("hooks") / "run")
    run_hooks = [
        hooks.TrainLogHook(os.path.join(path, hooks.TRAIN_LOG_FILE)),
        hooks.ProgressHook("auto", seconds=0.0, stream=io.StringIO()),
    ]
    if hooks.tensorboard_available():
        run_hooks.append(hooks.TensorBoardHook(os.path.join(path, hooks.TENSORBOARD_DIR), attention_samples=32))
    with _Capture() as messages:
        summary = training.train_and_evaluate(TrainConfig(model_path=path, **CONFIG), hooks=run_hooks)
    return path, summary, messages, run_hooks[1]


def test_train_log_has_every_call_and_evaluation_and_resume_drops_the_replayed_rows(watched_run):
    path, summary, _, _ = watched_run
    rows = hooks.read_train_log(os.path.join(path, hooks.TRAIN_LOG_FILE))
    train_rows = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all(np.isfinite(r["loss"]) and r["steps"] == 5 for r in train_rows)
    evaluations = [r["step"] for r in rows if r["event"] == "evaluation"]
    assert evaluations == [h["step"] for h in summary["history"]] == [10, 20, 30, 40]
    assert rows[-1]["event"] == "end" and rows[-1]["test"]["gauc"] == summary["test"]["gauc"]

    # On resume from step 20, the rows after it are trained again: dropped first.
    log = os.path.join(path, "resumed_log.jsonl")
    with open(os.path.join(path, hooks.TRAIN_LOG_FILE)) as source, open(log, "w") as copy:
        copy.write(source.read() + '{"event": "train", "step": 4')  # a line cut short by kill -9
    again = hooks.TrainLogHook(log)
    again.on_train_begin({"resumed": 20})
    again.on_close({})
    assert hooks.read_train_log(log) == [r for r in rows if r["step"] <= 20]

    # A finished run trained further resumes from its last step: its end row
    # goes, or the log would have an end in its middle.
    with open(os.path.join(path, hooks.TRAIN_LOG_FILE)) as source, open(log, "w") as copy:
        copy.write(source.read())
    again = hooks.TrainLogHook(log)
    again.on_train_begin({"resumed": summary["steps"]})
    again.on_end(dict(summary, steps=summary["steps"] + 40))
    again.on_close({})
    extended = hooks.read_train_log(log)
    assert extended[:-1] == rows[:-1] and [r["event"] for r in extended].count("end") == 1
    assert extended[-1]["event"] == "end" and extended[-1]["step"] == summary["steps"] + 40


def test_tensorboard_events_are_written_without_tensorflow(watched_run):
    if not hooks.tensorboard_available():
        pytest.skip("tensorboardX is not installed (the IPU lane has none)")
    import sys

    path, summary, _, _ = watched_run
    assert "tensorflow" not in sys.modules
    events = _read_events(os.path.join(path, hooks.TENSORBOARD_DIR))
    tags = {(tag, kind) for tag, _, kind in events}
    for tag in (
        "train/loss",
        "train/accuracy",
        "train/learning_rate",
        "train/samples_per_s",
        "validation/gauc",
        "validation/auc",
        "validation/logloss",
        "test/gauc",
        "test/auc",
        "best/step",
    ):
        assert (tag, "simple_value") in tags, tag
    assert ("attention/weights", "histo") in tags and ("attention/weight_sum", "histo") in tags
    assert sorted({step for tag, step, _ in events if tag == "validation/gauc"}) == [10, 20, 30, 40]
    assert {step for tag, step, _ in events if tag == "test/gauc"} == {summary["steps"]}
    assert any(tag.startswith("config") for tag, _, _ in events)


def test_progress_lines_when_not_a_terminal(watched_run):
    _, summary, messages, progress = watched_run
    assert progress.mode == "log" and not progress.replaces_call_log
    lines = [m for m in messages if m.startswith("progress: epoch")]
    assert len(lines) == 8
    assert lines[0].startswith("progress: epoch 1/2 25% (step 5 of about 40), ETA ")
    assert "loss" in lines[-1] and "val gauc" in lines[-1] and "samples/s" in lines[-1]
    # Evaluations speak too (seconds=0: a line per call; 64 samples are one call).
    validation = [m for m in messages if m.startswith("progress: validation")]
    assert [m.split(" 100% ")[0] for m in validation] == [
        "progress: validation (step %d)" % step for step in (10, 20, 30, 40)
    ]
    assert all("(64 of 64 samples), ETA 0:00:00; " in m and m.endswith(" samples/s") for m in validation)
    test = [m for m in messages if m.startswith("progress: test")]
    assert len(test) == 1 and test[0].startswith("progress: test (step %d) 100%% (64 of 64 samples)" % summary["steps"])
    # The trainer's own per-call lines are still there.
    assert any(m.startswith("epoch 1 step 5 loss") for m in messages)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


def test_evaluation_lines_are_throttled_and_need_no_trainer(monkeypatch, absl_messages):
    """Scoring outside a Trainer (infer.py's way): the first line after --progress_seconds, then one per interval."""
    clock = _Clock()
    monkeypatch.setattr(hooks, "time", clock)
    progress = hooks.ProgressHook("log", seconds=10.0, stream=io.StringIO())
    progress.on_evaluation_begin({"split": "test", "samples": 1000})
    for _ in range(10):  # 100 samples a second
        clock.now += 1.0
        progress.on_predict_call({"split": "test", "samples": 100})
    clock.now += 1.0
    progress.on_predict_call({"split": "test", "samples": 100})  # padding: still 1000 of 1000
    progress.on_close({})
    progress.on_predict_call({"split": "test", "samples": 100})  # after the end: nothing
    assert [m for m in absl_messages if m.startswith("progress:")] == [
        "progress: test 100% (1000 of 1000 samples), ETA 0:00:00; 100 samples/s"
    ]

    clock.now += 100.0
    quick = hooks.ProgressHook("log", seconds=10.0, stream=io.StringIO())
    quick.on_evaluation_begin({"split": "validation", "samples": 300, "step": 7})
    for _ in range(6):  # a line at 12 s (the first past 10), none 6 s after it
        clock.now += 3.0
        quick.on_predict_call({"split": "validation", "samples": 50})
    assert [m for m in absl_messages if m.startswith("progress: validation")] == [
        "progress: validation (step 7) 66% (200 of 300 samples), ETA 0:00:06; 17 samples/s"
    ]


def test_progress_bars_show_loss_throughput_and_validation_gauc(tmp_path, absl_messages):
    if not hooks.tqdm_available():
        pytest.skip("tqdm is not installed (the IPU lane has none)")
    stream = io.StringIO()
    progress = hooks.ProgressHook("bar", stream=stream)
    assert progress.replaces_call_log
    training.train_and_evaluate(TrainConfig(**CONFIG), hooks=[progress])
    text = stream.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert "20/20" in text and "samples/s" in text and "loss" in text and "val gauc" in text
    assert "validation" in text and "test" in text  # the evaluation bars
    # The bars replace the trainer's per-call lines; evaluation lines stay.
    assert not any(m.startswith("epoch 1 step 5 loss") for m in absl_messages)
    assert any("validation gauc" in m for m in absl_messages)


def test_make_hooks_without_optional_packages(tmp_path, monkeypatch, absl_messages):
    config = TrainConfig(model_path=str(tmp_path / "run"), **CONFIG)
    monkeypatch.setattr(hooks, "_SummaryWriter", None)
    monkeypatch.setattr(hooks, "_tqdm", None)
    made = hooks.make_hooks(config, progress="bar")
    assert [type(h).__name__ for h in made] == ["ProgressHook", "TrainLogHook"]
    assert made[0].mode == "log"
    assert any("tensorboardX is not installed" in m for m in absl_messages)
    assert [type(h).__name__ for h in hooks.make_hooks(TrainConfig(**CONFIG), progress="none")] == []
    with pytest.raises(ValueError, match="progress mode"):
        hooks.ProgressHook("fancy")
    assert json.dumps(hooks.PROGRESS_MODES)


def test_the_heartbeat_speaks_when_the_loop_is_silent_and_only_then(absl_messages):
    import time

    beat = hooks.Heartbeat(every=0.3).start()
    try:
        beat.set("epoch 1: compiling the train program, then running call 1 of 3 (1600 steps)")
        time.sleep(1.0)
        spoken = [m for m in absl_messages if "compiling the train program" in m]
        assert 2 <= len(spoken) <= 4 and spoken[0].endswith("s so far")
        beat.set(None)  # nothing going on: nothing said
        time.sleep(0.7)
        assert len([m for m in absl_messages if "so far" in m]) == len(spoken)
    finally:
        beat.stop()
