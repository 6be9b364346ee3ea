"""
The sweep: every model of `models`, parameter-matched, trained at each learning rate and seed.

    <out_dir>/param_matching.{json,md}
    <out_dir>/runs/<model>-<identity>/lr<rate>_s<seed>/   metrics.json, losses.csv, eval.csv, ckpt.pt

A model's folder is named by a hash of what makes its runs' results (settings.identity: every setting but
the bookkeeping ones, and the kernels its layers run): a changed setting trains anew beside the old runs,
and nothing is moved aside. Finished runs (done, diverged, out of memory, failed) are skipped and an
interrupted one resumes from its checkpoint, or starts over where only its metrics came back. With
lr_bracket, a model whose best rate is at an end of those tried gets one grid step more past it;
seeds_at_best then trains more seeds at each model's `finalists` best rates, so that its rate is chosen on
the mean over every seed (lab/report.py). Workers (lab/workers.py) share the runs.
"""

import math
import os
import re
import time
import traceback
from pathlib import Path

import torch

from lab import TrainingDiverged, UserError, data, families, files, trackers, workers
from lab import settings as configurator
from lab.settings import split

FINISHED = ("done", "diverged", "oom", "failed")  # a run's status once it will not train any more
PER_RUN = ("learning_rate", "min_lr", "seed")  # what tells a model's runs apart inside its folder


def count_params(entry, vocab_size):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return families.build(entry.model_type, entry.model_args(), vocab_size).get_num_params()


def match_params(entry, target, vocab_size):
    """(changes, count): none where the model is within 3% of target; else the closest of a small grid, the
    family's value head size or head size at its own width where it has one, then heads x width around it.
    Ties go to the smallest change."""
    own = count_params(entry, vocab_size)
    if abs(own / target - 1) <= 0.03:
        return {}, own
    w, h, fields = entry.n_embd, entry.n_head, entry.model_args()
    candidates = [{"head_v_dim": d} for d in range(8, 2 * w // h + 1, 8) if "head_v_dim" in fields]
    candidates += [{"head_size": d} for d in range(2, 4 * w // h + 1, 2) if "head_size" in fields]
    lo = max(32, w // 2)
    candidates += [{"n_head": heads, "n_embd": width} for heads in sorted({h, 4, 6, 8})  # even head dims
                   for width in range(-(-lo // (2 * heads)) * 2 * heads, 2 * w + 1, 2 * heads)]
    best = None
    for change in candidates:
        try:
            n = count_params(entry.replace(**change), vocab_size)
        except UserError:
            continue
        key = (abs(n - target) > 0.03 * target, "n_embd" in change, abs(n - target))  # in range, narrowest, closest
        if best is None or key < best[0]:
            best = (key, change, n)
    if best is None or abs(best[2] / target - 1) > 0.03:
        raise UserError(f"no width within 3% of {target:,} parameters for {entry.model_type} "
                        f"(closest {best[2] if best else own:,}): set target_params or the model's head sizes")
    return best[1], best[2]


def matched(s):
    """Each model of s.models with its own settings, parameter-matched to vanilla's count (or target_params):
    ({name: settings}, the target, the matching table's rows). Every model is configured and built here,
    before anything is written."""
    entries = {name: configurator.for_model(s, name) for name in split(s.models)}
    if not entries:
        raise UserError("models names no model: give --models=vanilla,linear,...")
    vocab = {e.dataset: data.vocab_size(e) for e in entries.values()}  # prepared now if it is not yet
    base = entries.get("vanilla") or configurator.for_model(s, "vanilla")
    target = s.target_params or count_params(base, vocab[base.dataset])
    table = []
    for name, entry in entries.items():
        change, n = match_params(entry, target, vocab[entry.dataset])
        entries[name] = entry.replace(**change)
        table.append({"model": name, "model_type": entry.model_type, "n_layer": entry.n_layer, "n_head": entries[name].n_head,
                      "n_embd": entries[name].n_embd, "params": n, "off_target_pct": 100 * (n / target - 1),
                      "changed": change})
    return entries, target, table


def group_folder(entry, label, device_type=None, root=None):
    """<label>-<identity>: the folder of a model's runs, named by what makes their results (on device_type:
    the job's, where its folder came back from another machine). Reading a job's folder (root), where no
    folder has what this machine resolves, the dtype and kernels a run there recorded, if they give its
    folder's name: 'auto' resolves by machine, and FLA's probe needs the GPU it ran on."""
    device_type, label = device_type or entry.device_type, re.sub(r"[^A-Za-z0-9_.-]+", "_", label)

    def name(kernels, dtype=entry.dtype):
        what = configurator.identity(entry, leave_out=PER_RUN, device_type=device_type, kernels=kernels, dtype=dtype)
        return f"{label}-{what}"

    with torch.device("meta"):
        here = name(families.build(entry.model_type, entry.model_args(), 1).kernel_paths(device_type))
    if root is not None and not (Path(root) / "runs" / here).exists():
        for metrics in sorted((Path(root) / "runs").glob(f"{label}-*/*/metrics.json")):
            m = files.read_json(metrics, {})
            dtype = m.get("config", {}).get("dtype", entry.dtype)
            if m.get("kernel_path") and name(m["kernel_path"], dtype) == metrics.parent.parent.name:
                return metrics.parent.parent.name
    return here


def job_device(root):
    """The device type a job folder's runs trained on (its job.json), or None for a new folder."""
    return files.read_json(Path(root) / "job.json", {}).get("device_type")


def make_run(root, entry, group, row, lr, seed, what):
    """(folder under runs/, the row it belongs to, a description, the run's settings)."""
    folder = f"{group}/lr{lr:g}_s{seed}"
    out = root / "runs" / folder
    return (folder, row, what, entry.replace(
        learning_rate=lr, min_lr=lr / 10, seed=seed, out_dir=str(out), stage="train", always_save_checkpoint=True,
        init_from="resume" if (out / "ckpt.pt").exists() else "scratch", wandb_run_name=folder.replace("/", "_")))


def read_metrics(run_dir):
    """A run folder's metrics.json, or {} before its first evaluation."""
    return files.read_json(Path(run_dir) / "metrics.json", {})


def write_matching(root, target, table):
    lines = files.markdown_table(["model", "layers", "heads", "width", "params", "off target"],
                                 ([r["model"], r["n_layer"], r["n_head"], r["n_embd"], f"{r['params']:,}",
                                   f"{r['off_target_pct']:+.1f}%{' (matched)' if r['changed'] else ''}"] for r in table))
    files.write_json(root / "param_matching.json", {"target": target, "rows": table})
    files.write_text(root / "param_matching.md", "\n".join(lines) + "\n")
    return lines


def write_job(s, root, default_job=("config/train_shakespeare_char.py", "config/bakeoff.py")):
    """job.json: the command and environment that made this folder (what publishing puts in its README)."""
    top = Path(__file__).resolve().parent.parent
    argv = [str(Path(a).relative_to(top)) if Path(a).is_absolute() and top in Path(a).parents else a
            for a in configurator.as_argv(s)]
    if argv[:len(default_job)] == list(default_job) and all(a.startswith("--") for a in argv[len(default_job):]):
        argv = argv[len(default_job):]  # `python train_runner.py` gives these files itself
    files.write_json(root / "job.json", {"stage": s.stage, "command": " ".join(["python train_runner.py", *argv]),
                                         "device_type": s.device_type,
                                         "environment": files.environment(), "started": time.strftime("%Y-%m-%d %H:%M")})


def run(s, train):
    """Train every (model, learning rate, seed) with train(settings, prefix=, group=). Returns {name: matched
    settings} for the benchmarks."""
    root = Path(s.out_dir)
    trackers.check(s)
    entries, target, table = matched(s)
    groups = {name: group_folder(entry, name) for name, entry in entries.items()}
    # the data fits every model's context (each dataset and length loaded once), before anything is written
    for entry in {(data.folder(e), e.block_size): e for e in entries.values()}.values():
        data.load(entry, "cpu")
    if s.sweep_worker < 0:
        write_job(s, root)
        lines = write_matching(root, target, table)
        print(f"[sweep] parameter matching, target {target:,}:\n" + "\n".join(lines))
    seeds = split(s.seeds, int)

    def runs_at(name, lr):
        return [make_run(root, entries[name], groups[name], name, lr, seed, f"{name} lr={lr:g} seed={seed}") for seed in seeds]

    def ranked(name, rates):
        return ranked_rates({lr: [read_metrics(root / "runs" / groups[name] / f"lr{lr:g}_s{seed}") for seed in seeds]
                             for lr in rates}, lambda m: -m["best_val_loss"])

    tried = rounds(s, root, list(entries), runs_at, lambda name, rates: ranked(name, rates)[0], "sweep", train)
    extra = [seed for seed in split(s.seeds_at_best, int) if seed not in seeds]
    if tried is not None and extra:  # every round is done here (a worker returns while its round has runs left)
        top = {name: ranked(name, tried[name])[:s.finalists] for name in entries}
        print("[sweep] seeds " + ",".join(map(str, extra)) + " at each model's best learning rates: "
              + ", ".join(f"{name} {','.join(f'{lr:g}' for lr in lrs)}" for name, lrs in top.items()))
        runs = [make_run(root, entries[name], groups[name], name, lr, seed, f"{name} lr={lr:g} seed={seed}")
                for name, lrs in top.items() for lr in lrs for seed in extra]
        train_runs(s, root, runs, "sweep", train)
    return entries


def ranked_rates(by_rate, score):
    """The rates, best first by their runs' mean score (a run that did not finish counts as worst); ties go
    to the smaller rate."""
    def mean(lr):
        ms = by_rate[lr]
        return sum(score(m) if m.get("status") == "done" else -math.inf for m in ms) / max(1, len(ms))
    return sorted(sorted(by_rate), key=mean, reverse=True)  # a stable sort: equal means keep the smaller rate first


def best_rate(by_rate, score):
    return ranked_rates(by_rate, score)[0]


def chosen_rate(by_lr):
    """A model's rate from its runs ({rate: [metrics]}): the best by mean val loss over every seed among the
    rates that have them all (the finalists seeds_at_best trained), or, while one rate alone has them, on
    the seeds every rate has."""
    seeds = {lr: {m["config"]["seed"] for m in ms} for lr, ms in by_lr.items()}
    every_seed = set.union(*seeds.values())
    finalists = {lr: ms for lr, ms in by_lr.items() if seeds[lr] == every_seed}
    return best_rate(finalists if len(finalists) > 1 else on_common_seeds(by_lr),
                     lambda m: -m["best_val_loss"] if m.get("best_val_loss") is not None else -math.inf)


def on_common_seeds(by_lr):
    """{rate: its runs of the seeds every rate has} (all its runs where they share none)."""
    common = set.intersection(*({m["config"]["seed"] for m in ms} for ms in by_lr.values()))
    return {lr: [m for m in ms if m["config"]["seed"] in common] or ms for lr, ms in by_lr.items()}


def lr_beyond(best, tried, grid):
    """One grid step past the end of `tried` where `best` is, or None when it is inside (or the grid is one rate)."""
    if len(grid) < 2:
        return None
    step = (max(grid) / min(grid)) ** (1 / (len(grid) - 1))
    return best / step if best == min(tried) else best * step if best == max(tried) else None


def rounds(s, root, rows, runs_at, best_of, stage, train):
    """Train runs_at(row, lr) for every row at each of learning_rates, then up to lr_bracket rounds, each one grid
    step past the rate best_of(row, rates tried) where it is an end. Returns {row: the rates tried}, or None for a
    worker whose round others are still training (the next round is decided once all of it is done)."""
    grid = split(s.learning_rates, float)
    tried, new = {row: list(grid) for row in rows}, {row: grid for row in rows}
    for round_ in range(s.lr_bracket + 1):
        runs = [run for row, lrs in new.items() for lr in lrs for run in runs_at(row, lr)]
        pending = unfinished(root, runs)
        train_runs(s, root, runs, stage, train)
        if pending and s.sweep_worker >= 0:
            return None
        if round_ == s.lr_bracket:
            break
        new = {row: [lr] for row in rows if (lr := lr_beyond(best_of(row, tried[row]), tried[row], grid))}
        for row, (lr,) in new.items():
            tried[row].append(lr)
            print(f"[{stage}] {row}'s best learning rate is at an end of those tried: also {lr:g}")
        if not new:
            break
    return tried


def unfinished(root, runs):
    return [folder for folder, *_ in runs if read_metrics(root / "runs" / folder).get("status") not in FINISHED]


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def train_runs(s, root, runs, stage, train):
    """Train each run (folder, row, description, settings) into <root>/runs/<folder>/. With several workers this
    process starts them and waits; a worker (sweep_worker >= 0) claims each run before it trains it. A run that
    diverges, runs out of memory or crashes is recorded (its traceback in error.log) and the others go on; bad
    input stops the whole job with its one line."""
    n_workers = s.sweep_workers or (len(workers.visible_gpus()) * s.runs_per_gpu if s.device_type == "cuda" else 1)
    if n_workers > 1 and s.sweep_worker < 0 and unfinished(root, runs):
        workers.spread(s, root, n_workers, stage)
        return
    failures = []
    todo = workers.claims(root, runs, FINISHED, read_metrics) if s.sweep_worker >= 0 else enumerate(runs, 1)
    for k, (folder, row, what, settings) in todo:
        out = root / "runs" / folder
        prior = read_metrics(out)
        if prior.get("status") in FINISHED:
            print(f"[{stage}] run {k}/{len(runs)}: {folder} already {prior['status']}, skipped")
            (out / ".claimed").unlink(missing_ok=True)
            continue
        eta = workers.eta(root, runs, n_workers if s.sweep_worker >= 0 else 1, FINISHED, read_metrics)
        resume = (out / "ckpt.pt").exists()
        print(f"[{stage}] run {k}/{len(runs)}: {what}{' (resuming)' if resume else ''}"
              + (f", {stage} ETA {eta:.1f} min" if eta is not None else ""))
        settings = settings.replace(init_from="resume" if resume else "scratch")
        try:
            train(settings, prefix=f"[{k}/{len(runs)} {row}] ", group=root.name)
        except TrainingDiverged as e:  # metrics.json already says 'diverged'
            print(f"[{stage}] {folder} diverged: {e}")
        except UserError:
            raise
        except Exception as e:  # out of memory, or a crash (a kernel's error, a bug): recorded, the sweep goes on
            status, line = "oom" if is_oom(e) else "failed", f"{type(e).__name__}: {e}".strip().splitlines()[0]
            files.write_json(out / "metrics.json", dict(prior, status=status, error=line, model_type=settings.model_type,
                                                        config=configurator.flat(settings)))
            files.write_text(out / "error.log", traceback.format_exc())
            failures.append(folder)
            print(f"[{stage}] {folder}: {status}: {line} (traceback in {out / 'error.log'})")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        (out / ".claimed").unlink(missing_ok=True)
    if failures:
        print(f"[{stage}] {len(failures)} run(s) did not finish: {', '.join(failures)}; each folder's metrics.json and "
              "error.log say why, and a re-run skips them until their folder is deleted")


def model_runs(root, group):
    """Every run's metrics in a model's folder, by learning rate: {lr: [metrics, ...]}."""
    by_lr = {}
    for path in sorted((root / "runs" / group).glob("lr*_s*/metrics.json")):
        m = files.read_json(path)
        by_lr.setdefault(m["config"]["learning_rate"], []).append(m)
    return by_lr


def report_groups(s):
    """{name: its runs' folder} for the report, from the settings alone (no data needed): each model's
    identity as the sweep computed it, parameter matching included (read from param_matching.json)."""
    root = Path(s.out_dir)
    table = files.read_json(root / "param_matching.json", {"rows": []})
    changes = {r["model"]: r["changed"] for r in table["rows"]}
    device = job_device(root)
    return {name: group_folder(configurator.for_model(s, name, **changes.get(name, {})), name, device, root)
            for name in split(s.models)}


os.environ.setdefault("PYTHONUNBUFFERED", "1")  # workers' lines interleave readably
