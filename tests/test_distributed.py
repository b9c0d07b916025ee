"""Two processes on localhost train in lockstep and match one process with two devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from din_jax import checkpoint as ckpt
from din_jax.distributed import cpu_collectives_supported

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "experiments", "train.py")
COMMON = [
    "--use_synthetic_data",
    "--synthetic_samples=512,64,64",
    "--max_seq_len=8",
    "--attention_size=8",
    "--mlp_hidden=8",
    "--attention_hidden=8",
    "--epochs=1",
    "--micro_batch_size=16",
    "--device_iterations=4",
    "--optimizer=sgd",
    "--learning_rate=0.5",
    "--activation=dice",
    "--prefetch=0",
]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(devices):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=%d" % devices
    env["PYTHONPATH"] = ROOT
    return env


needs_collectives = pytest.mark.skipif(
    not cpu_collectives_supported(), reason="this jax has no cross-process CPU collectives (Gloo)"
)

# Imported into each process of a run (--import_module): the process named by
# SIGNAL_PROCESS sends itself SIGTERM once the call ending at SIGNAL_STEP is
# checked, as Ctrl-C in that process's terminal would.
SIGNALLER = """
import os, signal
import jax
from din_jax.train import loop as training

_drain = training.Trainer._drain


def _drain_then_signal(self, pending):
    _drain(self, pending)
    if jax.process_index() == int(os.environ["SIGNAL_PROCESS"]) and pending["step"] == int(os.environ["SIGNAL_STEP"]):
        for _ in range(int(os.environ.get("SIGNAL_TIMES", "1"))):
            os.kill(os.getpid(), signal.SIGTERM)


training.Trainer._drain = _drain_then_signal
"""


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """One process with two devices: what two processes with one device each must reproduce."""
    single = str(tmp_path_factory.mktemp("single") / "run")
    subprocess.run(
        [sys.executable, TRAIN] + COMMON + ["--model_path", single],
        env=_env(2),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return single


def _two_processes(run, extra=(), env=None):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, TRAIN]
            + COMMON
            + list(extra)
            + [
                "--model_path",
                run,
                "--num_processes=2",
                "--process_id=%d" % pid,
                "--coordinator_address=127.0.0.1:%d" % port,
            ],
            env=dict(_env(1), **(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for pid in range(2)
    ]
    try:
        # A process left waiting in a collective hangs: fail within minutes instead.
        outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outputs


def _assert_same_parameters(single, multi):
    a, _ = ckpt.load_checkpoint(os.path.join(single, "last"))
    b, _ = ckpt.load_checkpoint(os.path.join(multi, "last"))
    assert sorted(a) == sorted(b)
    for key in a:
        if key.startswith(("params", "batch_stats")):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)


@needs_collectives
def test_two_processes_match_one_process_with_two_devices(tmp_path, single_run):
    multi = str(tmp_path / "multi")
    codes, outputs = _two_processes(multi)
    for code, out in zip(codes, outputs):
        assert code == 0, out[-2000:]
    _assert_same_parameters(single_run, multi)
    # Only process 0 writes the run directory's files.
    assert os.path.isfile(os.path.join(multi, "summary.json"))


@needs_collectives
def test_a_signal_to_one_process_stops_every_process_at_one_step(tmp_path, single_run):
    signaller = tmp_path / "signaller.py"
    signaller.write_text(SIGNALLER)
    multi = str(tmp_path / "multi")
    # 4 calls of 4 steps; process 1 asks to stop after the first call's loss was checked.
    codes, outputs = _two_processes(
        multi, ["--import_module", str(signaller)], {"SIGNAL_PROCESS": "1", "SIGNAL_STEP": "4"}
    )
    assert codes == [143, 143], outputs
    # Both stop at the next call boundary, step 8; process 0 writes the checkpoint.
    assert (
        "training stopped by SIGTERM to process 1 at step 8 (epoch 1): checkpoint %s"
        % os.path.join(multi, "checkpoints", "step_8")
        in outputs[0]
    ), outputs[0][-2000:]
    assert (
        "training stopped by SIGTERM at step 8 (epoch 1): process 0 writes checkpoint %s"
        % os.path.join(multi, "checkpoints", "step_8")
        in outputs[1]
    ), outputs[1][-2000:]
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["step_8"]
    assert not os.path.exists(os.path.join(multi, "summary.json"))
    # Both resume from it and end where one uninterrupted process ends.
    codes, outputs = _two_processes(multi, ["--resume"])
    for code, out in zip(codes, outputs):
        assert code == 0, out[-2000:]
    _assert_same_parameters(single_run, multi)
    assert os.path.isfile(os.path.join(multi, "summary.json"))


@needs_collectives
def test_a_second_signal_to_one_process_ends_every_process_without_hanging(tmp_path):
    signaller = tmp_path / "signaller.py"
    signaller.write_text(SIGNALLER)
    run = str(tmp_path / "run")
    # Process 1 stops at once; process 0 finds its next collective broken. Neither may wait for the other at exit.
    codes, outputs = _two_processes(
        run, ["--import_module", str(signaller)], {"SIGNAL_PROCESS": "1", "SIGNAL_STEP": "4", "SIGNAL_TIMES": "2"}
    )
    assert codes == [1, 143], outputs
    assert "train.py: training stopped at once by a second SIGTERM near step" in outputs[1], outputs[1][-2000:]
    last = outputs[0].strip().splitlines()[-1]
    assert last.startswith("train.py: error: process 0: a collective with the other processes failed ("), last
    assert last.endswith("restart every process with --resume to continue from the newest checkpoint"), last
    assert "Traceback" not in outputs[0]
