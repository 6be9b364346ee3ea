"""
The lab's main program, in the style of nanoGPT's train.py.

    python train_runner.py                                        # the main job: config/bakeoff.py
    python train_runner.py config/train_shakespeare_char.py       # one model (the baby GPT)
    python train_runner.py config/train_shakespeare_char.py --model_type=delta --max_iters=500

    >>> from train_runner import train
    >>> metrics = train("config/train_shakespeare_char.py", overrides={"model_type": "nsa", "max_iters": 100})

Settings: the globals below are the defaults; config files (plain Python) override them, then
--key=value overrides those (lab/settings.py). The fields of the model's GPTConfig are settings too.
`stage` picks what runs: one training run (below), or the main job and its parts, which live in lab/:
the sweep (lab/sweep.py), the benchmarks (lab/bench.py), the report (lab/report.py), a checkpoint's
evaluation and attention maps (lab/inspection.py), recall (lab/mqar.py), and publishing into results/.
Everything a stage writes goes under out_dir; bad input stops with one line before anything is written.
"""

import math
import os
import sys
import time
from pathlib import Path

import torch

from lab import (
    TrainingDiverged,
    UserError,
    bench,
    checkpoint,
    command_line,
    data,
    families,
    files,
    inspection,
    length,
    mqar,
    placement,
    publish,
    report,
    sweep,
    trackers,
)
from lab import settings as configurator

# -----------------------------------------------------------------------------
# default settings: the baby GPT on char-level Shakespeare (nanoGPT's shakespeare_char), GPU profile
# I/O
out_dir = "out"
eval_interval = 250
log_interval = 10
eval_iters = 200  # 0: each split whole, in order (exact)
eval_windows = 0  # with eval_iters = 0: at most this many windows of a split, spread evenly; 0: all
eval_group = 8  # evaluation forwards this many of its batches at once: the same windows, fewer launches
always_save_checkpoint = False  # False: save only when the val loss improves
init_from = "scratch"  # 'scratch' or 'resume' (from out_dir/ckpt.pt)
# trackers, besides the local files that are always written (any of them at once)
wandb_log = False  # Weights & Biases; WANDB_MODE=offline works
wandb_project = "attention-lab"
wandb_run_name = ""  # '' = the model's name
mlflow_uri = ""  # e.g. 'sqlite:///mlflow.db' (a local store, no server) or a server's URL; '' = off
tensorboard_dir = ""  # event files go to <tensorboard_dir>/<run name>; '' = off
# data
dataset = "shakespeare_char"
data_dir = ""  # where prepared datasets live; '' = data/ in this checkout
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
# model: a name of lab/families.py, and the backbone fields every family shares
model_type = "vanilla"
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
bias = False
recipes = True  # apply config/models/<model_type>.py, the model's tuned settings for this task, where it has one
# AdamW with linear warmup and cosine decay to min_lr
learning_rate = 1e-3
max_iters = 3000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # 0 disables
decay_lr = True
warmup_iters = 100
lr_decay_iters = 0  # 0: = max_iters
min_lr = 1e-4
# system
device = "auto"  # 'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:1', ...
profile = "auto"  # 'cpu' or 'gpu': the sizes config files choose; 'auto': gpu on a CUDA device, else cpu
dtype = "auto"  # 'auto' (bfloat16 on a GPU that has it, else float32), 'float32', 'bfloat16', 'float16'
tf32 = True  # float32 matmuls in TF32 on a GPU (10 bits of mantissa): faster, looser
compile = True  # torch.compile the model for training
# 'reduce-overhead' replays forward and backward as CUDA graphs: the baby GPT is launch-bound on an H100
# (5.8 ms/iter there against 10.3 with 'default', results/h100-baby-vanilla)
compile_mode = "reduce-overhead"
seed = 1337
stage = "train"  # train, bakeoff, sweep, bench_layer, bench_decode, bench_memory, report, eval, inspect, mqar,
# mqar_report, placement, placement_report, length or publish (README)
# the sweep: every model of `models` (names of lab/families.py), parameter-matched, at each rate and seed
models = "vanilla,rope,linear,sparse,delta,delta_product,nsa"  # also the benchmarks', recall's and inspect's
learning_rates = "5e-4,1e-3,2e-3"  # each run's min_lr is its learning_rate / 10
lr_bracket = 0  # rounds that extend a model's rates one grid step past an end where its best is
seeds = "1337"
seeds_at_best = ""  # more seeds, trained only at each model's `finalists` best rates once the rates are tried
finalists = 2  # the rates seeds_at_best trains at: the best of them on the mean over every seed is the model's
target_params = 0  # 0: vanilla's count at these settings; each model is matched to within 3%
sweep_workers = 0  # processes sharing the sweep's runs; 0 = runs_per_gpu per visible GPU (one on a CPU)
runs_per_gpu = 1  # sweep workers on each GPU at once: small models are launch-bound, several fill it better
mps = True  # workers sharing a GPU run under a private NVIDIA MPS daemon where it is installed (lab/workers.py)
sweep_worker = -1  # set by the sweep for each of its workers
gpu_share = 1  # set by the sweep: how many workers share this one's GPU (a run's tokens/s is its share)
warm_benchmarks = False  # bakeoff with several workers: one more process compiles the benchmarks meanwhile
# benchmarks
seq_lens = "256,1024,4096,16384,65536"  # bench_layer and bench_memory
tokens_per_batch = 16384  # bench_layer and bench_memory: batch = tokens_per_batch // T
decode_lens = "128,256,512,1024,4096,16384"  # bench_decode: prompt lengths, batch 1
trials = 10
decode_trials = 3  # bench_decode's repeats: each is already the mean of 256 steps
trial_seconds = 10.0  # a slow row stops repeating after this long (3 repeats at least)
torch_profile = False  # bench_layer and bench_memory: also profile one step of each row
# looking inside: --stage=eval and --stage=inspect on ckpt_path, else out_dir/ckpt.pt, else each model's best run
ckpt_path = ""
text = "To be, or not to be, that is the question:"
ablation_iters = 20  # val batches per ablated head
local_window = 8  # attention_distance.png: the share of weight on the last this many tokens
mqar_widths = "64,128,256"  # --stage=mqar: every model of `models` at each of these widths (config/mqar.py)
# --stage=placement (config/placement.py): mixer layers placed among a base family's in a hybrid (lab/placement.py)
placement_bases = "delta,gated_delta"  # the base families, each a lab/hybrid.py entry (options after ':')
placement_mixer = "rope"  # the layers placed among them: softmax with RoPE
placements = ""  # '0,5,2+5': the mixer at layer 0; at 5; at 2 and 5. '': first, middle, last, and four pairs
# --stage=length (lab/length.py): val loss at longer contexts than training's
length_factors = "1,2,4,8,16"  # contexts of these multiples of block_size
length_chunks = 8  # the held-out text: this many chunks of the longest context from the val split's start; 0: all
length_stride = 0  # the sliding window's step; 0: block_size
publish_to = ""  # --stage=publish: the results/ entry to copy out_dir's finished record into
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
Settings = configurator.settings_class(DEFAULTS)
DEFAULT_JOB = ["config/train_shakespeare_char.py", "config/bakeoff.py"]  # `python train_runner.py` with no config file


def configure(config=None, overrides=None, raw=None):
    """Settings from config file(s) (a path or a list), an overrides dict and '--key=value' strings."""
    paths = [config] if isinstance(config, (str, Path)) else list(config or [])
    return configurator.configure(DEFAULTS, [configurator.repo_path(p) for p in paths], overrides, raw)


def lr_at(it, s):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (or max_iters)."""
    decay_iters = s.lr_decay_iters or s.max_iters
    if not s.decay_lr:
        return s.learning_rate
    if it < s.warmup_iters:
        return s.learning_rate * (it + 1) / (s.warmup_iters + 1)
    if it > decay_iters:
        return s.min_lr
    ratio = (it - s.warmup_iters) / max(1, decay_iters - s.warmup_iters)
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (s.learning_rate - s.min_lr)


def peak_flops(device_type):
    """Dense bf16 peak of the GPU for MFU, or None where it is not known."""
    if device_type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in (("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L4", 121e12),
                                          ("4090", 165e12)) if key in name), None)


def peak_memory_mib(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def distributed(s):
    """(rank, processes, device) under torchrun (one process per GPU, or CPU processes through gloo), else (0, 1, device)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if "RANK" not in os.environ or world == 1:
        return 0, 1, s.device
    if s.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps ({s.gradient_accumulation_steps}) must be a multiple of the "
                        f"{world} processes, which share the steps of the same global batch")
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if s.device_type == "cuda" else "gloo")
    device = s.device
    if s.device_type == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return rank, world, device


def train(config=None, overrides=None, raw=None, prefix="", group=None):
    """Train one model: config is a Settings, or config file(s) with overrides (README). Returns the metrics
    that are also written to out_dir/metrics.json; prefix goes before each log line, group names the
    sweep a run belongs to (for the trackers)."""
    s = config if isinstance(config, Settings) else configure(config, overrides, raw)
    out = Path(s.out_dir)
    ckpt_path = out / "ckpt.pt"
    if s.init_from == "scratch" and ckpt_path.exists():
        raise UserError(f"{ckpt_path} already exists: continue it with --init_from=resume, or choose another --out_dir")
    rank, world, device = distributed(s)
    ddp, master = world > 1, rank == 0
    micro_steps = s.gradient_accumulation_steps // world
    say = print if master else (lambda *a, **k: None)
    splits, raw_model, ckpt = load_inputs(s, ckpt_path, device, ddp, master)  # every check, before the first write

    torch.manual_seed(s.seed)
    if s.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = s.tf32
    raw_model.to(device)
    optimizer = raw_model.configure_optimizers(s.weight_decay, s.learning_rate, (s.beta1, s.beta2), s.device_type)
    data_gen = torch.Generator(device=device).manual_seed(s.seed + rank)  # each process its own batches
    iter_num, best_val_loss = 0, float("inf")
    curves = {"train": [], "val": []}  # rows: [iter, loss, lr] and [iter, train_loss, val_loss, seconds]
    if ckpt is not None:
        iter_num, best_val_loss, curves = restore(s, ckpt, optimizer, data_gen, master)
        say(prefix + f"resuming {s.model_type} from {ckpt_path} at iter {iter_num}")
        del ckpt
    model, new_step, keep_grads = for_training(s, raw_model, device, ddp, micro_steps)
    autocast = torch.autocast(device_type=s.device_type, dtype=getattr(torch, s.dtype), enabled=s.dtype != "float32")
    scaler = torch.amp.GradScaler(s.device_type, enabled=s.dtype == "float16")
    # a dataset of whole sequences trains on its train split's width (MQAR's: 256), not on block_size
    train_len = splits["train"]["inputs"].shape[1] if isinstance(splits["train"], dict) else s.block_size
    tokens_per_iter = s.gradient_accumulation_steps * s.batch_size * train_len  # across all processes
    record = Record(s, out, raw_model, curves, raw_model.estimate_flops_per_token(train_len) * tokens_per_iter,
                    tokens_per_iter, peak_flops(s.device_type), device, write=master)
    say(prefix + f"{s.model_type}: {raw_model.get_num_params() / 1e6:.2f}M parameters, {tokens_per_iter:,} tokens/iter, "
        f"device {device}{f' x {world} processes' if ddp else ''}, {s.dtype}, compile={s.compile}, "
        f"kernels: {', '.join(raw_model.kernel_paths(s.device_type))}")
    tracker = trackers.Tracker(s, s.wandb_run_name or s.model_type, trackers.run_tags(s), group, enabled=master)

    def diverged(value):
        tracker.finish(record.write("diverged", iter_num, best_val_loss))
        return TrainingDiverged(f"loss became {value} by iter {iter_num}; the last good checkpoint is kept. "
                                f"Lower learning_rate (now {s.learning_rate}) or raise warmup_iters")

    model.train()
    t0, steps = time.perf_counter(), 0
    while True:
        lr = lr_at(iter_num, s)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        if iter_num % s.eval_interval == 0 or iter_num == s.max_iters:
            losses = evaluate_now(s, model, raw_model, splits, autocast, new_step, record, iter_num, prefix, say)
            if not (math.isfinite(losses["train"]) and math.isfinite(losses["val"])):
                raise diverged(losses["val"])
            tracker.log({"train/loss": losses["train"], "val/loss": losses["val"], "lr": lr}, iter_num)
            if iter_num > 0 and (losses["val"] < best_val_loss or s.always_save_checkpoint):
                best_val_loss = min(best_val_loss, losses["val"])
                if master:
                    checkpoint.save(ckpt_path, raw_model, s.model_type, optimizer, iter_num, best_val_loss,
                                    configurator.flat(s), curves, data_gen)
            record.write("running", iter_num, best_val_loss)
            t0, steps = time.perf_counter(), 0
        if iter_num >= s.max_iters:
            break
        loss = train_step(s, model, optimizer, scaler, splits["train"], data_gen, autocast, new_step, micro_steps, ddp)
        optimizer.zero_grad(set_to_none=not keep_grads)
        iter_num, steps = iter_num + 1, steps + 1
        if iter_num % s.log_interval == 0:
            lossf = log_step(s, loss, world, record, tracker, iter_num, lr, (time.perf_counter() - t0) / steps, prefix, say)
            if not math.isfinite(lossf):
                raise diverged(lossf)
            t0, steps = time.perf_counter(), 0

    m = record.write("done", iter_num, best_val_loss)
    tracker.finish(m)
    say(prefix + f"done: {s.model_type} " + (
        f"best val loss {m['best_val_loss']:.4f} (ppl {m['val_perplexity']:.2f}), {m['ms_per_iter']:.2f} ms/iter, "
        f"{m['tokens_per_sec']:,.0f} tokens/s, peak {m['peak_memory_mib']:.0f} MiB, {m['wall_time_s']:.0f} s"
        if m["ms_per_iter"] and m["best_val_loss"] is not None else f"after {iter_num} iters"))
    if ddp:
        torch.distributed.destroy_process_group()
    return m


def load_inputs(s, ckpt_path, device, ddp, master):
    """(the splits on the device, the model, the checkpoint to resume or None): everything that can fail on
    bad input. Rank 0 prepares the data while the other processes wait."""
    if ddp and not master:
        torch.distributed.barrier()
    splits = data.load(s, device)
    if ddp and master:
        torch.distributed.barrier()
    torch.manual_seed(s.seed)
    model = families.build(s.model_type, s.model_args(), data.vocab_size(s))
    ckpt = checkpoint.read(ckpt_path) if s.init_from == "resume" else None
    if ckpt is not None:
        checkpoint.check_resumable(ckpt, ckpt_path, s.model_type, model)
        model = checkpoint.model_from(ckpt, ckpt_path)
    trackers.check(s)
    return splits, model, ckpt


def restore(s, ckpt, optimizer, data_gen, master):
    """A checkpoint's optimizer and random states put back: (iteration, best val loss, curves)."""
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if s.device_type == "cuda" and ckpt["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    if master and ckpt["rng"]["data"].numel() == data_gen.get_state().numel():
        data_gen.set_state(ckpt["rng"]["data"])
    return ckpt["iter_num"], ckpt["best_val_loss"], ckpt["curves"]


def for_training(s, raw_model, device, ddp, micro_steps):
    """(the model as training calls it: compiled and/or DDP-wrapped, what starts a CUDA-graph step, whether
    gradients stay allocated between steps)."""
    model = raw_model
    if s.compile:  # static shapes: training's and evaluation's batches each keep one shape
        model = torch.compile(model, mode=None if s.compile_mode == "default" else s.compile_mode, dynamic=False)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[torch.device(device).index] if s.device_type == "cuda" else None)
    # compiled with CUDA graphs, each forward starts a new graph step (a no-op in the other modes)
    new_step = torch.compiler.cudagraph_mark_step_begin if s.compile else (lambda: None)
    # A backward replayed as a CUDA graph hands its gradients out in memory that the next replay reuses: with
    # several micro-steps the gradients stay allocated and each one is added in (pytorch#169545)
    keep_grads = s.compile and s.compile_mode == "reduce-overhead" and s.device_type == "cuda" and micro_steps > 1
    if keep_grads:
        for p in raw_model.parameters():
            p.grad = torch.zeros_like(p)
    return model, new_step, keep_grads


def train_step(s, model, optimizer, scaler, train_split, data_gen, autocast, new_step, micro_steps, ddp):
    """One optimizer step over micro_steps batches; the last micro-batch's loss (a tensor: no host sync)."""
    for micro in range(micro_steps):
        if ddp:  # gradients are averaged across processes once, on the last micro-step (nanoGPT's no_sync)
            model.require_backward_grad_sync = micro == micro_steps - 1
        X, Y = data.get_batch(train_split, s.batch_size, s.block_size, data_gen)
        new_step()
        with autocast:
            _, loss = model(X, Y)
        scaler.scale(loss / micro_steps).backward()  # the mean over the micro-steps, as one large batch
    if s.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss


def evaluate_now(s, model, raw_model, splits, autocast, new_step, record, iter_num, prefix, say):
    """Both splits' losses (and recall accuracy where the data has targets at some positions), added to the curves."""
    model.eval()
    vocab_size = raw_model.config.vocab_size
    losses = data.evaluate(model, splits, s.batch_size, s.block_size, s.eval_iters, s.seed + 1, autocast, new_step,
                           group=s.eval_group, vocab_size=vocab_size, windows=s.eval_windows)
    recall = ""
    if isinstance(splits["val"], dict):  # whole sequences with targets at some positions (MQAR): accuracy there
        record.accuracy = data.recall_accuracy(raw_model, splits["val"], s.batch_size, autocast, vocab_size,
                                               int(splits["train"]["seq_len"].max()))
        record.curves.setdefault("val_accuracy", []).append([iter_num, record.accuracy["all"]])
        recall = f", val accuracy {record.accuracy['all']:.3f}"
    model.train()
    say(prefix + f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{recall}")
    if not record.curves["val"] or record.curves["val"][-1][0] != iter_num:
        record.curves["val"].append([iter_num, losses["train"], losses["val"], record.seconds()])
    return losses


def log_step(s, loss, world, record, tracker, iter_num, lr, dt, prefix, say):
    """The training loss and speed of a logging stretch, printed, recorded and tracked; the loss as a float."""
    if world > 1:  # the mean over processes of their last micro-batch's loss
        loss = loss.detach().clone()
        torch.distributed.all_reduce(loss)
        loss /= world
    lossf = loss.item()  # the one host sync of a logging stretch
    record.timings.append(dt * 1e3)
    record.curves["train"].append([iter_num, lossf, lr])
    mfu = record.flops_per_iter / dt / record.peak if record.peak else None
    say(prefix + f"iter {iter_num}: loss {lossf:.4f}, {dt * 1e3:.2f} ms/iter, {record.tokens_per_iter / dt:,.0f} tokens/s"
        + (f", mfu {100 * mfu:.1f}%" if mfu else ""))
    tracker.log({"train/loss_step": lossf, "ms_per_iter": dt * 1e3, "tokens_per_sec": record.tokens_per_iter / dt,
                 **({"mfu": mfu} if mfu else {})}, iter_num)
    return lossf


class Record:
    """A run's local record: metrics.json (with its curves, settings and environment), losses.csv, eval.csv."""

    def __init__(self, s, out, model, curves, flops_per_iter, tokens_per_iter, peak, device, write):
        self.s, self.out, self.model, self.curves, self.device, self.write_files = s, out, model, curves, device, write
        self.flops_per_iter, self.tokens_per_iter, self.peak = flops_per_iter, tokens_per_iter, peak
        self.timings, self.accuracy, self.env, self.start = [], None, files.environment(), time.time()
        # wall-clock seconds of the run so far, across resumes
        self.before = curves["val"][-1][3] if curves["val"] and len(curves["val"][-1]) > 3 else 0.0

    def seconds(self):
        return self.before + time.time() - self.start

    def write(self, status, iters, best):
        curves, s = self.curves, self.s
        windows = sorted(self.timings[1:] if len(self.timings) > 1 else self.timings)  # the first holds compilation
        ms = windows[len(windows) // 2] if windows else None
        finite = math.isfinite(best)
        m = {"status": status, "model_type": s.model_type, "params": self.model.get_num_params(), "iters": iters,
             "best_val_loss": best if finite else None,
             "final_val_loss": curves["val"][-1][2] if curves["val"] else None,
             "final_train_loss": curves["val"][-1][1] if curves["val"] else None,
             "val_perplexity": math.exp(best) if finite else None,
             "ms_per_iter": ms, "tokens_per_sec": self.tokens_per_iter / (ms / 1e3) if ms else None,
             "mfu": self.flops_per_iter / (ms / 1e3) / self.peak if ms and self.peak else None,
             "flops_per_iter": self.flops_per_iter, "kernel_path": self.model.kernel_paths(s.device_type),
             "peak_memory_mib": peak_memory_mib(self.device), "wall_time_s": self.seconds(), "device": self.device,
             "dtype": s.dtype, "gpu_share": s.gpu_share, "config": configurator.flat(s),
             "environment": self.env, "curves": curves}
        if curves.get("val_accuracy"):
            m.update(val_accuracy=curves["val_accuracy"][-1][1], best_val_accuracy=max(a for _, a in curves["val_accuracy"]),
                     val_accuracy_by_slice=self.accuracy)
        if self.write_files:
            files.write_json(self.out / "metrics.json", m)
            files.write_csv(self.out / "losses.csv", ["iter", "loss", "lr"], curves["train"])
            files.write_csv(self.out / "eval.csv", ["iter", "train_loss", "val_loss", "seconds"], curves["val"])
        return m


def bakeoff(s):
    """The main job: the sweep, then decoding latency and the memory wall of its models, their loss past the
    training length, then the report."""
    start = time.perf_counter()
    length.check(s)
    specs = sweep.run(s, train)
    for stage in bench.BAKEOFF:  # where the job's time goes, said as it goes
        print(f"[bakeoff] {time.perf_counter() - start:.0f} s in: {stage}")
        bench.run(s.replace(stage=stage), specs)
    print(f"[bakeoff] {time.perf_counter() - start:.0f} s in: length")
    length.run(s.replace(stage="length"))
    print(f"[bakeoff] {time.perf_counter() - start:.0f} s in: report")
    return report.write(s)


def lengths(s):
    """--stage=length: a job's models trained where they are not yet (the sweep resumes its folder), then each
    one's val loss at longer contexts; or one run's checkpoint (ckpt_path, or out_dir/ckpt.pt) alone."""
    length.check(s)
    if not s.ckpt_path and not (Path(s.out_dir) / "ckpt.pt").exists():
        sweep.run(s, train)
    return length.run(s)


STAGES = {
    "train": train, "bakeoff": bakeoff, "sweep": lambda s: sweep.run(s, train), "report": lambda s: report.write(s),
    "bench_layer": lambda s: bench.run(s), "bench_decode": lambda s: bench.run(s), "bench_memory": lambda s: bench.run(s),
    "warm_benchmarks": lambda s: bench.warm(s),  # started by the bake-off's sweep, beside its runs
    "eval": lambda s: inspection.evaluate_checkpoint(s), "inspect": lambda s: inspection.inspect(s),
    "mqar": lambda s: mqar.run(s, train), "mqar_report": lambda s: mqar.report(s), "publish": lambda s: publish.publish(s),
    "placement": lambda s: placement.run(s, train), "placement_report": lambda s: placement.report(s),
    "length": lengths,
}


def main(argv):
    paths, raw = configurator.parse_argv(argv)
    started_by_a_job = "sweep_worker" in raw or raw.get("stage") == "warm_benchmarks"  # given the job's own files
    s = configure(paths or ([] if started_by_a_job else DEFAULT_JOB), raw=raw)
    if s.stage not in STAGES:
        raise UserError(f"unknown stage '{s.stage}'{families.closest(s.stage, STAGES)}; choose one of {', '.join(STAGES)}")
    return STAGES[s.stage](s)


if __name__ == "__main__":
    command_line(main, sys.argv[1:])
