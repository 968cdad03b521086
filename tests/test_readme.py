"""The README's code runs as printed: the drop-in example, and the new unit in at most 30 lines
trained through the CLI with the command the README gives."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_drop_in_example_runs():
    (block,) = [b for b in python_blocks() if "from_torch" in b]
    exec(compile(block, "README.md", "exec"), {})


def test_the_new_unit_is_at_most_30_lines_and_trains_with_the_readmes_command(tmp_path,
                                                                               polyphonic_dir):
    (block,) = [b for b in python_blocks() if b.startswith("# mgu.py")]
    assert len(block.strip().splitlines()) <= 30
    (tmp_path / "mgu.py").write_text(block)
    (line,) = [x.strip() for x in README.read_text().splitlines()
               if x.strip().startswith("gatedrnn train --cell mgu:MGU")]
    args = shlex.split(line)[1:]
    args[args.index("--data-dir") + 1] = str(polyphonic_dir)
    args[args.index("--run-dir") + 1] = str(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "gatedrnn.cli", *args, "--epochs", "1",
                        "--batch-size", "64"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize("line", [x for x in README.read_text().splitlines()
                                  if x.strip().startswith("gatedrnn ")])
def test_every_command_in_the_readme_parses(line):
    """Each printed command's options exist (argparse accepts them), without running it."""
    from gatedrnn.cli import build_parser
    build_parser().parse_args(shlex.split(line.strip())[1:])
