"""The committed results/ are what `gatedrnn report` makes of the committed run directories."""
import json
import shutil
from pathlib import Path

from gatedrnn.cli import main

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_committed_table_is_rebuilt_from_the_committed_runs(tmp_path, capsys):
    shutil.copytree(RESULTS / "runs", tmp_path / "runs")
    shutil.copy(RESULTS / "sweep.json", tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "table2.md").read_text() == (RESULTS / "table2.md").read_text()
    ours, committed = (json.loads((d / "table2.json").read_text()) for d in (tmp_path, RESULTS))
    drop = ("run_dirs", "best_run")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ours] == \
        [{k: v for k, v in r.items() if k not in drop} for r in committed]
    assert len(ours) == 12 and all(r["seeds"] == 3 for r in ours)
    assert sorted(p.name for p in tmp_path.glob("curves-*.png")) == \
        sorted(p.name for p in RESULTS.glob("curves-*.png"))
