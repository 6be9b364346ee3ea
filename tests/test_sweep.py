"""The sweep (lab/sweep.py) and its workers (lab/workers.py): parameter matching, runs named by their settings,
resume, skipping finished runs, failures recorded while the sweep goes on, learning-rate rounds, seeds, workers."""

import json
import os
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY

import train_runner
from lab import UserError, families, files, sweep, workers
from lab import settings as configurator

# a sweep's runs: six iterations, evaluated twice (under a second a run on 2 CPU cores)
SWEEP = dict(TINY, max_iters=6, lr_decay_iters=6, eval_interval=3, log_interval=3, learning_rates="1e-3", seeds="1337",
             stage="sweep")


def job(tmp_path, **changes):
    """A sweep's settings, writing into tmp_path/job."""
    return train_runner.configure(None, overrides=dict(SWEEP, out_dir=str(tmp_path / "job"), **changes))


def run_dirs(s):
    """Every run folder of the sweep, as '<model>-<identity>/lr<rate>_s<seed>'."""
    return sorted(f"{p.parent.name}/{p.name}" for p in (Path(s.out_dir) / "runs").glob("*/*"))


def metrics(s, name, lr, seed=1337):
    return sweep.read_metrics(Path(s.out_dir) / "runs" / sweep.report_groups(s)[name] / f"lr{lr:g}_s{seed}")


def snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def tiny_dataset(data_dir, vocab, tokens=4000, name="tiny"):
    """A prepared dataset of random tokens: meta.pkl with `vocab` characters, train.bin and val.bin."""
    folder = data_dir / name
    folder.mkdir(parents=True)
    chars = [chr(0x100 + i) for i in range(vocab)]
    meta = {"vocab_size": vocab, "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (folder / "meta.pkl").write_bytes(pickle.dumps(meta))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, vocab, tokens, dtype=np.uint16).tofile(folder / f"{split}.bin")
    return folder


# -- parameter matching --------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("profile", ["cpu", "gpu"], ids=["cpu_profile", "baby_gpt"])  # the baby GPT counted on the meta device
def test_every_family_is_matched_within_3_percent(profile):
    s = train_runner.configure("config/train_shakespeare_char.py", overrides={"device": "cpu", "profile": profile})
    target = sweep.count_params(configurator.for_model(s, "vanilla"), 65)
    assert (profile == "gpu") == (abs(target - 10.65e6) < 0.05e6)
    for name in families.MODELS:
        entry = configurator.for_model(s, name)
        change, n = sweep.match_params(entry, target, 65)
        assert abs(n / target - 1) <= 0.03, (name, n, target)
        changed = entry.replace(**change)
        assert n == families.build(name, changed.model_args(), 65).get_num_params()  # counted on the built model


def test_matching_searches_when_a_family_is_far_off():
    cpu = train_runner.configure("config/train_shakespeare_char.py", overrides={"device": "cpu"})
    entry = configurator.for_model(cpu, "vanilla")
    own = sweep.count_params(entry, 65)
    assert sweep.match_params(entry, own * 1.02, 65) == ({}, own)  # within 3%: left as it is
    change, n = sweep.match_params(entry, 2 * own, 65)
    assert change and abs(n / (2 * own) - 1) <= 0.03 and n == sweep.count_params(entry.replace(**change), 65)
    assert change == {"n_head": 6, "n_embd": 180}  # 6 heads too: widths of even head dims (multiples of 12)
    with pytest.raises(UserError, match="no width within 3%"):
        sweep.match_params(entry, 100, 65)


@pytest.mark.parametrize("prepared", [True, False])
def test_the_parameter_table_counts_the_datasets_own_vocabulary(tmp_path, prepared, capsys):
    data_dir = tmp_path / "data"
    if prepared:
        vocab = 100
        tiny_dataset(data_dir, vocab, name="shakespeare_char")
    else:  # only the text: the sweep prepares it (data/shakespeare_char/prepare.py) before it counts
        vocab = 20
        (data_dir / "shakespeare_char").mkdir(parents=True)
        text = "".join(chr(ord("a") + (i * 7) % vocab) for i in range(5000))
        (data_dir / "shakespeare_char" / "input.txt").write_text(text)
    s = job(tmp_path, data_dir=str(data_dir), models="vanilla,linear", max_iters=0)
    sweep.run(s, train_runner.train)
    assert ("preparing" in capsys.readouterr().out) != prepared
    want = families.build("vanilla", configurator.for_model(s, "vanilla").model_args(), vocab).get_num_params()
    assert want != families.build("vanilla", configurator.for_model(s, "vanilla").model_args(), 65).get_num_params()
    table = json.loads((tmp_path / "job" / "param_matching.json").read_text())
    assert table["target"] == want and [(r["model"], r["params"]) for r in table["rows"]] == [("vanilla", want), ("linear", want)]
    assert metrics(s, "vanilla", 1e-3)["params"] == metrics(s, "linear", 1e-3)["params"] == want  # what trained


def test_the_report_finds_each_models_folder_with_its_matched_width(shakespeare, tmp_path):
    base = sweep.count_params(configurator.for_model(job(tmp_path), "vanilla"), 65)
    s = job(tmp_path, models="vanilla,linear", max_iters=0, target_params=3 * base)
    entries = sweep.run(s, train_runner.train)
    rows = json.loads((tmp_path / "job" / "param_matching.json").read_text())["rows"]
    assert all(r["changed"] and abs(r["off_target_pct"]) <= 3 for r in rows)  # both widened to the target
    assert [entries[r["model"]].n_embd for r in rows] == [r["n_embd"] for r in rows] and rows[0]["n_embd"] != s.n_embd
    groups = sweep.report_groups(s)  # from the settings and param_matching.json alone
    assert run_dirs(s) == sorted(f"{groups[name]}/lr0.001_s1337" for name in ("vanilla", "linear"))
    assert groups == {name: sweep.group_folder(entry, name) for name, entry in entries.items()}


# -- what a sweep writes, and where --------------------------------------------

def test_a_sweep_writes_its_record_into_out_dir_and_nowhere_else(shakespeare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_before = snapshot(shakespeare)
    s = job(tmp_path, models="vanilla,linear", max_iters=0)
    sweep.run(s, train_runner.train)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]
    root = tmp_path / "job"
    assert sorted(p.name for p in root.iterdir()) == ["job.json", "param_matching.json", "param_matching.md", "runs"]
    assert snapshot(shakespeare) == data_before
    made = json.loads((root / "job.json").read_text())
    assert made["stage"] == "sweep" and made["command"].startswith("python train_runner.py ")
    assert "--models=vanilla,linear" in made["command"] and made["environment"]["git_commit"]
    md = (root / "param_matching.md").read_text()
    assert "| model | layers | heads | width | params | off target |" in md and "| linear | 2 | 4 | 32 |" in md
    for group in sweep.report_groups(s).values():
        assert re.fullmatch(r"(vanilla|linear)-[0-9a-f]{10}", group)
        assert sorted(p.name for p in (root / "runs" / group).iterdir()) == ["lr0.001_s1337"]
        assert sorted(p.name for p in (root / "runs" / group / "lr0.001_s1337").iterdir()) == [
            "eval.csv", "losses.csv", "metrics.json"]  # no checkpoint: 0 iterations never improve on anything


@pytest.mark.parametrize("changes, raw, message", [
    ({}, {"bogus": "1"}, "unknown setting 'bogus'"),
    ({"models": "vanilla"}, {"feature_map": "relu"}, "unknown setting 'feature_map'"),  # a field of a model not listed
    ({"models": "vanilla,mamba"}, {}, "unknown model 'mamba'"),
    ({}, {"feature_map": "bogus"}, "invalid model configuration for linear"),  # found when linear is configured
    ({"target_params": 100}, {}, "no width within 3%"),
    ({"block_size": 5000}, {}, "too long for"),  # the dataset holds 4,000 tokens a split
    ({"dataset": "nope"}, {}, "dataset 'nope' is not prepared"),
    ({"learning_rates": "1e-3,-1"}, {}, "learning_rates must be positive"),
    ({"seeds": "one"}, {}, "seeds must be a comma-separated list of ints"),
])
def test_bad_settings_stop_the_sweep_before_it_writes_anything(tmp_path, changes, raw, message):
    tiny_dataset(tmp_path / "data", 50)
    trained = []
    with pytest.raises(UserError, match=message):
        s = train_runner.configure(None, overrides=dict(SWEEP, models="vanilla,linear", data_dir=str(tmp_path / "data"),
                                                        dataset="tiny", out_dir=str(tmp_path / "job")) | changes, raw=raw)
        sweep.run(s, lambda *a, **k: trained.append(a))
    assert not (tmp_path / "job").exists() and not trained


# -- runs named by their settings: skipped when finished, resumed, trained anew when changed ---------------

def test_a_rerun_skips_finished_runs_and_a_changed_setting_trains_anew_beside_them(shakespeare, tmp_path, capsys):
    s = job(tmp_path, models="vanilla,linear")
    sweep.run(s, train_runner.train)
    first = run_dirs(s)
    assert len(first) == 2 and all(metrics(s, name, 1e-3)["status"] == "done" for name in ("vanilla", "linear"))
    before = snapshot(tmp_path / "job" / "runs")
    capsys.readouterr()
    sweep.run(job(tmp_path, models="vanilla,linear", log_interval=2, eval_group=2), train_runner.train)  # bookkeeping only
    assert capsys.readouterr().out.count("already done, skipped") == 2
    assert snapshot(tmp_path / "job" / "runs") == before

    dropout = job(tmp_path, models="vanilla,linear", dropout=0.1)  # a backbone setting: every model trains anew
    sweep.run(dropout, train_runner.train)
    assert "skipped" not in capsys.readouterr().out
    assert set(run_dirs(dropout)) - set(first) == {f"{g}/lr0.001_s1337" for g in sweep.report_groups(dropout).values()}
    assert all(metrics(dropout, name, 1e-3)["config"]["dropout"] == 0.1 for name in ("vanilla", "linear"))
    assert {p: v for p, v in snapshot(tmp_path / "job" / "runs").items() if p in before} == before  # nothing moved aside

    relu = job(tmp_path, models="vanilla,linear", feature_map="relu")  # linear's own field: only linear trains anew
    sweep.run(relu, train_runner.train)
    assert capsys.readouterr().out.count("already done, skipped") == 1
    assert sweep.report_groups(relu)["vanilla"] == sweep.report_groups(s)["vanilla"]
    assert len(run_dirs(relu)) == 5 and metrics(relu, "linear", 1e-3)["config"]["feature_map"] == "relu"
    assert {p: v for p, v in snapshot(tmp_path / "job" / "runs").items() if p in before} == before


def test_an_interrupted_run_is_resumed_or_started_over(shakespeare, tmp_path, capsys):
    s = job(tmp_path, models="vanilla")
    sweep.run(s, train_runner.train)
    run = tmp_path / "job" / "runs" / sweep.report_groups(s)["vanilla"] / "lr0.001_s1337"
    done = json.loads((run / "metrics.json").read_text())
    assert torch.load(run / "ckpt.pt", weights_only=True)["iter_num"] == 6
    # as if killed after its last checkpoint was written: its metrics still say running
    files.write_json(run / "metrics.json", dict(done, status="running"))
    capsys.readouterr()
    sweep.run(s, train_runner.train)
    out = capsys.readouterr().out
    assert "vanilla lr=0.001 seed=1337 (resuming)" in out and "resuming vanilla" in out
    assert json.loads((run / "metrics.json").read_text())["status"] == "done"
    # killed before its first checkpoint: only the metrics came back, and it starts over
    (run / "ckpt.pt").unlink()
    files.write_json(run / "metrics.json", dict(done, status="running"))
    sweep.run(s, train_runner.train)
    out = capsys.readouterr().out
    assert "(resuming)" not in out and "resuming vanilla" not in out and "step 6:" in out
    again = json.loads((run / "metrics.json").read_text())
    assert again["status"] == "done" and again["best_val_loss"] == done["best_val_loss"]  # the same run again


# -- failures ------------------------------------------------------------------

def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(shakespeare, tmp_path):
    s = job(tmp_path, models="vanilla", learning_rates="1e9,1e-3", grad_clip=0.0)
    sweep.run(s, train_runner.train)
    assert metrics(s, "vanilla", 1e9)["status"] == "diverged" and metrics(s, "vanilla", 1e-3)["status"] == "done"
    by_rate = sweep.model_runs(tmp_path / "job", sweep.report_groups(s)["vanilla"])
    assert sorted(by_rate) == [1e-3, 1e9] and sweep.best_rate(by_rate, lambda m: -m["best_val_loss"]) == 1e-3


@pytest.mark.parametrize("error, status", [
    (AssertionError("a kernel's own check failed"), "failed"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB"), "oom"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 99 GiB"), "oom"),
])
def test_a_crashing_run_is_recorded_with_its_traceback_and_the_sweep_goes_on(shakespeare, tmp_path, capsys, error, status):
    s = job(tmp_path, models="linear,vanilla", max_iters=0)
    trained = []

    def crash_linear(settings, **kw):
        trained.append(settings.model_type)
        if settings.model_type == "linear":
            raise error
        return train_runner.train(settings, **kw)
    sweep.run(s, crash_linear)
    assert trained == ["linear", "vanilla"]  # the sweep went on after the crash
    failed, group = metrics(s, "linear", 1e-3), sweep.report_groups(s)["linear"]
    assert failed["status"] == status and failed["error"] == f"{type(error).__name__}: {error}"
    assert failed["model_type"] == "linear" and failed["config"]["learning_rate"] == 1e-3
    assert "crash_linear" in (tmp_path / "job" / "runs" / group / "lr0.001_s1337" / "error.log").read_text()  # the whole traceback
    assert metrics(s, "vanilla", 1e-3)["status"] == "done"
    assert f"1 run(s) did not finish: {group}/lr0.001_s1337" in capsys.readouterr().out
    sweep.run(s, crash_linear)  # a re-run skips it until its folder is deleted
    assert f"{group}/lr0.001_s1337 already {status}, skipped" in capsys.readouterr().out and len(trained) == 2


def test_a_bad_setting_inside_a_run_stops_the_sweep_instead_of_failing_each_run(shakespeare, tmp_path):
    s = job(tmp_path, models="vanilla,linear")
    trained = []

    def refuses(settings, **kw):
        trained.append(settings.model_type)
        raise UserError("a setting this run cannot take")
    with pytest.raises(UserError, match="a setting this run cannot take"):
        sweep.run(s, refuses)
    assert trained == ["vanilla"] and not list((tmp_path / "job" / "runs").glob("*/*/metrics.json"))


# -- learning-rate rounds and seeds --------------------------------------------

def test_lr_bracket_steps_past_the_end_where_the_best_learning_rate_is(tmp_path):
    def record(name, lr, status, best, seed=1337):
        files.write_json(tmp_path / "runs" / name / f"lr{lr:g}_s{seed}" / "metrics.json",
                         {"status": status, "best_val_loss": best, "config": {"learning_rate": lr, "seed": seed}})

    def beyond(name, tried, grid):
        by_rate = {lr: runs for lr, runs in sweep.model_runs(tmp_path, name).items() if lr in tried}
        return sweep.lr_beyond(sweep.best_rate(by_rate, lambda m: -m["best_val_loss"]), tried, grid)
    grid = [5e-4, 1e-3, 2e-3]
    for lr, best in zip(grid, (1.50, 1.52, 1.55)):
        record("low", lr, "done", best)
    for lr, best in zip(grid, (1.50, 1.45, 1.48)):
        record("inside", lr, "done", best)
    for lr, best in zip(grid, (1.50, 1.45, 1.0)):
        record("high", lr, "diverged" if lr == 2e-3 else "done", best)  # a diverged run is worst, whatever it had
    assert beyond("low", grid, grid) == 2.5e-4
    assert beyond("inside", grid, grid) is None
    assert beyond("high", grid, grid) is None
    record("high", 4e-3, "done", 1.40)  # an earlier round's step up: now the best, and at the end again
    assert beyond("high", [*grid, 4e-3], grid) == 8e-3
    assert sweep.lr_beyond(1e-3, [1e-3], [1e-3]) is None  # one value: no step
    # a rate's runs count by their mean, an unfinished seed as the worst; ties go to the smaller rate
    assert sweep.best_rate({1e-3: [{"status": "done", "best_val_loss": 1.0}, {"status": "running"}],
                            2e-3: [{"status": "done", "best_val_loss": 2.0}]}, lambda m: -m["best_val_loss"]) == 2e-3
    assert sweep.best_rate({2e-3: [{"status": "done", "best_val_loss": 1.0}],
                            1e-3: [{"status": "done", "best_val_loss": 1.0}]}, lambda m: -m["best_val_loss"]) == 1e-3


def test_a_sweep_with_lr_bracket_trains_one_step_past_the_best_end_and_resumes_it(shakespeare, tmp_path, capsys):
    s = job(tmp_path, models="vanilla", learning_rates="1e-4,1e-3", lr_bracket=1)
    sweep.run(s, train_runner.train)  # 6 iterations: the larger learning rate is the better one
    group = sweep.report_groups(s)["vanilla"]
    assert run_dirs(s) == [f"{group}/lr0.0001_s1337", f"{group}/lr0.001_s1337", f"{group}/lr0.01_s1337"]
    assert metrics(s, "vanilla", 1e-2)["status"] == "done"
    assert "vanilla's best learning rate is at an end of those tried: also 0.01" in capsys.readouterr().out
    sweep.run(s, train_runner.train)
    assert capsys.readouterr().out.count("already done, skipped") == 3
    assert sorted(sweep.model_runs(tmp_path / "job", group)) == [1e-4, 1e-3, 1e-2]


def test_seeds_at_best_train_more_seeds_only_at_the_finalist_learning_rates(shakespeare, tmp_path, capsys):
    s = job(tmp_path, models="vanilla", learning_rates="1e-5,1e-4,1e-3", seeds_at_best="7,1337", finalists=2)
    sweep.run(s, train_runner.train)  # 6 iterations: the larger the learning rate, the better
    group = sweep.report_groups(s)["vanilla"]
    assert run_dirs(s) == [f"{group}/lr0.0001_s1337", f"{group}/lr0.0001_s7", f"{group}/lr0.001_s1337",
                           f"{group}/lr0.001_s7", f"{group}/lr1e-05_s1337"]
    assert "seeds 7 at each model's best learning rates: vanilla 0.001,0.0001" in capsys.readouterr().out
    assert metrics(s, "vanilla", 1e-3, seed=7)["config"]["seed"] == 7
    assert metrics(s, "vanilla", 1e-3, seed=7)["best_val_loss"] != metrics(s, "vanilla", 1e-3)["best_val_loss"]


# -- workers -------------------------------------------------------------------

def job_file(tmp_path, **changes):
    """A job's config file (workers configure themselves again from the job's files and arguments)."""
    path = tmp_path / "tiny_sweep.py"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in dict(SWEEP, out_dir=str(tmp_path / "job"), **changes).items()))
    return str(path)


@pytest.mark.slow
def test_workers_share_the_sweep_and_each_run_is_trained_once(shakespeare, tmp_path, capfd):
    # with lr_bracket the workers train the grid, then the step past its better end (1e-3, after 6 iterations)
    s = train_runner.configure(job_file(tmp_path, models="vanilla,linear", learning_rates="1e-4,1e-3"),
                               overrides=dict(sweep_workers=2, lr_bracket=1))
    sweep.run(s, train_runner.train)
    groups = sweep.report_groups(s)
    assert run_dirs(s) == sorted(f"{groups[m]}/lr{lr}_s1337" for m in ("vanilla", "linear") for lr in ("0.0001", "0.001", "0.01"))
    assert all(metrics(s, m, lr)["status"] == "done" for m in ("vanilla", "linear") for lr in (1e-4, 1e-3, 1e-2))
    assert not list((tmp_path / "job").glob("runs/*/*/.claimed"))  # claims are released as runs finish
    out = capfd.readouterr().out  # the workers' output: each run started by exactly one of them
    assert out.count("2 workers started") == 2  # the grid, then the bracketing round
    for m in ("vanilla", "linear"):
        for lr in ("0.0001", "0.001", "0.01"):
            assert out.count(f": {m} lr={lr} seed=1337") == 1, (m, lr)
    sweep.run(s, train_runner.train)  # a second time: every run is done, no worker starts
    out = capfd.readouterr().out
    assert out.count("already done, skipped") == 6 and "workers started" not in out
    assert not list((tmp_path / "job").glob("runs/*/*/.claimed"))


def test_the_workers_of_a_job_made_without_config_files_train_its_runs(shakespeare, tmp_path):
    unset = {k: v for k, v in SWEEP.items() if k != "dropout"}  # left at the runner's default, which DEFAULT_JOB changes
    s = train_runner.configure(None, overrides=dict(unset, out_dir=str(tmp_path / "job"), models="vanilla", sweep_workers=2))
    sweep.run(s, train_runner.train)
    assert run_dirs(s) == [f"{sweep.report_groups(s)['vanilla']}/lr0.001_s1337"]


@pytest.mark.slow
def test_a_bakeoff_with_workers_compiles_its_benchmarks_beside_its_runs(shakespeare, tmp_path, capfd):
    s = train_runner.configure(job_file(tmp_path, models="vanilla,linear", decode_lens="8,16", seq_lens="16,32",
                                        tokens_per_batch=64, trials=1, decode_trials=1),
                               overrides=dict(stage="bakeoff", sweep_workers=2, seeds_at_best="7", warm_benchmarks=True))
    sweep.run(s, train_runner.train)
    out = capfd.readouterr().out
    # workers start for the grid, and for seed 7 unless a worker that found its round done took those runs on itself
    assert out.count("workers started") in (1, 2) and out.count("the benchmarks compile beside the runs") == 1
    assert out.count("[bench_decode] compiled ") == 4 and out.count("[bench_memory] compiled ") == 4
    assert not list((tmp_path / "job").glob("bench*"))  # nothing measured or written
    assert len(run_dirs(s)) == 4


def test_a_worker_takes_one_run_of_each_model_not_begun_first_then_the_slowest_model_s(shakespeare, tmp_path, capsys):
    s = job(tmp_path, models="vanilla,linear", learning_rates="1e-3,2e-3", sweep_worker=1, sweep_workers=2)
    sweep.run(s, train_runner.train)  # worker 1 of 2, alone: one run of each model, then the slower model's
    started = [line.split(": ", 1)[1].split(" seed")[0] for line in capsys.readouterr().out.splitlines()
               if line.startswith("[sweep] run ")]
    ms = {m: metrics(s, m, 1e-3)["ms_per_iter"] for m in ("vanilla", "linear")}
    slower, faster = sorted(ms, key=ms.get, reverse=True)
    assert started == ["vanilla lr=0.001", "linear lr=0.001", f"{slower} lr=0.002", f"{faster} lr=0.002"]
    assert not (tmp_path / "job" / "job.json").exists()  # the job's record is the sweep's, not a worker's


def test_workers_are_dealt_round_robin_over_the_visible_gpus(monkeypatch):
    assert workers.deal(5, ["2", "3"]) == ["2", "3", "2", "3", "2"]  # runs_per_gpu 2-3: shared GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert workers.visible_gpus() == ["4", "6"]  # the names the user gave, not 0..n-1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match="leaves no GPU"):
        workers.deal(2, workers.visible_gpus())


def fake_mps_control(tmp_path, monkeypatch, reply="", status=0):
    """An nvidia-cuda-mps-control on PATH that logs each call (its arguments, stdin and pipe directory)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "mps_calls.txt"
    control = bin_ / workers.MPS_CONTROL
    control.write_text(f"#!/bin/sh\necho \"$* [$(cat)] $CUDA_MPS_PIPE_DIRECTORY\" >> {log}\n"
                       f"echo '{reply}'\nexit {status}\n")
    control.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    monkeypatch.setattr(workers.tempfile, "gettempdir", lambda: str(tmp_path))
    return log


def test_workers_sharing_a_gpu_get_a_private_mps_daemon_quit_after(tmp_path, monkeypatch):
    log = fake_mps_control(tmp_path, monkeypatch)
    with workers.mps_daemon(True, "sweep") as env:
        pipes = env["CUDA_MPS_PIPE_DIRECTORY"]
        assert pipes.startswith(str(tmp_path)) and env["CUDA_MPS_LOG_DIRECTORY"].startswith(pipes)
        assert log.read_text().splitlines() == [f"-d [] {pipes}"]  # started as a daemon, in its own directory
    assert log.read_text().splitlines()[1] == f" [quit] {pipes}"  # quit on leaving


def test_a_running_mps_daemon_is_joined_and_left_running(tmp_path, monkeypatch):
    log = fake_mps_control(tmp_path, monkeypatch, reply="An instance of this daemon is already running", status=1)
    with workers.mps_daemon(True, "sweep") as env:
        assert env["CUDA_MPS_PIPE_DIRECTORY"]
    assert len(log.read_text().splitlines()) == 1  # no quit: it was not this sweep's


def test_without_mps_the_workers_time_slice_the_gpu(tmp_path, monkeypatch, capsys):
    log = fake_mps_control(tmp_path, monkeypatch, reply="cannot start", status=1)
    with workers.mps_daemon(True, "sweep") as env:
        assert env == {}
    assert "MPS did not start (cannot start)" in capsys.readouterr().out
    with workers.mps_daemon(False, "sweep") as env:  # not wanted (mps=False, or no GPU is shared)
        assert env == {}
    assert len(log.read_text().splitlines()) == 1
    monkeypatch.setenv("PATH", "/nonexistent")  # not installed
    with workers.mps_daemon(True, "sweep") as env:
        assert env == {}


def claim_order(root, runs, written):
    for folder, name, text in written:
        (root / "runs" / folder).mkdir(parents=True, exist_ok=True)
        (root / "runs" / folder / name).write_text(text)
    return [run[0] for _, run in workers.claims(root, runs, sweep.FINISHED, sweep.read_metrics)]


def test_claims_skip_runs_taken_or_finished_and_prefer_models_not_begun(tmp_path):
    runs = [(f"{m}/lr{i}", m, "", SimpleNamespace(max_iters=100)) for m in ("a", "b", "c") for i in (1, 2)]
    taken = claim_order(tmp_path, runs, [("a/lr1", ".claimed", ""), ("b/lr1", "metrics.json", '{"status": "done"}'),
                                         ("b/lr2", ".claimed", "")])
    assert taken == ["c/lr1", "a/lr2", "c/lr2"]  # c not begun: first; then the rest in order (no speed known)
    assert all((tmp_path / "runs" / f / ".claimed").exists() for f in taken)


def test_after_the_first_runs_the_longest_come_first_and_a_model_still_compiling_last(tmp_path):
    runs = [(f"{m}/lr{i}", m, "", SimpleNamespace(max_iters=iters)) for m, iters in (("a", 100), ("b", 100), ("c", 30), ("d", 100))
            for i in (1, 2, 3)]
    begun = [(f"{m}/lr1", "metrics.json", json.dumps(dict(status=status, **({"ms_per_iter": ms} if ms else {}))))
             for m, status, ms in (("a", "done", 2.0), ("b", "running", 5.0), ("c", "done", 10.0), ("d", "running", None))]
    begun += [("b/lr1", ".claimed", ""), ("d/lr1", ".claimed", "")]  # training now
    # priced at iterations x ms/iter: b 500, c 300, a 200; d reports no speed yet (compiling): last
    assert claim_order(tmp_path, runs, begun) == ["b/lr2", "b/lr3", "c/lr2", "c/lr3", "a/lr2", "a/lr3", "d/lr2", "d/lr3"]


def test_sweep_eta_prices_each_unfinished_run_at_its_models_mean(tmp_path):
    runs = [(f"{model}/lr{i}", model, "", None) for model in ("fast", "slow", "new") for i in range(2)]
    assert workers.eta(tmp_path, runs, 2, sweep.FINISHED, sweep.read_metrics) is None  # nothing finished: no price
    for folder, seconds, status in [("fast/lr0", 60, "done"), ("fast/lr1", 60, "done"), ("slow/lr0", 300, "done"),
                                    ("new/lr0", None, "oom")]:
        files.write_json(tmp_path / "runs" / folder / "metrics.json", dict(status=status, wall_time_s=seconds))
    # left: slow/lr1 at slow's 300 s, new/lr1 at the mean of every finished run (140 s), two workers sharing them
    assert workers.eta(tmp_path, runs, 2, sweep.FINISHED, sweep.read_metrics) == pytest.approx((300 + 140) / 2 / 60)


# -- the job's config ----------------------------------------------------------

def test_bakeoff_config_is_the_default_job():
    cpu = train_runner.configure(train_runner.DEFAULT_JOB, overrides={"device": "cpu"})
    assert cpu.stage == "bakeoff" and cpu.max_iters == 300 and cpu.seeds == "1337" and cpu.out_dir == "out-bakeoff-cpu"
    assert configurator.split(cpu.models) == [
        "vanilla", "rope", "linear:pos_emb=none", "sparse:pos_emb=rope", "delta:pos_emb=none", "delta_product:pos_emb=none",
        "nsa:pos_emb=rope", "delta_softmax", "gated_delta_window"]
    every = [configurator.for_model(cpu, name) for name in configurator.split(cpu.models)]
    assert [e.model_args()["pos_emb"] for e in every] == ["learned", "rope", "none", "rope", "none", "none", "rope", "none", "none"]
    gpu = train_runner.configure(train_runner.DEFAULT_JOB, overrides={"device": "cpu", "profile": "gpu"})
    # the task's own length applies; two more seeds at each model's two best rates on the first
    assert gpu.max_iters == 3000 and gpu.seeds == "1337" and len(configurator.split(gpu.seeds_at_best)) == 2
    assert gpu.finalists == 2
    assert gpu.out_dir == "out-bakeoff-gpu"
    assert gpu.runs_per_gpu == 3 and cpu.runs_per_gpu == 1  # shared GPUs: results/h100-sharing
    assert gpu.lr_bracket == 2 and cpu.lr_bracket == 1


def test_a_job_folder_carried_back_from_a_gpu_is_found_on_a_cpu(tmp_path):
    s = train_runner.configure(overrides=dict(device="cpu", models="vanilla,sparse", out_dir=str(tmp_path)))
    here = sweep.report_groups(s)
    (tmp_path / "job.json").write_text(json.dumps({"stage": "bakeoff", "device_type": "cuda"}))
    there = sweep.report_groups(s)
    assert here["vanilla"] != there["vanilla"]  # the device type is part of what makes a run's result
    for name in ("vanilla", "sparse"):  # the GPU's kernel paths (sparse: flex) name the folder, as the GPU named it
        assert there[name] == sweep.group_folder(configurator.for_model(s, name), name, "cuda")


def test_a_gpu_job_is_found_by_the_dtype_and_kernels_its_runs_recorded(tmp_path):
    # 'auto' resolves to bfloat16 there and FLA's probe needs that GPU: the report takes what the runs recorded
    s = train_runner.configure(overrides=dict(device="cpu", models="delta", out_dir=str(tmp_path)))
    (tmp_path / "job.json").write_text(json.dumps({"stage": "bakeoff", "device_type": "cuda"}))
    entry = configurator.for_model(s, "delta")
    folder = f"delta-{configurator.identity(entry, leave_out=sweep.PER_RUN, device_type='cuda', kernels=['fla'], dtype='bfloat16')}"
    decoy = "delta-0123456789"  # recorded the same, but not named by them
    for name in (decoy, folder):
        run = tmp_path / "runs" / name / "lr0.001_s1337"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"status": "done", "kernel_path": ["fla"], "config": {"dtype": "bfloat16"}}))
    assert folder != sweep.group_folder(entry, "delta", "cuda")  # what this machine would name it
    assert sweep.report_groups(s)["delta"] == folder


def test_a_model_of_models_takes_its_own_settings_after_a_colon():
    s = train_runner.configure(overrides=dict(device="cpu", models="vanilla,vanilla:pos_emb=alibi:n_kv_head=2"))
    plain, alibi = (configurator.for_model(s, name) for name in configurator.split(s.models))
    assert plain.model_args()["pos_emb"] == "learned" and plain.model_args()["n_kv_head"] is None
    assert alibi.model_type == "vanilla" and alibi.model_args()["pos_emb"] == "alibi" and alibi.model_args()["n_kv_head"] == 2
    folder = sweep.group_folder(alibi, "vanilla:pos_emb=alibi:n_kv_head=2")
    assert re.fullmatch(r"vanilla_pos_emb_alibi_n_kv_head_2-[0-9a-f]{10}", folder)  # a name any machine can carry
    assert folder.split("-")[1] != sweep.group_folder(plain, "vanilla").split("-")[1]
    with pytest.raises(UserError, match="posemb is no setting of vanilla"):
        train_runner.configure(overrides=dict(device="cpu", models="vanilla:posemb=none"))
    with pytest.raises(UserError, match="write a model's own settings as name:key=value"):
        train_runner.configure(overrides=dict(device="cpu", models="vanilla:alibi"))
