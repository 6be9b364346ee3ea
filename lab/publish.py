"""
Publishing: a finished job's record, copied from its out dir into a new results/ entry, and a row for it
in results/README.md (the index).

    python train_runner.py --stage=publish --out_dir=out-bakeoff-cpu --publish_to=results/cpu-bakeoff

Everything but checkpoints and claims is copied: the report, plots, benchmark tables, each run's
metrics, curves and logs. The entry's README gives the command that made the job (from its job.json),
the hardware, and the commit(s) its runs were trained at. An existing entry is never overwritten: publish
to a new name. The entry is written beside its final place and renamed into it, so a failure leaves
results/ as it was.
"""

import itertools
import shutil
from pathlib import Path

from lab import UserError, files

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
LEFT_OUT = ("ckpt.pt", ".claimed")  # large, or only meaningful while a job runs
REPORTS = {"bakeoff": "bakeoff.md", "sweep": "param_matching.md", "mqar": "mqar.md", "placement": "placement.md"}
WHAT = {"bakeoff": "the bake-off: every model parameter-matched and swept over learning rates, decoding and memory benchmarks",
        "sweep": "a parameter-matched sweep over learning rates and seeds",
        "mqar": "multi-query associative recall against width and state size",
        "placement": "where a hybrid's softmax layers go: each placement beside the pure models, over seeds"}


def target(s):
    """The new entry's folder, checked: inside results/, named, not there yet."""
    if not s.publish_to:
        raise UserError("--stage=publish needs --publish_to=results/<hardware>-<topic>")
    dest = Path(s.publish_to)
    dest = (dest if dest.is_absolute() else Path.cwd() / dest).resolve()
    if dest.parent != RESULTS.resolve():
        raise UserError(f"publish_to must be a new folder directly in {RESULTS}, got {s.publish_to}")
    if dest.exists():
        raise UserError(f"{dest} exists already: results/ is a record, publish to a new name")
    return dest


def job_record(out):
    """(job.json, the report's markdown) of a finished job's folder."""
    job = files.read_json(out / "job.json")
    if job is None:
        raise UserError(f"{out} holds no job.json: point --out_dir at the folder a sweep, bakeoff or mqar job wrote")
    report = out / REPORTS.get(job["stage"], "param_matching.md")
    if not report.is_file():
        raise UserError(f"{out} has no {report.name}: the job is not finished (run it again to resume it)")
    return job, report.read_text()


def commits(out):
    """The commits the job's runs were trained at, in the order first seen."""
    found = []
    for path in sorted(out.glob("runs/**/metrics.json")):
        commit = (files.read_json(path, {}).get("environment") or {}).get("git_commit")
        if commit and commit not in found:
            found.append(commit)
    return found


def headline(report):
    """The report's first table as one line: each row's name and its main figure (the column of the best
    val loss, or of recall accuracy, where the table has one), e.g. 'vanilla 1.4587; rope 1.4575; ...'."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table]
    if len(rows) < 3:
        return ""
    header = [h.lower() for h in rows[0]]
    col = next((i for i, h in enumerate(header) if "best val" in h or "accuracy" in h), 1)
    return f"{rows[0][col]}: " + "; ".join(f"{row[0]} {row[col]}" for row in rows[2:14] if len(row) > col)


def hardware(env):
    gpu = env.get("gpu")
    return f"1 {gpu}" if gpu else f"{env.get('cpu_threads', '?')}-thread CPU"


def entry_readme(name, job, report, made_at):
    env = job.get("environment", {})
    return "\n".join([
        f"# {name}", "",
        f"What: {WHAT.get(job['stage'], job['stage'])}.", "",
        f"Hardware: {hardware(env)}; torch {env.get('torch')}, Python {env.get('python')}.", "",
        f"Runs trained at commit(s) {', '.join(made_at) or env.get('git_commit')}; every table below comes from this one job.",
        "", "Command, at that commit:", "", "    " + job["command"], "",
        *("#" + line if line.startswith("#") else line for line in report.strip().splitlines()), ""])  # under the title


def index_row(name, job, report, made_at):
    env = job.get("environment", {})
    commits = ", ".join(made_at) or env.get("git_commit")
    return (f"| [{name}]({name}/README.md) | {WHAT.get(job['stage'], job['stage'])} | {hardware(env)} | "
            f"at commit {commits}: `{job['command']}` | {headline(report)} |")


def publish(s):
    out = Path(s.out_dir)
    dest = target(s)
    job, report = job_record(out)
    made_at = commits(out)
    staging = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(out, staging, ignore=shutil.ignore_patterns(*LEFT_OUT))
    files.write_text(staging / "README.md", entry_readme(dest.name, job, report, made_at))
    index = RESULTS / "README.md"
    rows = index.read_text().rstrip("\n") + "\n" + index_row(dest.name, job, report, made_at) + "\n"
    staging.rename(dest)
    files.write_text(index, rows)
    print(f"published {out} into {dest} (and a row in {index}); review and commit it")
    return dest
