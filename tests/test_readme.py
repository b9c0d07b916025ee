"""The README's shell commands, run in order as a new user pastes them, shortened (one epoch, a dry-run grid).

Every command of every ``sh`` block is either run (with the shortening flags of ``SHORTEN``) or listed in ``SKIP``
with the reason; a command the test does not know fails it, so an example cannot be added unchecked. The commands
run in a scratch directory that links the repository's folders, so ``build/`` and ``runs/`` start empty there.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Minutes of real-data training: run by the current-stack lane. The IPU-proxy lane checks the IPU stack's API, which
# the other tests cover on these same code paths.
pytestmark = pytest.mark.skipif(sys.version_info < (3, 9), reason="real-data training runs in the current-stack lane")
LINKED = ("data_prep", "din_jax", "docs", "examples", "experiments")
# The embedded data, the two 5-core logs cut to users 1 .. N (a slice: the same formats, minutes less).
SLICED = {"amazon_grocery_5core/train.csv": 2000, "amazon_beauty_5core/Beauty.txt": 3000}

# What `make train` runs (the Makefile's build/beauty and train recipes), training one epoch.
MAKE_TRAIN = (
    "python data_prep/build.py --format sequences --input data/amazon_beauty_5core/Beauty.txt "
    "--meta data/amazon_beauty_5core/Beauty_item2attributes.json --output build/beauty --overwrite",
    "python experiments/train.py --flagfile experiments/configs/beauty_din.flags",
    "python experiments/expected.py --table docs/results/paper_beauty.csv --rows din+mba,base",
)

# Flags appended to a command (matched by its start) to make it short; a later flag wins over the flagfile's.
SHORTEN = (
    ("python experiments/train.py", ["--epochs=1", "--progress=log"]),
    ("python experiments/ablate.py --flagfile experiments/configs/attention_custom.flags", ["--seeds=1", "--epochs=1"]),
    ("python experiments/ablate.py", ["--dry_run"]),
    ("python experiments/benchmark.py", ["--windows=1", "--samples=2048"]),
    ("python experiments/infer.py", []),
    ("python data_prep/build.py", []),
    ("printf ", []),
)

SKIP = {
    "make test": "the suite itself",
    "make figures": "trains two 3-epoch runs (minutes); tests/test_plots.py draws every figure",
    "make test-ipu-proxy": "CI's second lane",
    "make lint": "CI runs it",
    ". .venv/bin/activate": "the test runs the commands with this Python",
    "experiments/benchmark_suite.sh": "the whole benchmark suite (an hour); its --help is tested in tests/test_benchmark.py",
    "python data_prep/build.py --format amazon": "needs the 1.2 GB Electronics download",
    "python experiments/train.py --flagfile X.flags": "a template for several machines; tests/test_distributed.py runs it",
    "python3.8 -m venv": "the Graphcore IPU set-up (an IPU machine)",
    "pip install": "the Graphcore IPU set-up (an IPU machine)",
    "JAX_PLATFORMS=cpu,ipu": "needs an IPU",
}


def readme_steps():
    """The README's ``sh`` command lines (continuations joined, comments dropped) and ``python`` blocks, in order:
    ``[("sh", line) or ("python", code)]``."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    steps = []
    for kind, block in re.findall(r"```(sh|python)\n(.*?)```", text, flags=re.S):
        if kind == "python":
            steps.append(("python", block))
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                steps.append(("sh", line))
    return steps


def readme_commands():
    return [line for kind, line in readme_steps() if kind == "sh"]


def plan(command):
    """``('skip', reason)``, ``('make train', None)`` or ``('run', words)``: what the test does with a command."""
    if command.startswith("make train"):
        return "make train", None
    for start, reason in SKIP.items():
        if command.startswith(start):
            return "skip", reason
    words = shlex.split(command, comments=True)
    text = " ".join(words)
    for start, extra in SHORTEN:
        if text.startswith(start):
            return "run", words + extra
    return "unknown", None


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    unknown = [command for command in readme_commands() if plan(command)[0] == "unknown"]
    assert unknown == [], "add these README commands to SHORTEN or SKIP in tests/test_readme.py: %s" % unknown


def test_make_train_runs_what_the_test_runs():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as handle:
        makefile = handle.read()
    recipe = makefile.split("\ntrain:")[1].split("\n\n")[0]
    assert "--flagfile experiments/configs/beauty_din.flags" in recipe
    assert "experiments/expected.py --table docs/results/paper_beauty.csv --rows din+mba,base" in recipe
    assert "--format sequences --input data/amazon_beauty_5core/Beauty.txt" in makefile


def _run(words, cwd):
    if words[0] == "printf":  # a shell line with a redirection
        result = subprocess.run(" ".join(shlex.quote(w) if w != ">" else w for w in words), shell=True, cwd=cwd)
        assert result.returncode == 0
        return
    argv = [sys.executable] + words[1:] if words[0] == "python" else words
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, "%s failed:\n%s" % (" ".join(words), tail)
    assert "non-finite" not in tail and "loss became" not in tail, tail


def _slice_data(target):
    """``data/`` for the scratch directory: every file linked, the SLICED logs cut to their first users."""
    source = os.path.join(ROOT, "data")
    for folder in os.listdir(source):
        os.makedirs(os.path.join(target, folder))
        for name in os.listdir(os.path.join(source, folder)):
            path, copy = os.path.join(source, folder, name), os.path.join(target, folder, name)
            users = SLICED.get(folder + "/" + name)
            if users is None:
                os.symlink(path, copy)
                continue
            with open(path, encoding="utf-8") as handle, open(copy, "w", encoding="utf-8") as out:
                for number, line in enumerate(handle):
                    # The header line (Grocery), then the lines of users 1 .. users (ids are 1-based integers).
                    if (number == 0 and name.endswith(".csv")) or int(line.split(None, 1)[0]) <= users:
                        out.write(line)


def test_the_readme_commands_run_in_order(tmp_path):
    for name in LINKED:
        os.symlink(os.path.join(ROOT, name), str(tmp_path / name))
    _slice_data(str(tmp_path / "data"))
    ran = 0
    for kind, step in readme_steps():
        if kind == "python":
            # Shortened like the commands: training from Python runs one epoch of a bigger batch.
            code = step.replace('"epochs": 1,', '"epochs": 1, "micro_batch_size": 512,')
            _run(["python", "-c", code], str(tmp_path))
            ran += 1
            continue
        action, words = plan(step)
        if action == "make train":
            for line in MAKE_TRAIN:
                _run(shlex.split(line) + (["--epochs=1", "--progress=log"] if "train.py" in line else []), tmp_path)
        elif action == "run":
            _run(words, str(tmp_path))
        else:
            continue
        ran += 1
    assert ran >= 15
    assert os.path.isfile(str(tmp_path / "runs" / "synthetic" / "summary.json"))
    assert os.path.isfile(str(tmp_path / "runs" / "python_din" / "summary.json"))
