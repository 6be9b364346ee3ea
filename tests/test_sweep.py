"""The bake-off: parameter matching, a resumable sweep that survives bad runs, benchmarks, the report."""

import json
import os
import time

import pytest
import torch
from conftest import ROOT

import train_runner
from train_runner import configure, count_params, match_params, model_settings, read_metrics

FAMILY_CONFIGS = ["vanilla", "rope", "linear", "based", "sparse", "local_global", "strided", "fixed", "topk",
                  "delta", "gated_delta", "delta_product", "nsa"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # the CPU profile and the baby GPT (counted on the meta device)
def test_every_family_is_matched_within_3_percent(device):
    raw = {"device": device}
    target = count_params(model_settings("vanilla", [], raw))
    assert (device == "cuda") == (abs(target - 10.65e6) < 0.05e6)
    for name in FAMILY_CONFIGS:
        settings = model_settings(name, [], raw)
        change, n = match_params(settings, target)
        assert abs(n / target - 1) <= 0.03, (name, n, target)
        assert n == count_params(dict(settings, **change))  # counted on the built model, not by formula


def test_matching_searches_when_a_family_is_far_off():
    settings = model_settings("vanilla", [], {"device": "cpu"})
    change, n = match_params(settings, 2 * count_params(settings))
    assert change and abs(n / (2 * count_params(settings)) - 1) <= 0.03
    with pytest.raises(train_runner.UserError, match="no width within 3%"):
        match_params(settings, 100)


@pytest.fixture
def tiny_sweep(shakespeare, tmp_path):
    """A sweep config that makes every run tiny, and the resolved sweep settings."""
    cfg_file = tmp_path / "tiny_sweep.py"
    cfg_file.write_text(
        "n_layer, n_head, n_embd, block_size, batch_size = 2, 4, 32, 32, 8\n"
        "max_iters = lr_decay_iters = 6\neval_interval, eval_iters, log_interval, warmup_iters = 3, 2, 3, 1\n"
        "learning_rates = '1e-3'\nmodels_to_test = 'vanilla,linear,nsa,mamba'\n"
        "decode_lens, seq_lens, tokens_per_batch, trials, decode_trials = '8,16', '16,32', 64, 1, 1\n")
    paths = [str(cfg_file)]
    raw = {"device": "cpu", "sweep_dir": str(tmp_path / "sweep")}
    return configure(train_runner.DEFAULTS, paths, raw_overrides=raw), paths, raw


def test_bakeoff_writes_the_report_and_a_rerun_redoes_nothing(tiny_sweep, capsys):
    cfg, paths, raw = tiny_sweep
    models = train_runner.bakeoff(cfg, paths, raw)
    root = train_runner.sweep_root(cfg)
    assert list(models) == ["vanilla", "linear", "nsa"]  # mamba has no config: skipped, said
    assert "skipping mamba" in capsys.readouterr().out
    report = json.loads((root / "bakeoff.json").read_text())["models"]
    for name in ("vanilla", "linear", "nsa"):
        m = report[name]
        assert m["best_lr"] == 1e-3 and m["seeds"] == 1 and m["status"] == {"done": 1}
        assert 0 < m["best_val_loss"] < 4.3 and m["tokens_per_sec"] > 0
        assert set(m["ms_per_token"]) == {"8", "16"} and set(m["step_ms"]) == {"16", "32"}
    md = (root / "bakeoff.md").read_text()
    assert "| model | params | best LR | best val (± std) |" in md and "| vanilla |" in md and "## Decoding" in md
    for png in ("loss_curves", "final_val_loss", "ppl_vs_flops", "ppl_vs_wallclock", "latency_vs_context", "lr_sweep"):
        assert (root / "plots" / f"{png}.png").stat().st_size > 1000
    assert json.loads((root / "param_matching.json").read_text())["skipped"].keys() == {"mamba"}

    stamps = {p: p.stat().st_mtime_ns for p in root.glob("runs/*/*")}
    train_runner.sweep(cfg, paths, raw)
    assert capsys.readouterr().out.count("already done, skipped") == 3
    assert stamps == {p: p.stat().st_mtime_ns for p in root.glob("runs/*/*")}


def test_a_run_whose_config_changed_is_set_aside_and_trained_again(tiny_sweep, capsys):
    cfg, paths, raw = tiny_sweep
    cfg = dict(cfg, models_to_test="vanilla")
    train_runner.sweep(cfg, paths, raw)
    root = train_runner.sweep_root(cfg)
    run = root / "runs" / "vanilla_lr0.001_s1337"
    first = json.loads((run / "metrics.json").read_text())
    train_runner.sweep(cfg, paths, dict(raw, attn_impl="naive"))  # how the function is computed, not which: it stands
    assert "already done, skipped" in capsys.readouterr().out
    train_runner.sweep(cfg, paths, dict(raw, dropout="0.1"))
    assert "vanilla_lr0.001_s1337 was trained with dropout=0.0 (now 0.1): moved to" in capsys.readouterr().out
    assert json.loads((root / "replaced" / "vanilla_lr0.001_s1337" / "metrics.json").read_text()) == first
    again = json.loads((run / "metrics.json").read_text())
    assert again["status"] == "done" and again["config"]["dropout"] == 0.1
    train_runner.sweep(cfg, paths, raw)  # and back: the second one set aside beside the first
    assert (root / "replaced" / "vanilla_lr0.001_s1337.2").is_dir()


def test_a_changed_runs_earlier_bracket_and_seeds_are_set_aside_too(tiny_sweep):
    cfg, paths, raw = tiny_sweep
    cfg = dict(cfg, models_to_test="vanilla", learning_rates="1e-3,2e-3")
    raw = dict(raw, models_to_test="vanilla", learning_rates="1e-3,2e-3")
    train_runner.sweep(cfg, paths, raw)
    root = train_runner.sweep_root(cfg)
    # the new config trains only 1e-3: the old 2e-3 run, which it no longer lists, must not stay beside it
    train_runner.sweep(dict(cfg, learning_rates="1e-3"), paths, dict(raw, learning_rates="1e-3", dropout="0.1"))
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["vanilla_lr0.001_s1337"]
    assert sorted(p.name for p in (root / "replaced").iterdir()) == ["vanilla_lr0.001_s1337", "vanilla_lr0.002_s1337"]
    report = train_runner.report(dict(cfg, learning_rates="1e-3", dropout=0.1))
    assert report["vanilla"]["status"] == {"done": 1}


def test_an_interrupted_run_is_resumed(tiny_sweep, capsys):
    cfg, paths, raw = tiny_sweep
    cfg = dict(cfg, models_to_test="vanilla")
    train_runner.sweep(cfg, paths, raw)
    metrics_path = train_runner.sweep_root(cfg) / "runs" / "vanilla_lr0.001_s1337" / "metrics.json"
    done = json.loads(metrics_path.read_text())
    # as if killed after its last checkpoint was written: metrics still say running
    ckpt_path = metrics_path.parent / "ckpt.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["iter_num"] == 6
    metrics_path.write_text(json.dumps(dict(done, status="running")))
    capsys.readouterr()
    train_runner.sweep(cfg, paths, raw)
    out = capsys.readouterr().out
    assert "(resuming)" in out and "resuming vanilla" in out
    assert json.loads(metrics_path.read_text())["status"] == "done"


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tiny_sweep):
    cfg, paths, raw = tiny_sweep
    cfg = dict(cfg, models_to_test="vanilla", learning_rates="1e9,1e-3")
    raw = dict(raw, grad_clip="0.0")
    train_runner.sweep(cfg, paths, raw)
    runs = train_runner.sweep_root(cfg) / "runs"
    assert json.loads((runs / "vanilla_lr1e+09_s1337" / "metrics.json").read_text())["status"] == "diverged"
    assert json.loads((runs / "vanilla_lr0.001_s1337" / "metrics.json").read_text())["status"] == "done"
    models = train_runner.report(cfg)
    assert models["vanilla"]["best_lr"] == 1e-3 and models["vanilla"]["status"] == {"diverged": 1, "done": 1}


def test_a_crashing_run_is_recorded_with_its_traceback_and_the_sweep_goes_on(tiny_sweep, monkeypatch, capsys):
    cfg, paths, raw = tiny_sweep
    cfg = dict(cfg, models_to_test="vanilla,linear")
    real = train_runner.run

    def crash_linear(run_cfg, *a, **k):
        if run_cfg["model_type"] == "linear":
            raise AssertionError("a kernel's own check failed")
        return real(run_cfg, *a, **k)
    monkeypatch.setattr(train_runner, "run", crash_linear)
    train_runner.sweep(cfg, paths, dict(raw, models_to_test="vanilla,linear"))
    runs = train_runner.sweep_root(cfg) / "runs"
    failed = json.loads((runs / "linear_lr0.001_s1337" / "metrics.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == "AssertionError: a kernel's own check failed"
    assert "crash_linear" in (runs / "linear_lr0.001_s1337" / "error.log").read_text()  # the whole traceback
    assert json.loads((runs / "vanilla_lr0.001_s1337" / "metrics.json").read_text())["status"] == "done"
    assert "1 run(s) did not finish: linear_lr0.001_s1337" in capsys.readouterr().out
    assert train_runner.report(cfg)["linear"]["status"] == {"failed": 1}


def test_bench_memory_records_out_of_memory_as_a_row(tmp_path, monkeypatch):
    cfg = configure(train_runner.DEFAULTS, overrides=dict(models="vanilla", n_embd=32, n_head=4, n_layer=2, trials=1,
                                                          device="cpu", stage="bench_memory", seq_lens="16,32",
                                                          tokens_per_batch=64, out_dir=str(tmp_path)))
    real = train_runner.build_for

    def build_or_fail(settings, block_size, *a, **k):
        if block_size == 32:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB")
        return real(settings, block_size, *a, **k)
    monkeypatch.setattr(train_runner, "build_for", build_or_fail)
    rows = train_runner.bench(cfg)["rows"]
    oom = {k: v for k, v in rows[1].items() if k not in ("key", "commit", "wall_s")}
    assert rows[0]["T"] == 16 and rows[0]["ms"] > 0 and oom == {"model": "vanilla", "T": 32, "status": "OOM"}
    assert rows[0]["wall_s"] > rows[0]["ms"] / 1e3 * 1.5  # the row's whole cost: its build and warm-up too
    table = (tmp_path / "bench_memory.md").read_text()
    assert "| model | 16 | 32 |" in table and table.rstrip().endswith("| OOM |")


def test_bakeoff_config_is_the_default_job():
    cfg = configure(train_runner.DEFAULTS, [str(ROOT / "config" / "bakeoff.py")], raw_overrides={"device": "cpu"})
    assert cfg["stage"] == "bakeoff" and cfg["max_iters"] == 300 and cfg["seeds"] == "1337"
    gpu = configure(train_runner.DEFAULTS, [str(ROOT / "config" / "bakeoff.py")], raw_overrides={"device": "cuda"})
    # the model configs' own lengths apply; rates chosen on one seed, two more at each best rate
    assert gpu["max_iters"] == 3000 and gpu["seeds"] == "1337" and len(gpu["seeds_at_best"].split(",")) == 2
    assert gpu["runs_per_gpu"] == 3 and cfg["runs_per_gpu"] == 1  # shared GPUs: results/h100-sharing
    assert gpu["lr_bracket"] == 2 and cfg["lr_bracket"] == 1


def specs_for(**raw):
    return dict(train_runner.bench_specs(configure(train_runner.DEFAULTS, raw_overrides=raw)))


def test_benchmarked_families_keep_their_own_defaults():
    specs = specs_for(models="linear,sparse,delta_product")
    assert (specs["linear"]["based_window"], specs["sparse"]["window"]) == (0, 64)  # each family's own default
    assert specs["delta_product"]["variant"] == "gated_deltaproduct"  # the registry's preset
    given = specs_for(models="linear,sparse", window="8")
    assert given["linear"]["based_window"] == 0 and given["sparse"]["window"] == 8  # one name, one meaning


def test_workers_share_the_sweep_and_each_run_is_trained_once(tiny_sweep, capfd):
    cfg, paths, raw = tiny_sweep
    # with lr_bracket the workers train the grid, then the step past its better end (1e-3, after 6 iterations)
    cfg = dict(cfg, models_to_test="vanilla,linear", learning_rates="1e-4,1e-3", sweep_workers=2, lr_bracket=1)
    raw = dict(raw, models_to_test="vanilla,linear", learning_rates="1e-4,1e-3", sweep_workers="2", lr_bracket="1")
    train_runner.sweep(cfg, paths, raw)
    runs = train_runner.sweep_root(cfg) / "runs"
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in runs.glob("*/metrics.json")}
    lrs = ("0.0001", "0.001", "0.01")
    assert statuses == {f"{m}_lr{lr}_s1337": "done" for m in ("vanilla", "linear") for lr in lrs}
    assert not list(runs.glob("*/.claimed"))  # claims are released as runs finish
    out = capfd.readouterr().out  # the workers' output: each run started by exactly one of them
    for m in ("vanilla", "linear"):
        for lr in lrs:
            assert out.count(f": {m} lr={lr} seed=1337") == 1, (m, lr)
    train_runner.sweep(cfg, paths, raw)  # a second time: every worker finds every run done
    assert not list(runs.glob("*/.claimed"))


def test_workers_are_dealt_round_robin_over_the_visible_gpus(monkeypatch):
    assert train_runner.deal(5, ["2", "3"]) == ["2", "3", "2", "3", "2"]  # runs_per_gpu 2-3: shared GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert train_runner.visible_gpus() == ["4", "6"]  # the names the user gave, not 0..n-1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(train_runner.UserError, match="leaves no GPU"):
        train_runner.deal(2, train_runner.visible_gpus())


def fake_mps_control(tmp_path, monkeypatch, reply="", status=0):
    """An nvidia-cuda-mps-control on PATH that logs each call (its arguments, stdin and pipe directory)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "mps_calls.txt"
    control = bin_ / train_runner.MPS_CONTROL
    control.write_text(f"#!/bin/sh\necho \"$* [$(cat)] $CUDA_MPS_PIPE_DIRECTORY\" >> {log}\n"
                       f"echo '{reply}'\nexit {status}\n")
    control.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    monkeypatch.setattr(train_runner.tempfile, "gettempdir", lambda: str(tmp_path))
    return log


def test_workers_sharing_a_gpu_get_a_private_mps_daemon_quit_after(tmp_path, monkeypatch):
    log = fake_mps_control(tmp_path, monkeypatch)
    with train_runner.mps_daemon(True, "sweep") as env:
        pipes = env["CUDA_MPS_PIPE_DIRECTORY"]
        assert pipes.startswith(str(tmp_path)) and env["CUDA_MPS_LOG_DIRECTORY"].startswith(pipes)
        assert log.read_text().splitlines() == [f"-d [] {pipes}"]  # started as a daemon, in its own directory
    assert log.read_text().splitlines()[1] == f" [quit] {pipes}"  # quit on leaving


def test_a_running_mps_daemon_is_joined_and_left_running(tmp_path, monkeypatch):
    log = fake_mps_control(tmp_path, monkeypatch, reply="An instance of this daemon is already running", status=1)
    with train_runner.mps_daemon(True, "sweep") as env:
        assert env["CUDA_MPS_PIPE_DIRECTORY"]
    assert len(log.read_text().splitlines()) == 1  # no quit: it was not this sweep's


def test_without_mps_the_workers_time_slice_the_gpu(tmp_path, monkeypatch, capsys):
    log = fake_mps_control(tmp_path, monkeypatch, reply="cannot start", status=1)
    with train_runner.mps_daemon(True, "sweep") as env:
        assert env == {}
    assert "MPS did not start (cannot start)" in capsys.readouterr().out
    with train_runner.mps_daemon(False, "sweep") as env:  # not wanted (mps=False, or no GPU is shared)
        assert env == {}
    assert len(log.read_text().splitlines()) == 1
    monkeypatch.setenv("PATH", "/nonexistent")  # not installed
    with train_runner.mps_daemon(True, "sweep") as env:
        assert env == {}


def test_a_worker_takes_one_run_of_each_model_not_begun_first_then_the_slowest_model_s(tiny_sweep, capsys):
    cfg, paths, raw = tiny_sweep
    raw = dict(raw, models_to_test="vanilla,linear", learning_rates="1e-3,2e-3")
    cfg = dict(cfg, models_to_test="vanilla,linear", learning_rates="1e-3,2e-3", sweep_worker=1, sweep_workers=2)
    train_runner.sweep(cfg, paths, raw)  # worker 1 of 2, alone: one run of each model, then the slower model's
    started = [line.split(": ", 1)[1].split(" seed")[0] for line in capsys.readouterr().out.splitlines()
               if line.startswith("[sweep] run ")]
    ms = {m: read_metrics(train_runner.sweep_root(cfg) / "runs" / f"{m}_lr0.001_s1337")["ms_per_iter"]
          for m in ("vanilla", "linear")}
    slower, faster = sorted(ms, key=ms.get, reverse=True)
    assert started == ["vanilla lr=0.001", "linear lr=0.001", f"{slower} lr=0.002", f"{faster} lr=0.002"]


def claim_order(root, runs, files):
    for folder, name, text in files:
        (root / "runs" / folder).mkdir(parents=True, exist_ok=True)
        (root / "runs" / folder / name).write_text(text)
    return [run[0] for _, run in train_runner.claims(root, runs)]


def test_claims_skip_runs_taken_or_finished_and_prefer_models_not_begun(tmp_path):
    runs = [(f"{m}_{i}", m, "", {}) for m in ("a", "b", "c") for i in (1, 2)]
    taken = claim_order(tmp_path, runs, [("a_1", ".claimed", ""), ("b_1", "metrics.json", '{"status": "done"}'),
                                         ("b_2", ".claimed", "")])
    assert taken == ["c_1", "a_2", "c_2"]  # c not begun: first; then the rest in order (no speed known)
    assert all((tmp_path / "runs" / f / ".claimed").exists() for f in taken)


def test_after_the_first_runs_the_longest_come_first_and_a_model_still_compiling_last(tmp_path):
    runs = [(f"{m}_{i}", m, "", {"max_iters": iters}) for m, iters in (("a", 100), ("b", 100), ("c", 30), ("d", 100))
            for i in (1, 2, 3)]
    begun = [(f"{m}_1", "metrics.json", json.dumps(dict(status=status, **({"ms_per_iter": ms} if ms else {}))))
             for m, status, ms in (("a", "done", 2.0), ("b", "running", 5.0), ("c", "done", 10.0), ("d", "running", None))]
    begun += [("b_1", ".claimed", ""), ("d_1", ".claimed", "")]  # training now
    # priced at iterations x ms/iter: b 500, c 300, a 200; d reports no speed yet (compiling): last
    assert claim_order(tmp_path, runs, begun) == ["b_2", "b_3", "c_2", "c_3", "a_2", "a_3", "d_2", "d_3"]


class Killed(BaseException):
    """The process being stopped from outside (a time limit, Ctrl-C), as the code under test sees it."""


def test_a_benchmark_keeps_the_rows_it_measured_and_resumes_after_a_kill(tmp_path, monkeypatch):
    cfg = configure(train_runner.DEFAULTS, overrides=dict(models="vanilla,linear", n_embd=32, n_head=4, n_layer=2,
                                                          trials=1, device="cpu", stage="bench_memory", seq_lens="16,32",
                                                          tokens_per_batch=64, out_dir=str(tmp_path)))
    real, built, kill = train_runner.build_for, [], [True]

    def build_until_killed(settings, block_size, *a, **k):
        built.append((settings["model_type"], block_size))
        if kill[0] and len(built) == 3:
            raise Killed  # during the third measurement
        return real(settings, block_size, *a, **k)
    monkeypatch.setattr(train_runner, "build_for", build_until_killed)
    with pytest.raises(Killed):
        train_runner.bench(cfg)
    kept = json.loads((tmp_path / "bench_memory.json").read_text())["rows"]
    assert [(r["model"], r["T"]) for r in kept] == [("vanilla", 16), ("linear", 16)]  # written as they were measured
    built.clear()
    kill[0] = False
    rows = train_runner.bench(cfg)["rows"]  # the re-run measures only what is missing
    assert built == [("vanilla", 32), ("linear", 32)] and rows[:2] == kept and all(r["ms"] > 0 for r in rows)
    built.clear()
    train_runner.bench(dict(cfg, trials=2))  # other settings: measured again
    assert len(built) == 4


def test_warming_a_benchmark_runs_each_unmeasured_row_once_and_writes_nothing(tmp_path, monkeypatch):
    cfg = configure(train_runner.DEFAULTS, overrides=dict(models="vanilla,linear", n_embd=32, n_head=4, n_layer=2,
                                                          trials=3, device="cpu", stage="bench_memory", seq_lens="16,32",
                                                          tokens_per_batch=64, out_dir=str(tmp_path / "a")))
    train_runner.bench(dict(cfg, seq_lens="16"))  # measured: kept, so not warmed again
    steps = []
    real = train_runner.build_for

    def counting(settings, block_size, *a, **k):
        m = real(settings, block_size, *a, **k)
        forward = m.forward
        m.forward = lambda *args, **kw: steps.append((settings["model_type"], block_size)) or forward(*args, **kw)
        return m
    monkeypatch.setattr(train_runner, "build_for", counting)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    assert train_runner.bench(dict(cfg, tensorboard_dir=str(tmp_path / "tb")), warm=True) is None
    assert steps == [("vanilla", 32), ("linear", 32)]  # one step each: no repeats
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before
    assert not (tmp_path / "tb").exists()  # no tracker run either


def test_a_bakeoff_with_workers_compiles_its_benchmarks_beside_its_runs(tiny_sweep, capfd):
    cfg, paths, raw = tiny_sweep
    cfg = dict(cfg, stage="bakeoff", models_to_test="vanilla,linear", sweep_workers=2, lr_bracket=1, warm_benchmarks=True)
    raw = dict(raw, models_to_test="vanilla,linear", sweep_workers="2", lr_bracket="1", warm_benchmarks="True")
    train_runner.sweep(cfg, paths, raw)
    out = capfd.readouterr().out
    assert out.count("the benchmarks compile beside the runs") == 1  # the first round only
    assert out.count("[bench_decode] compiled ") == 4 and out.count("[bench_memory] compiled ") == 4
    assert not list(train_runner.sweep_root(cfg).glob("bench_*"))  # nothing measured or written


def test_a_benchmark_can_profile_each_row(tmp_path):
    cfg = configure(train_runner.DEFAULTS, overrides=dict(models="vanilla", n_embd=32, n_head=4, n_layer=2, trials=1,
                                                          device="cpu", stage="bench_layer", seq_lens="16",
                                                          tokens_per_batch=64, out_dir=str(tmp_path), profile=True))
    train_runner.bench(cfg)
    table = (tmp_path / "profile_vanilla_16.txt").read_text()
    assert "Self CPU" in table and "aten::" in table  # the operators of one forward + backward, by time


def test_a_slow_row_stops_repeating_after_its_time_but_not_before_three_repeats():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)
    assert train_runner.timed_median(slow, "cpu", trials=10, seconds=0.01) >= 20 and len(calls) == 1 + 3
    calls.clear()
    train_runner.timed_median(slow, "cpu", trials=5)
    assert len(calls) == 1 + 5  # no limit: every repeat


def test_decode_timing_leaves_out_the_prefill(monkeypatch):
    # a prefill that takes 0.5 s must not show in ms/token: only the steps after the warm-up are timed
    from model import GPT, GPTConfig
    m = GPT(GPTConfig(vocab_size=65, block_size=300, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    step, seen = m.step, []

    def slow_prefill(idx, pos, caches):
        if idx.shape[1] > 1:
            time.sleep(0.5)
        return step(idx, pos, caches)
    monkeypatch.setattr(m, "step", slow_prefill)
    out = m.generate(torch.zeros(1, 4, dtype=torch.long), 5, temperature=0, on_token=lambda i: seen.append(i))
    assert seen == [1, 2, 3, 4, 5] and out.shape == (1, 9)
    assert train_runner.decode_ms_per_token(m, torch.zeros(1, 4, dtype=torch.long), "cpu") < 50


def test_lr_bracket_steps_past_the_end_where_the_best_learning_rate_is(tmp_path):
    def record(name, lr, status, best, seed=1337):
        out = tmp_path / "runs" / train_runner.run_folder(name, lr, seed)
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"status": status, "best_val_loss": best}))
    grid = [5e-4, 1e-3, 2e-3]
    for lr, best in zip(grid, (1.50, 1.52, 1.55)):
        record("low", lr, "done", best)
    for lr, best in zip(grid, (1.50, 1.45, 1.48)):
        record("inside", lr, "done", best)
    for lr, best in zip(grid, (1.50, 1.45, 1.0)):
        record("high", lr, "diverged" if lr == 2e-3 else "done", best)  # a diverged run is worst, whatever it had
    def beyond(name, tried, grid):
        return train_runner.lr_beyond(train_runner.best_tried_lr(tmp_path, name, tried, [1337]), tried, grid)
    assert beyond("low", grid, grid) == 2.5e-4
    assert beyond("inside", grid, grid) is None
    assert beyond("high", grid, grid) is None
    record("high", 4e-3, "done", 1.40)  # an earlier round's step up: now the best, and at the end again
    assert beyond("high", [*grid, 4e-3], grid) == 8e-3
    assert beyond("low", [1e-3], [1e-3]) is None  # one value: no step


def test_a_sweep_with_lr_bracket_trains_one_step_past_the_best_end_and_resumes_it(tiny_sweep, capsys):
    cfg, paths, raw = tiny_sweep
    cfg = dict(cfg, models_to_test="vanilla", learning_rates="1e-4,1e-3", lr_bracket=1)
    train_runner.sweep(cfg, paths, raw)  # 6 iterations: the larger learning rate is the better one
    runs = train_runner.sweep_root(cfg) / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["vanilla_lr0.0001_s1337", "vanilla_lr0.001_s1337",
                                                      "vanilla_lr0.01_s1337"]
    assert json.loads((runs / "vanilla_lr0.01_s1337" / "metrics.json").read_text())["status"] == "done"
    assert "also 0.01" in capsys.readouterr().out
    train_runner.sweep(cfg, paths, raw)
    assert capsys.readouterr().out.count("already done, skipped") == 3
    assert train_runner.report(cfg)["vanilla"]["lr_sweep"].keys() == {"0.0001", "0.001", "0.01"}


def test_seeds_at_best_train_more_seeds_only_at_the_best_learning_rate(tiny_sweep, capsys):
    cfg, paths, raw = tiny_sweep
    cfg = dict(cfg, models_to_test="vanilla", learning_rates="1e-4,1e-3", seeds_at_best="7,1337")
    train_runner.sweep(cfg, paths, raw)  # 6 iterations: the larger learning rate is the better one
    runs = train_runner.sweep_root(cfg) / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["vanilla_lr0.0001_s1337", "vanilla_lr0.001_s1337",
                                                      "vanilla_lr0.001_s7"]
    assert "seeds 7 at each model's best learning rate: vanilla 0.001" in capsys.readouterr().out
    # the report compares rates on their common seed, then reports the best over both of its seeds, even
    # when seed 7 alone would have made the other rate look better
    m7 = runs / "vanilla_lr0.001_s7" / "metrics.json"
    m7.write_text(json.dumps(dict(json.loads(m7.read_text()), best_val_loss=99.0)))
    row = train_runner.report(cfg)["vanilla"]
    assert row["best_lr"] == 1e-3 and row["seeds"] == 2 and row["best_val_loss"] > 40
    assert row["lr_sweep"]["0.001"] < row["lr_sweep"]["0.0001"]


def test_sweep_eta_prices_each_unfinished_run_at_its_models_mean(tmp_path):
    runs = [(f"{model}_{i}", model, "", {}) for model in ("fast", "slow", "new") for i in range(2)]
    assert train_runner.sweep_eta(tmp_path, runs, 2) is None  # nothing finished: nothing to price by
    for folder, seconds, status in [("fast_0", 60, "done"), ("fast_1", 60, "done"), ("slow_0", 300, "done"),
                                    ("new_0", None, "oom")]:
        train_runner.write_json(tmp_path / "runs" / folder / "metrics.json", dict(status=status, wall_time_s=seconds))
    # left: slow_1 at slow's 300 s, new_1 at the mean of every finished run (140 s), two workers sharing them
    assert train_runner.sweep_eta(tmp_path, runs, 2) == pytest.approx((300 + 140) / 2 / 60)


def test_a_bad_setting_inside_a_run_stops_the_sweep_instead_of_failing_each_run(tiny_sweep, monkeypatch):
    cfg, paths, raw = tiny_sweep
    cfg = dict(cfg, models_to_test="vanilla,linear")

    def refuses(run_cfg, *a, **k):
        raise train_runner.UserError("a setting this run cannot take")
    monkeypatch.setattr(train_runner, "run", refuses)
    with pytest.raises(train_runner.UserError, match="a setting this run cannot take"):
        train_runner.sweep(cfg, paths, dict(raw, models_to_test="vanilla,linear"))
    runs = train_runner.sweep_root(cfg) / "runs"
    assert not [p for p in runs.glob("*/metrics.json") if json.loads(p.read_text()).get("status") == "failed"]
