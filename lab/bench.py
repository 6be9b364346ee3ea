"""
The benchmarks of the models of `models` (or a sweep's parameter-matched entries), one stage at a time:

    bench_layer   one attention layer's forward + backward, batch tokens_per_batch // T, at each of seq_lens
    bench_decode  ms per new token of greedy decoding after a prompt of each of decode_lens, batch 1, each family's cache
    bench_memory  one whole training step (forward, backward, AdamW) at each of seq_lens: its time and peak memory

    <out_dir>/bench/<stage>.json    {"stage", "rows", "environment", "config"}; a row: model, T, key, commit, batch
                                    (layer, memory), ms (layer, memory) or ms_per_token (decode), kernel_path,
                                    peak_mib (CUDA), status ("OOM" where it ran out of memory), wall_s
    <out_dir>/bench/<stage>.md      the rows as a table: a line per model, a column per length
    <out_dir>/bench/profile_<model>_<T>.txt   with torch_profile: one step's operators and kernels, by time

Each number is a median of repeats after a warm-up call (compilation, autotuning, allocation). A row's key is
its model's name and a hash of what makes its number (the model's settings, the length, the stage's repeats,
the kernels, the device, torch): a re-run keeps the rows of the same key, so a killed benchmark resumes, and
measures again a row whose settings or kernels changed. Out of memory is a row, and the next length runs.
"""

import json
import os
import time
from pathlib import Path

import torch

from lab import UserError, families, files, sweep, trackers
from lab import settings as configurator
from lab.settings import split

STAGES = ("bench_layer", "bench_decode", "bench_memory")
BAKEOFF = ("bench_decode", "bench_memory")  # the bake-off's benchmarks of its sweep's models
DECODE_TOKENS = 256  # bench_decode times this many steps, after
DECODE_WARMUP = 8  # these first new tokens: the prefill, eager warm-up steps and the CUDA-graph capture
VOCAB = 65  # the benchmarks' vocabulary: shakespeare_char's
# settings that shape training only, not the model or the step benchmarked (which sets its own length, no
# dropout, bf16 autocast on CUDA and fixed AdamW settings): left out of a row's key
NOT_BENCHED = ("learning_rate", "min_lr", "seed", "max_iters", "lr_decay_iters", "warmup_iters", "decay_lr", "weight_decay",
               "beta1", "beta2", "grad_clip", "eval_interval", "eval_iters", "eval_windows", "batch_size",
               "gradient_accumulation_steps", "compile", "compile_mode", "dataset", "dtype", "block_size", "dropout")


def models_of(s):
    """{name: its settings} for each model of s.models: its family's own defaults, presets and recipe, and the
    values the job gives for its fields."""
    entries = {name: configurator.for_model(s, name) for name in split(s.models)}
    if not entries:
        raise UserError("models names no model: give --models=vanilla,linear,...")
    if s.stage == "bench_layer":  # one layer alone: a hybrid's layers are its families', benchmarked under their names
        hybrids = [name for name in entries if families.is_hybrid(name)]
        if hybrids:
            print(f"[bench_layer] {', '.join(hybrids)}: hybrids have no one layer of their own; skipped")
        entries = {name: e for name, e in entries.items() if name not in hybrids}
    return entries


def model_args(entry, T, n_layer=None):
    return dict(entry.model_args(), block_size=T, dropout=0.0, **({"n_layer": n_layer} if n_layer else {}))


def build_for(entry, T, n_layer=None):
    """The entry's model at context T (and n_layer layers, where given), without dropout."""
    return families.build(entry.model_type, model_args(entry, T, n_layer), VOCAB)


def shape(stage, T):
    """(context, layers) of the model a stage builds at length T: decoding's holds the prompt and the new tokens."""
    return {"bench_layer": (T, 1), "bench_decode": (T + DECODE_WARMUP + DECODE_TOKENS, None)}.get(stage, (T, None))


def lens(s):
    return split(s.decode_lens if s.stage == "bench_decode" else s.seq_lens, int)


def row_key(s, name, entry, T):
    """<name>-<hash of what makes the row's number>; building the model on the meta device (shapes only)
    also checks it can be built at T, before anything is measured or written."""
    with torch.device("meta"):
        model = families.build(entry.model_type, model_args(entry, *shape(s.stage, T)), VOCAB)
    stage = ({"decode_trials": s.decode_trials, "decode_tokens": DECODE_TOKENS, "decode_warmup": DECODE_WARMUP}
             if s.stage == "bench_decode" else {"trials": s.trials, "tokens_per_batch": s.tokens_per_batch})
    gpu = torch.cuda.get_device_name() if s.device_type == "cuda" else None
    what = configurator.identity(entry, leave_out=NOT_BENCHED, stage=s.stage, T=T, kernels=model.kernel_paths(s.device_type),
                                 trial_seconds=s.trial_seconds, torch=torch.__version__, gpu=gpu, **stage)
    return f"{name}-{what}"


def timed_median(fn, device_type, trials, seconds=float("inf")):
    """Median ms of fn over `trials` calls after a warm-up call (compilation, autotuning, allocation); a
    slow fn stops repeating once `seconds` have passed, after 3 calls at least."""
    return median_of(lambda: time_ms(fn, device_type), trials, seconds)


def median_of(measure, trials, seconds=float("inf")):
    """Median of what measure() returns (ms), over `trials` calls after a discarded warm-up call (None for
    trials = 0: the warm-up alone)."""
    measure()
    times, start = [], time.perf_counter()
    while len(times) < trials and (len(times) < 3 or time.perf_counter() - start < seconds):
        times.append(measure())
    return sorted(times)[len(times) // 2] if times else None


class Stopwatch:
    """mark() now, and ms() between the first and the last mark: CUDA events on GPU (the device's time,
    not the host's queueing), the host clock on CPU."""

    def __init__(self, device_type):
        self.cuda, self.marks = device_type == "cuda", []

    def mark(self):
        if self.cuda:
            self.marks.append(torch.cuda.Event(enable_timing=True))
            self.marks[-1].record()
        else:
            self.marks.append(time.perf_counter())

    def ms(self):
        if self.cuda:
            torch.cuda.synchronize()
            return self.marks[0].elapsed_time(self.marks[-1])
        return 1e3 * (self.marks[-1] - self.marks[0])


def time_ms(fn, device_type):
    watch = Stopwatch(device_type)
    watch.mark()
    fn()
    watch.mark()
    return watch.ms()


def decode_ms_per_token(m, prompt, device_type):
    """ms per new token of greedy decoding after a prompt, over DECODE_TOKENS steps that follow the
    prefill and DECODE_WARMUP - 1 warm-up steps (the CUDA-graph capture among them): only steady-state
    steps are timed, so neither the prefill nor its variance at long contexts leaks into the figure."""
    watch = Stopwatch(device_type)
    m.generate(prompt, DECODE_WARMUP + DECODE_TOKENS, temperature=0,
               on_token=lambda i: watch.mark() if i in (DECODE_WARMUP, DECODE_WARMUP + DECODE_TOKENS) else None)
    return watch.ms() / DECODE_TOKENS


def write_profile(fn, out, device_type):
    """One call of fn under torch.profiler: the operators and kernels that took the most time, as a table."""
    from torch.profiler import ProfilerActivity
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if device_type == "cuda":
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by=f"self_{'device' if device_type == 'cuda' else 'cpu'}_time_total",
                                      row_limit=30)
    files.write_text(out, table)


def layer_step(s, entry, T):
    """(model, one attention layer's forward + backward, batch) at length T."""
    m = build_for(entry, *shape(s.stage, T)).to(s.device)
    B = max(1, s.tokens_per_batch // T)
    attn, autocast = m.transformer.h[0].attn, bf16(s)
    x = torch.randn(B, T, entry.n_embd, device=s.device, requires_grad=True)
    pos = torch.arange(T, device=s.device)

    def step():
        with autocast:
            y, _ = attn(x, pos)
        y.float().sum().backward()
    return m, step, B


def memory_step(s, entry, T):
    """(model, one whole training step: forward, backward, AdamW, batch) at length T."""
    m = build_for(entry, *shape(s.stage, T)).to(s.device)
    B = max(1, s.tokens_per_batch // T)
    opt, autocast = m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), s.device_type), bf16(s)
    idx = torch.randint(0, VOCAB, (B, T), device=s.device)

    def step():
        with autocast:
            _, loss = m(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return m, step, B


def bf16(s):
    return torch.autocast(s.device_type, dtype=torch.bfloat16, enabled=s.device_type == "cuda")


def measure(s, name, entry, T, row, folder, warm):
    """Fill row with the stage's numbers for one model at length T (trials = 0 when warm: the warm-up call only)."""
    if s.stage == "bench_decode":
        m = build_for(entry, *shape(s.stage, T)).to(s.device).eval()
        prompt = torch.randint(0, VOCAB, (1, T), device=s.device)
        with bf16(s):
            row["ms_per_token"] = median_of(lambda: decode_ms_per_token(m, prompt, s.device_type),
                                            0 if warm else s.decode_trials, s.trial_seconds)
    else:
        m, step, row["batch"] = (layer_step if s.stage == "bench_layer" else memory_step)(s, entry, T)
        row["ms"] = timed_median(step, s.device_type, 0 if warm else s.trials, s.trial_seconds)
        if s.torch_profile and not warm:
            write_profile(step, folder / f"profile_{name}_{T}.txt", s.device_type)
    row["kernel_path"] = m.kernel_paths(s.device_type)
    if s.device_type == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20


def measured(s, name, entry, T, key, commit, folder, warm):
    """One row: its numbers, or status OOM where the model or its step did not fit; wall_s is the row's whole
    cost (build, warm-up, repeats)."""
    row, started = {"model": name, "T": T, "key": key, "commit": commit}, time.perf_counter()
    if s.device_type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        measure(s, name, entry, T, row, folder, warm)
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not sweep.is_oom(e):
            raise
        row["status"] = "OOM"
    if s.device_type == "cuda":
        torch.cuda.empty_cache()  # the next row starts from nothing, this one's model freed
    row["wall_s"] = round(time.perf_counter() - started, 3)
    return row


def run(s, specs=None, warm=False):
    """Run s.stage (bench_layer, bench_decode or bench_memory) for each model of specs ({name: settings}; None:
    each of s.models) at each length; prints a row per measurement, writes <out_dir>/bench/<stage>.json and .md
    and returns the rows. warm: only each unmeasured row's warm-up call (its compilation), nothing written."""
    if s.stage not in STAGES:
        raise UserError(f"stage must be one of {', '.join(STAGES)} to benchmark, got '{s.stage}'")
    entries = specs or models_of(s)
    if not warm:  # warming writes nothing and tracks nothing
        trackers.check(s)
    folder = Path(s.out_dir) / "bench"
    path = folder / f"{s.stage}.json"
    plan = [(name, entry, T, row_key(s, name, entry, T)) for T in lens(s) for name, entry in entries.items()]
    kept = files.read_json(path, {}).get("rows", [])
    # a row of the same key is kept: a killed benchmark resumes (profiling measures it again: the profile is asked for)
    done = {r["key"]: r for r in kept if "key" in r and not s.torch_profile}
    tracker = trackers.Tracker(s, s.stage, {"task": "lm", "stage": s.stage}, enabled=not warm)
    rows, env = [], files.environment()
    for name, entry, T, key in plan:
        if key in done:
            rows.append(done[key])
            print(json.dumps(done[key]) + f"  (kept from {path})")
            continue
        row = measured(s, name, entry, T, key, env["git_commit"], folder, warm)
        if warm:
            print(f"[{s.stage}] compiled {name} at {T} ({row['wall_s']} s{', ' + row['status'] if 'status' in row else ''})")
            continue
        rows.append(row)
        print(json.dumps(row))
        tracker.log({f"{name}/{k}": v for k, v in row.items() if k in ("ms", "ms_per_token", "peak_mib")}, T)
        files.write_json(path, record(s, with_others(rows, kept), env))
    if warm:
        return None
    result = record(s, with_others(rows, kept), env)
    files.write_json(path, result)
    text = table(s.stage, result["rows"], s.device_type)
    files.write_text(folder / f"{s.stage}.md", text)
    print(text)
    tracker.artifacts([path])
    tracker.finish()
    return result["rows"]


def record(s, rows, env):
    return {"stage": s.stage, "rows": rows, "environment": env, "config": configurator.flat(s)}


def with_others(rows, kept):
    """rows, then the kept rows of the (model, length) pairs they do not measure: a benchmark of one family
    adds to the bake-off's file, never empties it of the others, and a row measured again replaces its
    older self (a stale key's too)."""
    pairs = {(r["model"], r["T"]) for r in rows}
    return [*rows, *(r for r in kept if (r["model"], r["T"]) not in pairs)]


def table(stage, rows, device_type):
    """A benchmark's rows as markdown: one line per model, one column per length (and peak MiB on CUDA)."""
    key, unit = ("ms_per_token", "ms/token, batch 1") if stage == "bench_decode" else ("ms", "ms, forward+backward" + (
        " + AdamW" if stage == "bench_memory" else ""))
    lengths = sorted({r["T"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["T"]): r for r in rows}

    def show(r, k, spec):
        return "–" if r is None else r.get("status") or (format(r[k], spec) if r.get(k) is not None else "–")
    header = ["model", *(f"{t:,}" for t in lengths)]
    lines = [f"{stage} ({unit}) by length", "",
             *files.markdown_table(header, ([m, *(show(cell.get((m, t)), key, ".3f") for t in lengths)] for m in models))]
    if device_type == "cuda":
        lines += ["", "peak MiB", "", *files.markdown_table(
            header, ([m, *(show(cell.get((m, t)), "peak_mib", ".0f") for t in lengths)] for m in models))]
    return "\n".join(lines) + "\n"


def warm(s):
    """The bake-off's benchmarks, each unmeasured row's first call only: their kernels compiled into torch's
    caches (on disk, shared by the processes of one machine) while the sweep's runs train. At a lower CPU
    priority than theirs: this only saves the benchmarks time later, the runs are the job's critical path."""
    if hasattr(os, "nice"):
        os.nice(10)
    entries, _, _ = sweep.matched(s)
    for stage in BAKEOFF:
        run(s.replace(stage=stage), entries, warm=True)
