"""The bake-off's report: each model at its best learning rate, the benchmarks' tables, the plots, and the
hardware and commit(s) its rows were made at, stated at its top."""

import json
import math
from pathlib import Path

import pytest
from conftest import TINY

import train_runner
from lab import UserError, files, report, sweep

ENV = {"git_commit": "abc1234", "torch": "2.9.0", "triton": "3.5.0", "gpu": "NVIDIA H100 80GB HBM3", "cpu_threads": 16}


def settings(root, **more):
    return train_runner.configure(overrides=dict(TINY, models="vanilla,linear", learning_rates="1e-3", out_dir=str(root), **more))


@pytest.fixture
def job(tmp_path):
    """A bake-off's settings and a writer of its runs' metrics.json, in the folders the sweep gives them."""
    s = settings(tmp_path / "job")
    groups = sweep.report_groups(s)

    def add(name, lr, seed=1337, status="done", best=1.5, commit="abc1234", **more):
        curves = {"train": [[5, 2.5, lr], [10, 2.0, lr]], "val": [[0, 4.2, 4.2, 0.5], [10, 2.0, best or 4.0, 2.0]]}
        m = dict(status=status, best_val_loss=best, final_val_loss=best and best + 0.1, params=1000, tokens_per_sec=5000.0,
                 mfu=None, kernel_path=["sdpa"], flops_per_iter=1e9, gpu_share=1, curves=curves,
                 config={"learning_rate": lr, "seed": seed, "pos_emb": "learned", "dropout": 0.2},
                 environment=dict(ENV, git_commit=commit))
        files.write_json(tmp_path / "job" / "runs" / groups[name] / f"lr{lr:g}_s{seed}" / "metrics.json", dict(m, **more))
    return s, add


def table_rows(md):
    """{model: its cells} of the report's first table."""
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])
            if cells[0] in ("vanilla", "linear")}


def test_mean_std_and_fmt():
    assert report.mean_std([1.0, None, 3.0]) == (2.0, math.sqrt(2))  # the sample standard deviation
    assert report.mean_std([2.0]) == (2.0, 0.0) and report.mean_std([None]) == (None, None)
    assert report.fmt(None) == "–" and report.fmt(1234.5, ",.0f") == "1,234"


def test_each_model_at_its_best_rate_and_every_run_counted(job):
    s, add = job
    add("vanilla", 1e-3, best=1.5)
    add("vanilla", 2e-3, status="diverged", best=1.0)  # a run that did not finish is worst, whatever it had
    add("linear", 1e-3, status="failed", best=None)
    models = report.write(s)
    assert list(models) == ["vanilla", "linear"]  # the order of `models`
    v, lin = models["vanilla"], models["linear"]
    assert v["best_lr"] == 1e-3 and v["status"] == {"diverged": 1, "done": 1} and v["seeds"] == 1
    assert v["best_val_loss"] == 1.5 and v["val_perplexity"] == pytest.approx(math.exp(1.5)) and v["best_lr_at_edge"]
    assert lin["best_lr"] is None and lin["status"] == {"failed": 1} and lin["best_val_loss"] is None
    root = Path(s.out_dir)
    md = (root / "bakeoff.md").read_text()
    assert "| model | positions | dropout | params | best LR | best val (± std) | final val | ppl | seeds | tokens/s |" in md
    rows = table_rows(md)
    assert rows["vanilla"][:7] == ["vanilla", "learned", "0.2", "1,000", "0.001 (edge)", "1.5000", "1.6000"]
    assert rows["linear"][4:6] == ["–", "–"] and rows["linear"][-1] == "1 failed"
    assert "(edge): the best of the learning rates tried is the lowest or highest" in md
    assert json.loads((root / "bakeoff.json").read_text())["models"]["vanilla"]["lr_sweep"] == {"0.001": 1.5, "0.002": 1.0}
    for png in ("loss_curves", "final_val_loss", "ppl_vs_flops", "ppl_vs_wallclock", "lr_sweep"):
        assert (root / "plots" / f"{png}.png").stat().st_size > 1000


def test_rates_are_compared_on_their_common_seed_then_reported_over_all_of_the_best_ones(job):
    s, add = job
    add("vanilla", 1e-4, best=1.6)
    add("vanilla", 1e-3, best=1.5)
    add("vanilla", 1e-3, seed=7, best=99.0)  # seeds_at_best's: alone it would make 1e-4 look better
    add("vanilla", 1e-2, best=1.55)  # an lr_bracket round's
    row = report.write(s)["vanilla"]
    assert row["best_lr"] == 1e-3 and row["seeds"] == 2 and row["best_val_loss"] == pytest.approx((1.5 + 99) / 2)
    assert row["best_val_loss_std"] == pytest.approx(math.sqrt(2) * (99 - 1.5) / 2) and not row["best_lr_at_edge"]
    assert row["lr_sweep"] == {"0.0001": 1.6, "0.001": 1.5, "0.01": 1.55}
    cells = table_rows((Path(s.out_dir) / "bakeoff.md").read_text())["vanilla"]
    assert cells[5] == f"{(1.5 + 99) / 2:.4f} ± {row['best_val_loss_std']:.4f}" and cells[8] == "2"


def test_the_best_rate_is_chosen_on_the_mean_over_every_seed_among_the_finalists(job):
    s, add = job
    add("vanilla", 1e-4, best=1.50)
    add("vanilla", 1e-4, seed=7, best=1.52)
    add("vanilla", 1e-3, best=1.45)  # the best on the first seed, not on the mean
    add("vanilla", 1e-3, seed=7, best=1.65)
    add("vanilla", 1e-2, best=1.60)  # not a finalist: one seed
    row = report.write(s)["vanilla"]
    assert row["best_lr"] == 1e-4 and row["seeds"] == 2 and row["best_val_loss"] == pytest.approx(1.51)


def test_the_table_states_its_hardware_and_commit_at_its_top(job):
    s, add = job
    add("vanilla", 1e-3)
    add("linear", 1e-3)
    report.write(s)
    md = (Path(s.out_dir) / "bakeoff.md").read_text()
    top = md[:md.index("| model |")]
    assert "Hardware: NVIDIA H100 80GB HBM3; torch 2.9.0, triton 3.5.0; made at commit abc1234." in top
    assert "commits" not in md
    assert json.loads((Path(s.out_dir) / "bakeoff.json").read_text())["environment"]["git_commit"] == "abc1234"


def test_a_report_over_runs_of_two_commits_says_so(job):
    s, add = job
    add("vanilla", 1e-3, commit="abc1234")
    add("linear", 1e-3, commit="def5678" + "0" * 33)  # a full hash, abbreviated as git does
    report.write(s)
    md = (Path(s.out_dir) / "bakeoff.md").read_text()
    top = md[:md.index("| model |")]
    assert "made at commits abc1234, def5678: its rows come from 2 commits" in top
    assert json.loads((Path(s.out_dir) / "bakeoff.json").read_text())["environment"]["commits"] == ["abc1234", "def5678"]


def bench_file(root, stage, rows, commit="abc1234"):
    files.write_json(root / "bench" / f"{stage}.json", {"stage": stage, "rows": rows, "environment": dict(ENV, git_commit=commit)})


def test_benchmarks_are_tables_and_plots_where_their_files_are(job):
    s, add = job
    add("vanilla", 1e-3)
    add("linear", 1e-3)
    root = Path(s.out_dir)
    report.write(s)
    md = (root / "bakeoff.md").read_text()
    assert "## " not in md and not (root / "plots" / "latency_vs_context.png").exists()  # no benchmark: no table
    bench_file(root, "bench_decode", [
        {"model": "vanilla", "T": 8, "ms_per_token": 0.5, "commit": "abc1234"},
        {"model": "vanilla", "T": 16, "status": "OOM", "commit": "abc1234"},
        {"model": "linear", "T": 8, "ms_per_token": 0.25, "commit": "fed4321"},  # measured at another commit
        {"model": "linear", "ms_per_token": 1.0}, {"T": 8}])  # rows without their model or length: left out
    bench_file(root, "bench_memory", [
        {"model": "vanilla", "T": 16, "ms": 3.25, "peak_mib": 12.0, "batch": 4},
        {"model": "vanilla", "T": 32, "ms": 6.5, "peak_mib": 20.0, "batch": 2},
        {"model": "nsa", "T": 16, "ms": 1.0, "peak_mib": 5.0}])  # a model not in this report: left out
    models = report.write(s)
    assert models["vanilla"]["ms_per_token"] == {"8": 0.5, "16": "OOM"} and models["linear"]["ms_per_token"] == {"8": 0.25}
    assert models["vanilla"]["step_ms"] == {"16": 3.25, "32": 6.5} and models["linear"]["peak_mib"] == {}
    md = (root / "bakeoff.md").read_text()
    decode = md[md.index("## Decoding"):]
    assert "| model | 8 | 16 |" in decode and "| vanilla | 0.500 | OOM |" in decode and "| linear | 0.250 | – |" in decode
    assert "| vanilla | 3.2 | 6.5 |" in md[md.index("## One training step"):] and "| vanilla | 12 | 20 |" in md
    assert "nsa" not in md and "made at commits abc1234, fed4321" in md[:md.index("| model |")]
    for png in ("latency_vs_context", "memory_vs_T"):
        assert (root / "plots" / f"{png}.png").stat().st_size > 1000


def test_a_cpu_memory_benchmark_says_peaks_are_cuda_only_and_a_broken_file_is_left_out(job, capsys):
    s, add = job
    add("vanilla", 1e-3)
    root = Path(s.out_dir)
    bench_file(root, "bench_memory", [{"model": "vanilla", "T": 16, "ms": 3.0, "batch": 4}])
    (root / "bench" / "bench_decode.json").write_text('{"rows": [')  # cut off: not a report's business to fail on
    report.write(s)
    md = (root / "bakeoff.md").read_text()
    assert "Peak memory is measured on CUDA only" in md and "## Decoding" not in md and "| vanilla | 3.0 |" in md
    assert "bench_decode.json left out" in capsys.readouterr().out


def test_no_runs_at_these_settings_is_one_line_and_writes_nothing(job):
    s, add = job
    with pytest.raises(UserError, match="run the sweep first"):
        report.write(s)
    add("vanilla", 1e-3)
    report.write(s)
    # changed settings name other folders: the report reads only the runs of the settings it is given
    with pytest.raises(UserError, match="no runs of vanilla,linear"):
        report.write(settings(s.out_dir, dropout=0.1))


def test_a_tiny_sweep_then_its_report(shakespeare, tmp_path):
    s = settings(tmp_path / "job", max_iters=6, lr_decay_iters=6, eval_interval=3, log_interval=3)
    sweep.run(s, train_runner.train)
    models = report.write(s)
    matching = {r["model"]: r["params"] for r in json.loads((tmp_path / "job" / "param_matching.json").read_text())["rows"]}
    for name in ("vanilla", "linear"):
        m = models[name]
        assert m["best_lr"] == 1e-3 and m["seeds"] == 1 and m["status"] == {"done": 1} and m["params"] == matching[name]
        assert 0 < m["best_val_loss"] < 4.3 and m["tokens_per_sec"] > 0 and m["kernel_path"]
    md = (tmp_path / "job" / "bakeoff.md").read_text()
    commit = files.environment()["git_commit"] or "unknown"
    assert f"made at commit {commit}." in md[:md.index("| model |")]
    for png in ("loss_curves", "final_val_loss", "ppl_vs_flops", "ppl_vs_wallclock", "lr_sweep"):
        assert (tmp_path / "job" / "plots" / f"{png}.png").stat().st_size > 1000
