"""lab/publish.py: a finished job's record copied into a new results/ entry and indexed, nothing else touched."""

import json

import pytest

import train_runner
from lab import UserError, publish

REPORT = """# Bake-off: out

| model | params | best val (± std) | final val |
|---|---|---|---|
| vanilla | 795,904 | 2.3687 | 2.3700 |
| rope | 795,904 | 2.1000 | 2.1100 |

## Decoding

| model | 64 |
|---|---|
| vanilla | 0.667 |
"""


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A finished bake-off's folder, and a results/ holding an index, in tmp_path."""
    out = tmp_path / "out-bakeoff-cpu"
    run = out / "runs" / "vanilla-0123456789" / "lr0.001_s1337"
    run.mkdir(parents=True)
    (out / "job.json").write_text(json.dumps({"stage": "bakeoff", "command": "python train_runner.py",
                                              "environment": {"cpu_threads": 2, "torch": "2.13.0", "python": "3.11"}}))
    (out / "bakeoff.md").write_text(REPORT)
    (run / "metrics.json").write_text(json.dumps({"status": "done", "environment": {"git_commit": "abc1234"}}))
    (run / "ckpt.pt").write_bytes(b"weights")
    (run / ".claimed").write_text("")
    results = tmp_path / "results"
    results.mkdir()
    (results / "README.md").write_text("# Results\n\n| result | what | hardware | command | headline |\n|---|---|---|---|---|\n")
    monkeypatch.setattr(publish, "RESULTS", results)
    return out, results


def settings(out, to):
    return train_runner.configure(overrides=dict(device="cpu", stage="publish", out_dir=str(out), publish_to=str(to)))


def test_publish_copies_the_record_and_adds_one_index_row(job):
    out, results = job
    dest = publish.publish(settings(out, results / "cpu-bakeoff"))
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["README.md", "bakeoff.md", "job.json", "runs/vanilla-0123456789/lr0.001_s1337/metrics.json"]
    readme = (dest / "README.md").read_text()
    assert "python train_runner.py" in readme and "2-thread CPU" in readme and "abc1234" in readme
    rows = [line for line in (results / "README.md").read_text().splitlines() if line.startswith("| [")]
    assert rows == [f"| [cpu-bakeoff](cpu-bakeoff/README.md) | {publish.WHAT['bakeoff']} | 2-thread CPU | "
                    "at commit abc1234: `python train_runner.py` | best val (± std): vanilla 2.3687; rope 2.1000 |"]
    assert not list(results.glob(".*"))  # no staging folder left


@pytest.mark.parametrize("case, message", [
    ("exists", "exists already"), ("outside", "directly in"), ("unfinished", "is not finished"), ("no job", "holds no job.json"),
])
def test_publish_refuses_and_changes_nothing(job, tmp_path, case, message):
    out, results = job
    to = results / "cpu-bakeoff"
    if case == "exists":
        to.mkdir()
        (to / "README.md").write_text("the earlier record")
    elif case == "outside":
        to = tmp_path / "elsewhere"
    elif case == "unfinished":
        (out / "bakeoff.md").unlink()
    else:
        (out / "job.json").unlink()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=message):
        publish.publish(settings(out, to))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
