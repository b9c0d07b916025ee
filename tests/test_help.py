"""Every command's --help: its own flags first, the shared ones grouped, one line each, aliases named once."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    "train.py": ("model:", "data:", "training:", "checkpoints:", "watching:", "--max_seq_len", "--early_stop_patience"),
    "infer.py": ("infer.py's own flags:", "--rank_candidates", "--model_path"),
    "ablate.py": ("ablate.py's own flags:", "--variant", "--tune", "--reuse_other_versions", "training:"),
    "benchmark.py": ("benchmark.py's own flags:", "--micro_batch_sizes", "--lengths"),
    "plot.py": ("plot.py's own flags:", "--ablation_results", "--attention_sample"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_the_commands_flags_grouped_one_line_each(command):
    script = os.path.join(ROOT, "experiments", command)
    outputs = []
    for request in ("--help", "--helpshort"):
        result = subprocess.run(
            [sys.executable, script, request], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout)
    text = outputs[0]
    assert outputs[1] == text
    for expected in COMMANDS[command]:
        assert expected in text, expected
    flag_lines = [line for line in text.splitlines() if line.startswith("  --")]
    names = [line.split()[0] for line in flag_lines]
    assert len(names) == len(set(names)) and len(names) >= 10
    # The hyphenated spellings and absl's own flags are not listed (one line names the spellings).
    assert not any("-" in name.lstrip("-").replace("[no]", "") for name in names), names
    assert "Alias for" not in text and "--logtostderr" not in text
    if command in ("train.py", "ablate.py"):
        assert text.count("--max-seq-len") == 1
    assert "--attention_size" not in text or "Not the attention MLP's size" in text
