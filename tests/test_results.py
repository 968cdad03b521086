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


def test_every_committed_study_table_is_rebuilt_from_its_runs(tmp_path, capsys):
    """Each results/<study>/NAME.md beside NAME.json and runs/ is `gatedrnn report <study> --name
    NAME --title <its title>` of the committed run directories, exactly."""
    studies = [(md.parent, md.stem) for md in sorted(RESULTS.rglob("*.md"))
               if md.with_suffix(".json").is_file() and (md.parent / "runs").is_dir()]
    assert {d.relative_to(RESULTS).as_posix() for d, _ in studies} >= {
        ".", "quickstart", "full-budget", "speech/fsdd-long"}
    for study, name in studies:
        copy = tmp_path / study.relative_to(RESULTS).as_posix().replace("/", "_")
        shutil.copytree(study / "runs", copy / "runs")
        if (study / "sweep.json").is_file():
            shutil.copy(study / "sweep.json", copy)
        title = (study / f"{name}.md").read_text().splitlines()[0].removeprefix("# ")
        assert main(["report", str(copy), "--name", name, "--title", title]) == 0
        assert (copy / f"{name}.md").read_text() == (study / f"{name}.md").read_text(), study
