"""lab/bench.py: timing, rows keyed by what makes them, resuming, out of memory as a row, warming, profiles."""

import json
import time

import pytest
import torch
from conftest import TINY

import train_runner
from lab import UserError, bench, sweep
from lab import settings as configurator


def bench_settings(tmp_path, **kw):
    """Tiny benchmark settings on the CPU, written under tmp_path."""
    return train_runner.configure(overrides=dict(dict(
        models="vanilla", n_embd=32, n_head=4, n_layer=2, trials=1, decode_trials=1, device="cpu", stage="bench_memory",
        seq_lens="16,32", decode_lens="8", tokens_per_batch=64, out_dir=str(tmp_path), data_dir=TINY["data_dir"]), **kw))


def saved_rows(tmp_path, stage):
    return json.loads((tmp_path / "bench" / f"{stage}.json").read_text())["rows"]


def recording_builds(monkeypatch, fail=None):
    """bench.build_for, recording (model_type, length) of each build; fail(entry, T) may raise instead."""
    real, built = bench.build_for, []

    def build(entry, T, *a, **k):
        built.append((entry.model_type, T))
        if fail:
            fail(entry, T)
        return real(entry, T, *a, **k)
    monkeypatch.setattr(bench, "build_for", build)
    return built


def test_benchmarks_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "DECODE_TOKENS", 16)  # a second, not ten, for the decoding rows on 2 cores
    common = dict(models="vanilla,linear", trials=2, decode_trials=2, pos_emb="none")
    layer = bench.run(bench_settings(tmp_path, stage="bench_layer", seq_lens="32,128", tokens_per_batch=256, **common))
    assert [(r["model"], r["T"], r["batch"]) for r in layer] == [
        ("vanilla", 32, 8), ("linear", 32, 8), ("vanilla", 128, 2), ("linear", 128, 2)]
    assert all(0 < r["ms"] < 10_000 for r in layer) and layer[0]["kernel_path"] == ["sdpa"]
    decode = bench.run(bench_settings(tmp_path, stage="bench_decode", decode_lens="8,32", **common))
    assert all(0 < r["ms_per_token"] < 1_000 for r in decode)
    assert saved_rows(tmp_path, "bench_decode") == decode
    # a later benchmark of one family measures it again at a new length and keeps every other row
    again = bench.run(bench_settings(tmp_path, stage="bench_decode", decode_lens="8,16", **dict(common, models="linear")))
    kept = saved_rows(tmp_path, "bench_decode")
    assert sorted((r["model"], r["T"]) for r in kept) == [
        ("linear", 8), ("linear", 16), ("linear", 32), ("vanilla", 8), ("vanilla", 32)] and kept == again
    assert next(r for r in kept if r["model"] == "linear" and r["T"] == 8) in decode  # kept, not re-run
    # measured again with other settings (a stale key): the new row replaces the old, never sits beside it
    bench.run(bench_settings(tmp_path, stage="bench_decode", decode_lens="8", **dict(common, models="linear", decode_trials=1)))
    rows = saved_rows(tmp_path, "bench_decode")
    assert sorted((r["model"], r["T"]) for r in rows) == sorted((r["model"], r["T"]) for r in kept)
    table = (tmp_path / "bench" / "bench_decode.md").read_text()
    assert table.startswith("bench_decode (ms/token, batch 1) by length") and "| model | 8 | 16 | 32 |" in table


def test_bench_memory_records_out_of_memory_as_a_row(tmp_path, monkeypatch):
    def fail(entry, T):
        if T == 32:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB")
    recording_builds(monkeypatch, fail)
    rows = bench.run(bench_settings(tmp_path))
    oom = {k: v for k, v in rows[1].items() if k not in ("key", "commit", "wall_s")}
    assert rows[0]["T"] == 16 and rows[0]["ms"] > 0 and oom == {"model": "vanilla", "T": 32, "status": "OOM"}
    assert rows[0]["wall_s"] > rows[0]["ms"] / 1e3 * 1.5  # the row's whole cost: its build and warm-up too
    table = (tmp_path / "bench" / "bench_memory.md").read_text()
    assert "| model | 16 | 32 |" in table and table.rstrip().endswith("| OOM |")


def test_a_cuda_out_of_memory_is_a_row_and_the_next_length_still_runs(tmp_path, monkeypatch):
    def fail(entry, T):
        if T == 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
    built = recording_builds(monkeypatch, fail)
    rows = bench.run(bench_settings(tmp_path, seq_lens="16,32,64"))
    assert built == [("vanilla", 16), ("vanilla", 32), ("vanilla", 64)]
    assert [(r["T"], r.get("status"), r.get("ms", 0) > 0) for r in rows] == [(16, None, True), (32, "OOM", False),
                                                                              (64, None, True)]
    assert saved_rows(tmp_path, "bench_memory") == rows


def test_an_error_other_than_out_of_memory_is_not_hidden(tmp_path, monkeypatch):
    def fail(entry, T):
        raise RuntimeError("a kernel's own check failed")
    recording_builds(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="own check"):
        bench.run(bench_settings(tmp_path))


@pytest.mark.gpu
def test_on_a_gpu_rows_hold_peak_memory_and_a_real_out_of_memory_is_a_row(tmp_path):
    # naive attention's scores grow with T at a fixed token count: 8192 cannot fit (about 256 GiB), 64 can
    s = bench_settings(tmp_path, device="cuda", attn_impl="naive", seq_lens="8192,64", tokens_per_batch=2**22)
    rows = bench.run(s)
    assert [(r["T"], r.get("status")) for r in rows] == [(8192, "OOM"), (64, None)]
    assert rows[1]["ms"] > 0 and 0 < rows[1]["peak_mib"] < 40_000  # the OOM's memory was given back
    assert "peak MiB" in (tmp_path / "bench" / "bench_memory.md").read_text()
    decode = bench.run(s.replace(stage="bench_decode", models="vanilla,linear", decode_lens="64,512", decode_trials=2))
    assert [(r["model"], r["T"]) for r in decode] == [("vanilla", 64), ("linear", 64), ("vanilla", 512), ("linear", 512)]
    assert all(0 < r["ms_per_token"] < 100 and r["peak_mib"] > 0 for r in decode)


def test_benchmarked_families_keep_their_own_defaults():
    def specs_for(**raw):
        return bench.models_of(train_runner.configure(raw=dict(device="cpu", **raw)))
    specs = specs_for(models="linear,sparse,delta_product")
    assert (specs["linear"].family["based_window"], specs["sparse"].family["window"]) == (0, 64)  # their own defaults
    assert specs["delta_product"].family["variant"] == "gated_deltaproduct"  # the registry's preset
    given = specs_for(models="linear,sparse", window="8")
    assert given["linear"].family["based_window"] == 0 and given["sparse"].family["window"] == 8  # one name, one meaning


def test_a_row_key_changes_with_what_makes_the_number_and_nothing_else(tmp_path, monkeypatch):
    s = bench_settings(tmp_path)
    entry = configurator.for_model(s, "vanilla")
    key = bench.row_key(s, "vanilla", entry, 16)
    assert key.startswith("vanilla-") and key == bench.row_key(s, "vanilla", entry, 16)
    changed = [bench.row_key(s, "vanilla", entry, 32), bench.row_key(s.replace(trials=2), "vanilla", entry, 16),
               bench.row_key(s, "vanilla", entry.replace(n_head=2), 16), bench.row_key(s, "wide", entry, 16),
               bench.row_key(s.replace(stage="bench_layer"), "vanilla", entry, 16)]
    assert len({key, *changed}) == 1 + len(changed)
    # settings that shape training only leave the key as it is: the sweep's models reuse the rows of a bench stage
    assert bench.row_key(s, "vanilla", entry.replace(learning_rate=3e-3, max_iters=7, out_dir="elsewhere"), 16) == key
    module, _ = bench.families.load("vanilla")
    monkeypatch.setattr(module.GPT, "kernel_paths", lambda self, device_type: ["another-kernel"])
    assert bench.row_key(s, "vanilla", entry, 16) != key  # the same settings on other kernels


def test_a_changed_family_setting_measures_a_new_row_instead_of_reusing_the_old(tmp_path, monkeypatch):
    built = recording_builds(monkeypatch)
    (old,) = bench.run(bench_settings(tmp_path, models="linear", seq_lens="16"))
    (same,) = bench.run(bench_settings(tmp_path, models="linear", seq_lens="16", learning_rate=3e-3))
    assert same == old and built == [("linear", 16)]  # resumed: nothing that makes the number changed
    (new,) = bench.run(bench_settings(tmp_path, models="linear", seq_lens="16", based_window=8))
    assert built == [("linear", 16)] * 2 and new["key"] != old["key"] and new["key"].startswith("linear-")
    assert saved_rows(tmp_path, "bench_memory") == [new]  # the stale row is replaced, not kept beside it


def test_run_takes_the_sweeps_matched_entries_and_refuses_other_stages(tmp_path):
    s = bench_settings(tmp_path, seq_lens="16")
    (row,) = bench.run(s, {"wide": configurator.for_model(s, "vanilla", n_embd=64)})
    assert row["model"] == "wide" and row["key"] == bench.row_key(s, "wide", configurator.for_model(s, "vanilla", n_embd=64), 16)
    with pytest.raises(UserError, match="stage must be one of bench_layer, bench_decode, bench_memory"):
        bench.run(bench_settings(tmp_path / "other", stage="train"))
    assert not (tmp_path / "other").exists()


class Killed(BaseException):
    """The process being stopped from outside (a time limit, Ctrl-C), as the code under test sees it."""


def test_a_benchmark_keeps_the_rows_it_measured_and_resumes_after_a_kill(tmp_path, monkeypatch):
    s, kill = bench_settings(tmp_path, models="vanilla,linear"), [True]

    def fail(entry, T):
        if kill[0] and len(built) == 3:
            raise Killed  # during the third measurement
    built = recording_builds(monkeypatch, fail)
    with pytest.raises(Killed):
        bench.run(s)
    kept = saved_rows(tmp_path, "bench_memory")
    assert [(r["model"], r["T"]) for r in kept] == [("vanilla", 16), ("linear", 16)]  # written as they were measured
    built.clear()
    kill[0] = False
    rows = bench.run(s)  # the re-run measures only what is missing
    assert built == [("vanilla", 32), ("linear", 32)] and rows[:2] == kept and all(r["ms"] > 0 for r in rows)
    built.clear()
    bench.run(s.replace(trials=2))  # other settings: measured again
    assert len(built) == 4


def test_warming_a_benchmark_runs_each_unmeasured_row_once_and_writes_nothing(tmp_path, monkeypatch):
    s = bench_settings(tmp_path / "a", models="vanilla,linear", trials=3)
    bench.run(s.replace(seq_lens="16"))  # measured: kept, so not warmed again
    steps, real = [], bench.build_for

    def counting(entry, T, *a, **k):
        m = real(entry, T, *a, **k)
        forward = m.forward
        m.forward = lambda *args, **kw: steps.append((entry.model_type, T)) or forward(*args, **kw)
        return m
    monkeypatch.setattr(bench, "build_for", counting)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a" / "bench").iterdir()}
    assert bench.run(s.replace(tensorboard_dir=str(tmp_path / "tb")), warm=True) is None
    assert steps == [("vanilla", 32), ("linear", 32)]  # one step each: no repeats
    assert {p.name: p.read_bytes() for p in (tmp_path / "a" / "bench").iterdir()} == before
    assert not (tmp_path / "tb").exists()  # no tracker run either


def test_warm_compiles_the_bakeoffs_benchmarks_of_the_matched_models(shakespeare, tmp_path, monkeypatch, capsys):
    niced = []
    monkeypatch.setattr(bench.os, "nice", niced.append)
    s = bench_settings(tmp_path, models="vanilla,linear", stage="warm_benchmarks", seq_lens="16", block_size=32)
    assert bench.warm(s) is None and niced == [10]  # below the sweep's runs
    out = capsys.readouterr().out
    assert [line.split(" (")[0] for line in out.splitlines() if " compiled " in line] == [
        "[bench_decode] compiled vanilla at 8", "[bench_decode] compiled linear at 8",
        "[bench_memory] compiled vanilla at 16", "[bench_memory] compiled linear at 16"]
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow
def test_a_bakeoff_with_workers_compiles_its_benchmarks_beside_its_runs(shakespeare, tmp_path, capfd):
    cfg_file = tmp_path / "tiny_sweep.py"
    cfg_file.write_text(
        "n_layer, n_head, n_embd, block_size, batch_size = 2, 4, 32, 32, 8\ncompile = False\n"
        "max_iters = lr_decay_iters = 6\neval_interval, eval_iters, log_interval, warmup_iters = 3, 2, 3, 1\n"
        "learning_rates = '1e-3'\ndecode_lens, seq_lens, tokens_per_batch, trials, decode_trials = '8,16', '16,32', 64, 1, 1\n")
    s = train_runner.configure([str(cfg_file)], raw=dict(device="cpu", out_dir=str(tmp_path / "job"), stage="bakeoff",
                                                         models="vanilla,linear", sweep_workers="2", lr_bracket="1",
                                                         warm_benchmarks="True"))
    sweep.run(s, train_runner.train)
    out = capfd.readouterr().out
    assert out.count("the benchmarks compile beside the runs") == 1  # the first round only
    assert out.count("[bench_decode] compiled ") == 4 and out.count("[bench_memory] compiled ") == 4
    assert not (tmp_path / "job" / "bench").exists()  # nothing measured or written


def test_a_benchmark_can_profile_each_row(tmp_path):
    (linear,) = bench.run(bench_settings(tmp_path, stage="bench_layer", seq_lens="16", models="linear"))
    rows = bench.run(bench_settings(tmp_path, stage="bench_layer", seq_lens="16", torch_profile=True))
    table = (tmp_path / "bench" / "profile_vanilla_16.txt").read_text()
    assert "Self CPU" in table and "aten::" in table  # the operators of one forward + backward, by time
    assert [r["model"] for r in rows] == ["vanilla", "linear"] and rows[1] == linear  # the other model's row stays


def test_a_slow_row_stops_repeating_after_its_time_but_not_before_three_repeats():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)
    assert bench.timed_median(slow, "cpu", trials=10, seconds=0.01) >= 20 and len(calls) == 1 + 3
    calls.clear()
    bench.timed_median(slow, "cpu", trials=5)
    assert len(calls) == 1 + 5  # no limit: every repeat
    assert bench.median_of(lambda: calls.append(1) or 1.0, trials=0) is None  # the warm-up alone


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
    assert bench.decode_ms_per_token(m, torch.zeros(1, 4, dtype=torch.long), "cpu") < 50


def test_mlflow_holds_a_benchmarks_metrics_and_its_file(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    monkeypatch.chdir(tmp_path)  # the store's artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bench.run(bench_settings(tmp_path / "out", n_layer=1, stage="bench_decode", mlflow_uri=uri))
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("attention-lab").experiment_id])
    assert run.data.tags["stage"] == "bench_decode"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["bench_decode.json"]
    assert "vanilla/ms_per_token" in run.data.metrics
