"""
A sweep's worker processes: train_runner.py started again once per worker, each taking the next run that
no other has claimed (a `.claimed` file only one process can create), dealt round-robin over the visible
GPUs. Workers that share a GPU run under a private NVIDIA MPS daemon where one is installed: the small
models are launch-bound, and MPS lets their kernels overlap instead of time-slicing (results/h100-sharing).
"""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lab import UserError
from lab import settings as configurator
from lab.settings import split

RUNNER = Path(__file__).resolve().parent.parent / "train_runner.py"
MPS_CONTROL = "nvidia-cuda-mps-control"
JOB_ONLY = ("stage", "sweep_worker", "sweep_workers", "gpu_share")  # set per worker below
_warmed = set()  # job folders whose benchmarks a warm-up process has compiled: once a job


def visible_gpus():
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (all of them when it is unset)."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    return split(named) if named is not None else [str(i) for i in range(torch.cuda.device_count())]


def deal(workers, gpus):
    """Each worker's GPU: round-robin, so that the GPUs carry as even a share as the count allows."""
    if not gpus:
        raise UserError("device is cuda but CUDA_VISIBLE_DEVICES leaves no GPU for the sweep's workers")
    return [gpus[i % len(gpus)] for i in range(workers)]


def spread(s, root, workers, stage):
    """Run a stage's runs as `workers` processes over the visible GPUs and wait for all of them. Claims left
    by a killed sweep are cleared first."""
    for claim in root.glob("runs/*/*/.claimed"):
        claim.unlink()
    args = [a for a in configurator.as_argv(s) if not a.startswith(tuple(f"--{k}=" for k in JOB_ONLY))]
    gpus = deal(workers, visible_gpus()) if s.device_type == "cuda" else [None] * workers
    shared_gpu = gpus[0] is not None and max(map(gpus.count, gpus)) > 1
    with mps_daemon(s.mps and shared_gpu, stage) as mps_env:

        def start(gpu, *more):  # the runner with the job's arguments and `more`, on that GPU
            env = dict(os.environ, **mps_env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
            return subprocess.Popen([sys.executable, str(RUNNER), *args, *more], env=env)

        procs = [start(gpu, f"--stage={stage}", f"--sweep_worker={i}", f"--sweep_workers={workers}",
                       f"--gpu_share={gpus.count(gpu) if gpu is not None else 1}") for i, gpu in enumerate(gpus)]
        print(f"[{stage}] {workers} workers started" + (f" on GPU(s) {', '.join(sorted(set(gpus)))}" if gpus[0] else ""))
        warm = None
        if s.stage == "bakeoff" and s.warm_benchmarks and root not in _warmed:
            warm = start(gpus[0], "--stage=warm_benchmarks")
            _warmed.add(root)  # a later round (a bracket, more seeds) finds them compiled
            print(f"[{stage}] the benchmarks compile beside the runs, at a lower CPU priority")
        for p in procs:
            p.wait()
        if warm is not None and warm.wait() != 0:  # only a cache was lost: the benchmarks compile for themselves
            print(f"[{stage}] compiling the benchmarks ahead failed (its output is above); they will compile as they run")
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise UserError(f"{stage} worker(s) {failed} failed (their output is above); re-run to resume")


@contextlib.contextmanager
def mps_daemon(wanted, stage):
    """Yields the environment that makes a process a client of an MPS daemon of this user's, started in a
    pipe directory of its own and quit on leaving; one already running there (a killed sweep's) is joined
    and left running. Yields {} where MPS is not wanted, not installed or does not start: the workers then
    time-slice the GPU."""
    control = shutil.which(MPS_CONTROL) if wanted else None
    if not control:
        yield {}
        return
    pipes = Path(tempfile.gettempdir()) / f"attention-lab-mps-{os.getuid()}"
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipes), "CUDA_MPS_LOG_DIRECTORY": str(pipes / "log")}
    (pipes / "log").mkdir(parents=True, exist_ok=True)
    started = subprocess.run([control, "-d"], env=dict(os.environ, **env), capture_output=True, text=True)
    said = (started.stdout + started.stderr).strip()
    if started.returncode != 0 and "already running" not in said:
        print(f"[{stage}] MPS did not start ({said or f'exit status {started.returncode}'}): the workers time-slice the GPU")
        yield {}
        return
    print(f"[{stage}] the workers share each GPU under MPS ({pipes}" + (", running already)" if started.returncode else ")"))
    try:
        yield env
    finally:
        if started.returncode == 0:
            subprocess.run([control], input="quit\n", env=dict(os.environ, **env), capture_output=True, text=True,
                           timeout=60)


def open_runs(root, runs, finished, read_metrics):
    """(the models with a run begun or finished, [(k, run)] that no worker has claimed or finished, and
    each model's ms/iter as one of its runs reported it)."""
    begun, todo, speed = set(), [], {}
    for k, run in enumerate(runs, 1):
        out = root / "runs" / run[0]
        m, taken = read_metrics(out), (out / ".claimed").exists()
        if m or taken:
            begun.add(run[1])
        if m.get("ms_per_iter"):
            speed[run[1]] = m["ms_per_iter"]
        if not taken and m.get("status") not in finished:
            todo.append((k, run))
    return begun, todo, speed


def claims(root, runs, finished, read_metrics):
    """Yield (k, run) for a worker, each claimed first. First one run of each model no worker has begun, in
    the order of `models`: every model compiles early, while others train, and its later runs find it in
    the compile cache. Then the longest runs first (iterations times the model's ms/iter so far), so that
    the sweep ends on short runs that finish together; a model with no speed yet is still compiling, and
    its other runs come last (results/h100-bakeoff/timings.md measured these orders)."""
    while True:
        begun, todo, speed = open_runs(root, runs, finished, read_metrics)
        firsts = {}
        for k, run in todo:
            if run[1] not in begun:
                firsts.setdefault(run[1], (k, run))
        longest_first = sorted(todo, key=lambda kr: -speed.get(kr[1][1], 0) * kr[1][3].max_iters)
        for k, run in [*firsts.values(), *longest_first]:
            out = root / "runs" / run[0]
            out.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(out / ".claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue  # another worker took it first
            yield k, run
            break
        else:
            return


def eta(root, runs, workers, finished, read_metrics):
    """Minutes until the runs are finished, or None before any has: each unfinished run priced at the mean
    wall time of its model's finished runs (of all finished runs where its model has none), shared by the
    workers. Models differ by 5x in speed here, so one price for every run misleads."""
    done, todo = {}, []
    for folder, model, *_ in runs:
        m = read_metrics(root / "runs" / folder)
        if m.get("status") == "done" and m.get("wall_time_s"):
            done.setdefault(model, []).append(m["wall_time_s"])
        elif m.get("status") not in finished:
            todo.append(model)
    if not done:
        return None
    every = [t for times in done.values() for t in times]
    price = {model: sum(times) / len(times) for model, times in done.items()}
    return sum(price.get(model, sum(every) / len(every)) for model in todo) / workers / 60
