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
    "--use_synthetic_data", "--synthetic_samples=512,64,64", "--max_seq_len=8", "--attention_size=8",
    "--mlp_hidden=8", "--attention_hidden=8", "--epochs=1", "--micro_batch_size=16", "--device_iterations=4",
    "--optimizer=sgd", "--learning_rate=0.5", "--activation=dice", "--prefetch=0",
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


@pytest.mark.skipif(not cpu_collectives_supported(), reason="this jax has no cross-process CPU collectives (Gloo)")
def test_two_processes_match_one_process_with_two_devices(tmp_path):
    single = str(tmp_path / "single")
    subprocess.run([sys.executable, TRAIN] + COMMON + ["--model_path", single], env=_env(2), check=True,
                   capture_output=True, timeout=300)

    multi = str(tmp_path / "multi")
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, TRAIN] + COMMON + [
            "--model_path", multi, "--num_processes=2", "--process_id=%d" % pid,
            "--coordinator_address=127.0.0.1:%d" % port], env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for pid in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-2000:]

    a, _ = ckpt.load_checkpoint(os.path.join(single, "last"))
    b, _ = ckpt.load_checkpoint(os.path.join(multi, "last"))
    assert sorted(a) == sorted(b)
    for key in a:
        if key.startswith(("params", "batch_stats")):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # Only process 0 writes the run directory's files.
    assert os.path.isfile(os.path.join(multi, "summary.json"))
