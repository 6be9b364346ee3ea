"""
Train one attention-family GPT on a prepared dataset, nanoGPT-style.

    python train_runner.py                                      # = config/train_shakespeare_char.py
    python train_runner.py config/train_shakespeare_char.py --max_iters=500 --pos_emb=rope

    >>> from train_runner import train
    >>> metrics = train("config/train_shakespeare_char.py", overrides={"max_iters": 100})

Configuration: the globals below are the defaults. A config file (plain Python)
overrides them, then --key=value arguments override that; values are Python
literals and must have the default's type. The fields of the chosen family's
GPTConfig (pos_emb, n_kv_head, attn_impl, a family's own knobs) are keys too.
Config files see the resolved `device`, so one file can hold a GPU and a CPU
profile.

Every run writes under out_dir: ckpt.pt (atomically; resumable with
--init_from=resume), metrics.json and losses.csv. A bad configuration, a missing
dataset or a foreign checkpoint stops with one line saying what to fix, before
anything is written.
"""

import ast
import builtins
import contextlib
import csv
import difflib
import hashlib
import importlib
import io
import json
import math
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

# -----------------------------------------------------------------------------
# defaults: the baby GPT on char-level Shakespeare (nanoGPT's shakespeare_char)
# I/O
out_dir = "out"
eval_interval = 250
log_interval = 10
eval_iters = 200  # 0: each split whole, in order (exact, and cheaper when the split is small)
eval_windows = 0  # with eval_iters = 0: at most this many windows of a split, spread evenly over it; 0: all
eval_group = 8  # evaluation forwards this many of its batches at once: the same windows, fewer launches
always_save_checkpoint = False  # False: save only when val loss improves
init_from = "scratch"  # 'scratch' or 'resume' (from out_dir/ckpt.pt)
# trackers, besides the local files that are always written (any of them at once; README)
wandb_log = False  # Weights & Biases; WANDB_MODE=offline works
wandb_project = "attention-lab"
wandb_run_name = ""  # '' = <model_type>
mlflow_uri = ""  # e.g. 'sqlite:///mlflow.db' (a local store, no server) or an MLflow server's URL; '' = off
tensorboard_dir = ""  # event files go to <tensorboard_dir>/<run name>; '' = off
# data
dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
# model: the family, and the backbone fields every family shares
model_type = "vanilla"
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
bias = False
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
dtype = "auto"  # 'auto' (bfloat16 on a GPU that has it, else float32), 'float32', 'bfloat16', 'float16'
compile = True  # torch.compile the model for training
# torch.compile's mode. 'reduce-overhead' replays forward and backward as CUDA graphs: the baby GPT is
# launch-bound on an H100 (5.8 ms/iter there vs 10.3 with 'default' and 12.2 uncompiled, README)
compile_mode = "reduce-overhead"
seed = 1337
# what to do: 'train' (one run), 'bakeoff' (sweep, then bench_decode and bench_memory, then report),
# or one of those parts alone: 'sweep', 'bench_decode', 'bench_memory', 'report'; also 'bench_layer',
# 'eval' and 'inspect' (below), 'mqar' and 'mqar_report' (config/mqar.py)
stage = "train"
# the sweep: config files by short name (vanilla = config/train_shakespeare_char.py, x = ..._x.py, or a path)
models_to_test = "vanilla,rope,linear,sparse,delta,delta_product,nsa"
learning_rates = "5e-4,1e-3,2e-3"  # each run's min_lr is its learning_rate / 10
lr_bracket = 0  # rounds that extend a model's learning rates one grid step past an end when its best is there
seeds = "1337"
# more seeds, trained only at each model's best learning rate once the grid (and its brackets) is done with
# `seeds`: error bars for the published numbers at a third of the cost of every rate at every seed
seeds_at_best = ""
target_params = 0  # 0: the vanilla entry's parameter count; each family is matched to within 3%
sweep_dir = ""  # '' = out-bakeoff-<cpu or cuda> (untracked: the main job never writes into results/)
sweep_workers = 0  # processes that share the sweep's runs; 0 = runs_per_gpu per visible GPU (one on a CPU)
runs_per_gpu = 1  # sweep workers on each GPU at once: the small models are launch-bound, so several fill it better
# workers sharing a GPU run as clients of a private NVIDIA MPS daemon (started if nvidia-cuda-mps-control is on PATH,
# stopped after): their kernels then run on the GPU at once instead of time-slicing, 15-27% more throughput for
# three CUDA-graphed runs on an H100 (results/h100-sharing). A GPU fault in one client ends the others on that GPU.
mps = True
sweep_worker = -1  # set by the sweep for each of its workers
gpu_share = 1  # set by the sweep: how many of its workers share this one's GPU (a run's tokens/s is its share)
# bakeoff with several workers: one more process compiles the benchmarks' kernels (each row's first call, nothing
# measured or written) beside the sweep's runs; the benchmarks then find them in torch's compile caches. Most of
# their time was compilation (results/h100-bakeoff/timings.md). On in config/bakeoff.py's GPU profile (on a
# CPU the sweep has one worker, so it never runs).
warm_benchmarks = False
# benchmarks: the sweep's models, or for a benchmark stage alone, --models (model_types with these settings)
models = ""  # comma-separated model_types; '' = model_type
seq_lens = "256,1024,4096,16384,65536"  # bench_layer and bench_memory
tokens_per_batch = 16384  # bench_layer and bench_memory: batch = tokens_per_batch // T
decode_lens = "128,256,512,1024,4096,16384"  # bench_decode: prompt lengths, batch 1
trials = 10
decode_trials = 3  # bench_decode's repeats: each is already the mean of DECODE_TOKENS steps
trial_seconds = 10.0  # a slow row stops repeating after this long (3 repeats at least)
profile = False  # bench_layer and bench_memory: also profile one step of each row, to profile_<model>_<T>.txt
# looking inside: --stage=eval (a checkpoint's val loss) and --stage=inspect (attention maps, entropy,
# distance, head ablation) on ckpt_path, else out_dir/ckpt.pt, else each sweep model's best run
ckpt_path = ""
text = "To be, or not to be, that is the question:"
ablation_iters = 20  # val batches per ablated head
local_window = 8  # attention_distance.png: the share of weight on the last this many tokens
# the recall bake-off (--stage=mqar, config/mqar.py): every family of --models at each of these widths
mqar_widths = "64,128,256"
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}

# model_type -> (module, GPTConfig presets). Adding a family = one line here.
FAMILIES = {
    "vanilla": ("model", {}),
    "linear": ("model_linear", {}),
    "sparse": ("model_sparse", {}),
    "delta": ("model_delta", {"variant": "deltanet"}),
    "delta_product": ("model_delta", {"variant": "gated_deltaproduct"}),
    "nsa": ("model_nsa", {}),
}
DATA_ROOT = Path(__file__).resolve().parent / "data"
CKPT_FORMAT = "attention-lab-checkpoint/1"


class UserError(Exception):
    """A problem the user fixes (configuration, data, checkpoint): one line, no traceback."""


class TrainingDiverged(UserError):
    pass


def closest(name, options):
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


# -----------------------------------------------------------------------------
# configuration

def load_family(name):
    if name not in FAMILIES:
        raise UserError(f"unknown model_type '{name}'{closest(name, FAMILIES)}; choose from {', '.join(FAMILIES)}")
    module_name, presets = FAMILIES[name]
    try:
        return importlib.import_module(module_name), presets
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise UserError(f"model_type '{name}' needs {module_name}.py, which is not in this checkout yet") from None
        raise


def family_fields(module):
    """Config keys a family adds: its GPTConfig fields, bar vocab_size (the dataset sets it)."""
    return {f.name: f.default for f in fields(module.GPTConfig) if f.name != "vocab_size"}


def parse_value(key, text, default):
    """A --key=value string as a Python literal; a bare word stays a string where one is expected."""
    if isinstance(default, str) and not text.startswith(("'", '"')):  # --key= too: the empty string
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"--{key}={text}: not a valid {type(default).__name__}") from None


def check_type(key, value, default, source):
    if default is None:  # optional fields: None or an int
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        want = "an int or None"
    elif isinstance(default, bool):
        ok, want = isinstance(value, bool), "True or False"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an int"
    elif isinstance(default, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, want = isinstance(value, type(default)), f"a {type(default).__name__}"
    if not ok:
        raise UserError(f"{key} must be {want} (default {default!r}), got {value!r} from {source}")
    return float(value) if isinstance(default, float) else value


def parse_argv(argv):
    """['cfg.py', '--a=1'] -> (['cfg.py'], {'a': '1'}) with values left as strings."""
    paths, raw = [], {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, val = arg[2:].partition("=")
            if not eq:
                raise UserError(f"'{arg}': write options as --key=value")
            raw[key] = val
        else:
            paths.append(arg)
    return paths, raw


def configure(defaults, config_paths=(), overrides=None, raw_overrides=None, family_keys=True):
    """defaults <- config files <- overrides (typed) <- raw_overrides ('--key=value' strings).

    Unknown keys and wrong types raise UserError naming the key and its closest valid one.
    """
    overrides, raw_overrides = dict(overrides or {}), dict(raw_overrides or {})
    ns = dict(defaults)
    if "device" in ns:  # config files see the device settled, so one file can hold a GPU and a CPU profile
        ns["device"] = overrides.get("device", raw_overrides.get("device", ns["device"]))
        if ns["device"] == "auto":
            ns["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    from_file = {}
    for path in config_paths:
        if not os.path.isfile(path):
            raise UserError(f"config file {path} not found")
        scope = dict(ns, __file__=str(Path(path).resolve()))  # a config file may build on another beside it
        try:
            exec(builtins.compile(Path(path).read_text(), path, "exec"), scope)
        except Exception as e:
            raise UserError(f"config file {path} failed: {type(e).__name__}: {e}") from None
        for key, val in scope.items():
            if key.startswith("_") or not isinstance(val, (bool, int, float, str, type(None))):
                continue  # helpers, imports and builtins a config file may hold
            if key not in ns or val is not ns[key]:
                from_file[key] = (val, path)
                ns[key] = val
    allowed = dict(defaults)
    if family_keys:
        family = raw_overrides.get("model_type", overrides.get("model_type", ns["model_type"]))
        module, presets = load_family(family)
        for key, val in family_fields(module).items():
            allowed.setdefault(key, val)
            ns.setdefault(key, presets.get(key, val))
        benchmarked = raw_overrides.get("models", overrides.get("models", ns.get("models", "")))
        for name in filter(None, str(benchmarked).split(",")):  # benchmarks take every listed family's keys;
            for key, val in family_fields(load_family(name)[0]).items():  # unset ones stay each family's default
                allowed.setdefault(key, val)
    settings = [(k, v, s) for k, (v, s) in from_file.items()]
    settings += [(k, v, "overrides") for k, v in overrides.items()]
    settings += [(k, parse_value(k, v, allowed.get(k)) if k in allowed else v, f"--{k}") for k, v in raw_overrides.items()]
    for key, val, source in settings:
        if key not in allowed:
            hint = " (the dataset's meta.pkl sets it)" if key == "vocab_size" else closest(key, allowed)
            raise UserError(f"unknown config key '{key}' from {source}{hint}")
        ns[key] = check_type(key, val, allowed[key], source)
    if ns.get("device") == "auto":
        ns["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return {k: ns[k] for k in allowed if k in ns}


# -----------------------------------------------------------------------------
# files: every write goes to a temporary file that is renamed into place

def atomic_write(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def write_csv(path, header, rows):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


class _MetaUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # meta.pkl holds dicts, strings and ints: nothing to import
        raise pickle.UnpicklingError(f"meta.pkl refers to {module}.{name}")


def load_meta(dataset_name):
    path = DATA_ROOT / dataset_name / "meta.pkl"
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return _MetaUnpickler(f).load()


def dataset_vocab(dataset):
    meta = load_meta(dataset)
    return meta["vocab_size"] if meta else 50304  # no meta.pkl: GPT-2's 50257, padded to a multiple of 64


def codec(ckpt):
    """(encode, decode) for a checkpoint's dataset: its meta.pkl's characters, else GPT-2's BPE."""
    meta = load_meta(ckpt["config"]["dataset"])
    if meta is not None:
        stoi, itos = meta["stoi"], meta["itos"]

        def encode(text):
            missing = sorted(set(text) - set(stoi))
            if missing:
                raise UserError(f"the prompt has characters this model never saw: {''.join(missing)!r}")
            return [stoi[c] for c in text]
        return encode, lambda ids: "".join(itos[i] for i in ids)
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode


def save_checkpoint(path, raw_model, model_type, optimizer, iter_num, best_val_loss, cfg, curves, data_gen):
    ckpt = {
        "format": CKPT_FORMAT,
        "model_type": model_type,
        "model_args": asdict(raw_model.config),
        "model": raw_model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iter_num": iter_num,
        "best_val_loss": best_val_loss,
        "config": cfg,
        "curves": curves,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "data": data_gen.get_state(),
        },
    }
    atomic_write(path, lambda f: torch.save(ckpt, f))


def read_checkpoint(path):
    """The checkpoint dict, after checking it is one of ours and whole."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train one first, or point --out_dir at the run's folder")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} could not be read as a checkpoint ({type(e).__name__}); it is corrupt or truncated") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise UserError(f"{path} was not written by train_runner.py (foreign checkpoint format)")
    return ckpt


def model_from_checkpoint(ckpt, path="checkpoint"):
    module, _ = load_family(ckpt["model_type"])
    try:
        model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} does not fit {module.__name__}.GPT: {str(e).splitlines()[0]}") from None
    return model


# -----------------------------------------------------------------------------
# data: the whole token stream lives on the device; batches are gathered there

def prepare_data(dataset_name):
    """The dataset's folder, its train.bin, val.bin and meta.pkl made first from an input.txt beside its
    prepare.py if they are not there yet (a fresh checkout with the text copied in)."""
    folder = DATA_ROOT / dataset_name
    if not (folder / "train.npz").exists() and not (folder / "train.bin").exists() \
            and (folder / "prepare.py").exists() and (folder / "input.txt").exists():
        print(f"preparing {folder} from its input.txt")
        subprocess.run([sys.executable, str(folder / "prepare.py")], check=True)
    return folder


def load_tokens(dataset_name, block_size, device):
    """A dataset's train and val splits on the device: a token stream per split (train.bin / val.bin),
    or for a dataset of whole sequences (train.npz / val.npz, e.g. MQAR) a dict of inputs, targets
    (-1 where the loss ignores a position) and each sequence's slice (seq_len, kv_pairs)."""
    folder = prepare_data(dataset_name)
    if (folder / "train.npz").exists():
        return {split: load_sequences(folder / f"{split}.npz", block_size, device) for split in ("train", "val")}
    splits = {}
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        if not path.exists():
            fix = f"run `python data/{dataset_name}/prepare.py` first" if (folder / "prepare.py").exists() \
                else f"no such dataset; choose one of {', '.join(sorted(p.name for p in DATA_ROOT.iterdir() if p.is_dir()))}"
            raise UserError(f"dataset '{dataset_name}' has no {split}.bin: {fix}")
        tokens = np.fromfile(path, dtype=np.uint16)
        if len(tokens) <= block_size + 1:
            raise UserError(f"block_size {block_size} is too long for {path} ({len(tokens)} tokens): lower --block_size")
        splits[split] = torch.from_numpy(tokens.astype(np.int64)).to(device)
    return splits


def load_sequences(path, block_size, device):
    if not path.exists():
        raise UserError(f"{path} is missing: run `python {path.parent.relative_to(DATA_ROOT.parent)}/prepare.py` first")
    with np.load(path) as f:
        data = {k: torch.from_numpy(f[k].astype(np.int64)).to(device) for k in ("inputs", "targets", "seq_len", "kv_pairs")}
    if data["inputs"].shape[1] > block_size:
        raise UserError(f"{path} has sequences of {data['inputs'].shape[1]} tokens: raise --block_size to at least that")
    return data


def get_batch(data, batch_size, block_size, generator):
    """(inputs, targets) [batch_size, T]: random windows of a token stream, or random whole sequences."""
    if isinstance(data, dict):
        ix = torch.randint(len(data["inputs"]), (batch_size,), device=data["inputs"].device, generator=generator)
        return data["inputs"][ix], data["targets"][ix]
    ix = torch.randint(len(data) - block_size - 1, (batch_size, 1), device=data.device, generator=generator)
    window = data[ix + torch.arange(block_size + 1, device=data.device)]
    return window[:, :-1], window[:, 1:]


@torch.no_grad()
def recall_accuracy(model, data, batch_size, autocast, vocab_size=1):
    """Accuracy at the positions with a target (MQAR's queries), per (seq_len, kv_pairs) slice and overall."""
    hits, counts = {}, {}
    rows = slice_rows(batch_size, data["inputs"].shape[1], vocab_size)
    for s in range(0, len(data["inputs"]), rows):
        X, Y = data["inputs"][s:s + rows], data["targets"][s:s + rows]
        with autocast:
            logits, _ = model(X)
        right = ((logits.argmax(-1) == Y) & (Y >= 0)).sum(1)
        for L, kv, r, n in zip(data["seq_len"][s:s + rows].tolist(), data["kv_pairs"][s:s + rows].tolist(),
                               right.tolist(), (Y >= 0).sum(1).tolist()):
            hits[(L, kv)] = hits.get((L, kv), 0) + r
            counts[(L, kv)] = counts.get((L, kv), 0) + n
    acc = {f"{L}x{kv}": hits[(L, kv)] / counts[(L, kv)] for L, kv in sorted(counts)}
    return dict(acc, all=sum(hits.values()) / max(1, sum(counts.values())))


EVAL_LOGITS = 2**27  # logits of one evaluation forward, at most: 0.5 GB in float32


def slice_rows(batch_size, block_size, vocab_size):
    """Rows per evaluation forward: the largest divisor of batch_size (one shape compiles) whose logits stay
    under EVAL_LOGITS. MQAR's batch of 256 x 1024 over 8,192 tokens would otherwise make 8 GiB of float32
    logits per evaluation, and three runs sharing a GPU ran out of memory on it (results/h100-mqar)."""
    rows = max(1, min(batch_size, EVAL_LOGITS // (block_size * vocab_size)))
    while batch_size % rows:
        rows -= 1
    return rows


def summed_loss(model, X, Y, autocast, before_forward, rows):
    """The summed loss over the targets of a batch, and their count, `rows` rows a forward."""
    total = count = torch.zeros((), device=X.device)
    for s in range(0, len(X), rows):
        before_forward()
        with autocast:
            _, loss = model(X[s:s + rows], Y[s:s + rows])
        n = (Y[s:s + rows] >= 0).sum()  # 0 in a padded slice, whose loss is NaN (no sync to ask)
        total, count = total + torch.where(n > 0, loss.float() * n, 0.0), count + n
    return total, count


def ordered_batches(data, rows, block_size, most=0):
    """A split whole, in order: consecutive windows of block_size tokens of a token stream (the tokens
    after the last whole window are left out), or every sequence, `rows` of them a batch; with `most`, only
    that many of them, evenly spaced (the same ones every time). The last batch is padded with ignored
    targets (-1), so every batch has one shape."""
    if isinstance(data, dict):
        X, Y = data["inputs"], data["targets"]
    else:
        n = (len(data) - 1) // block_size
        X, Y = data[:n * block_size].view(n, block_size), data[1:n * block_size + 1].view(n, block_size)
    if 0 < most < len(X):
        keep = torch.arange(most, device=X.device) * len(X) // most
        X, Y = X[keep], Y[keep]
    for s in range(0, len(X), rows):
        x, y = X[s:s + rows], Y[s:s + rows]
        pad = rows - len(x)
        yield (torch.cat([x, x.new_zeros(pad, x.shape[1])]), torch.cat([y, y.new_full((pad, y.shape[1]), -1)])) if pad else (x, y)


@torch.no_grad()
def evaluate(model, data, batch_size, block_size, eval_iters, seed, autocast, before_forward=lambda: None,
             splits=("train", "val"), group=1, vocab_size=1, windows=0):
    """Mean loss over eval_iters batches of each split; the generator is seeded with `seed`, so the
    batches are the same every time (and the same as training's evaluations with seed = its seed + 1).
    Up to `group` of them go through the model as one batch: the same windows and, for a token stream,
    the same mean, in fewer and larger launches. The group divides eval_iters (one shape compiles), and
    grows a batch only while its logits stay under EVAL_LOGITS elements; a batch whose logits alone are
    over it goes in slices of rows (slice_rows). eval_iters = 0: the mean over every target of each
    split whole (ordered_batches), exactly; with a split of 111k tokens (Shakespeare's val) a single batch.
    Or of at most `windows` of its windows, evenly spread: the same ones at every evaluation."""
    split0 = data[splits[0]]
    gen = torch.Generator(device=(split0["inputs"] if isinstance(split0, dict) else split0).device).manual_seed(seed)
    largest = max(1, min(group, EVAL_LOGITS // (batch_size * block_size * vocab_size)))
    rows = slice_rows(batch_size, block_size, vocab_size)
    if eval_iters == 0:
        result = {}
        for split in splits:
            total = count = torch.zeros((), device=gen.device)
            for X, Y in ordered_batches(data[split], batch_size * largest, block_size, windows):
                t, n = summed_loss(model, X, Y, autocast, before_forward, rows * largest)
                total, count = total + t, count + n
            result[split] = (total / count).item()
        return result
    group = math.gcd(eval_iters, largest)
    result = {}
    for split in splits:
        total = torch.zeros((), device=gen.device)
        for _ in range(eval_iters // group):
            X, Y = map(torch.cat, zip(*(get_batch(data[split], batch_size, block_size, gen) for _ in range(group))))
            t, n = summed_loss(model, X, Y, autocast, before_forward, rows * group)
            total += t / n
        result[split] = (total / (eval_iters // group)).item()
    return result


# -----------------------------------------------------------------------------
# trackers: one small seam between a run (or the sweep, or a benchmark) and wandb / MLflow / TensorBoard

TRACKER_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}


def trackers_wanted(cfg):
    return [name for name, on in (("wandb", cfg.get("wandb_log")), ("mlflow", cfg.get("mlflow_uri")),
                                  ("tensorboard", cfg.get("tensorboard_dir"))) if on]


def check_trackers(cfg):
    """Before anything runs: each tracker switched on must be importable."""
    for name in trackers_wanted(cfg):
        module = "torch.utils.tensorboard" if name == "tensorboard" else name
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(f"{name} is switched on but not installed: pip install {TRACKER_PACKAGES[name]}") from None


class Tracker:
    """The trackers a config switches on, for one run. Local files never depend on them: a tracker that
    fails is reported once and dropped, and the run goes on."""

    def __init__(self, cfg, name, tags=None, group=None):
        self.live, tags = {}, {k: str(v) for k, v in (tags or {}).items()}
        params = {k: v for k, v in cfg.items() if isinstance(v, (bool, int, float, str, type(None)))}
        for kind in trackers_wanted(cfg):
            self._call(kind, self._start, kind, cfg, name, tags, group, params)

    def _start(self, kind, cfg, name, tags, group, params):
        if kind == "wandb":
            import wandb
            self.live[kind] = wandb.init(project=cfg["wandb_project"], name=name, group=group, config=params,
                                         tags=[f"{k}={v}" for k, v in tags.items()], reinit="finish_previous")
        elif kind == "mlflow":
            import mlflow
            mlflow.set_tracking_uri(cfg["mlflow_uri"])
            mlflow.set_experiment(cfg["wandb_project"])
            run = mlflow.start_run(run_name=name, tags=dict(tags, **({"sweep": group} if group else {})))
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            self.live[kind] = run
        else:
            from torch.utils.tensorboard import SummaryWriter
            self.live[kind] = SummaryWriter(str(Path(cfg["tensorboard_dir"]) / name))

    def _call(self, kind, fn, *args):
        try:
            fn(*args)
        except Exception as e:  # a broken tracker must not cost the run its results
            print(f"warning: {kind} failed ({type(e).__name__}: {e}); going on with the local files only", file=sys.stderr)
            self.live.pop(kind, None)

    def log(self, metrics, step):
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        for kind, handle in list(self.live.items()):
            if kind == "wandb":
                self._call(kind, handle.log, metrics, step)
            elif kind == "mlflow":
                import mlflow
                self._call(kind, mlflow.log_metrics, metrics, step)
            else:
                self._call(kind, lambda: [handle.add_scalar(k, v, step) for k, v in metrics.items()])

    def text(self, title, body):
        for kind, handle in list(self.live.items()):
            if kind == "tensorboard":
                self._call(kind, handle.add_text, title, body)
            elif kind == "mlflow":
                import mlflow
                self._call(kind, mlflow.log_text, body, f"{title}.md")

    def artifacts(self, paths):
        for kind in list(self.live):
            if kind == "mlflow":
                import mlflow
                for p in paths:
                    self._call(kind, mlflow.log_artifact, str(p))
            elif kind == "wandb":
                import wandb
                for p in paths:
                    self._call(kind, wandb.save, str(p), str(Path(p).parent))

    def finish(self, summary=None):
        summary = {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float)) and v is not None}
        for kind, handle in list(self.live.items()):
            if kind == "wandb":
                self._call(kind, lambda: (handle.summary.update(summary), handle.finish()))
            elif kind == "mlflow":
                import mlflow
                self._call(kind, lambda: (mlflow.log_metrics({f"final_{k}": v for k, v in summary.items()}),
                                          mlflow.end_run()))
            else:
                self._call(kind, handle.close)
        self.live = {}


def run_tags(cfg):
    return {"task": "lm", "family": cfg["model_type"], "longctx": str(cfg["block_size"] >= 1024).lower()}


# -----------------------------------------------------------------------------
# the run

def lr_at(it, cfg):
    decay_iters = cfg["lr_decay_iters"] or cfg["max_iters"]
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    if it > decay_iters:
        return cfg["min_lr"]
    ratio = (it - cfg["warmup_iters"]) / max(1, decay_iters - cfg["warmup_iters"])
    return cfg["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg["learning_rate"] - cfg["min_lr"])


def peak_flops(device_type):
    """Dense bf16 peak of the GPU for MFU, or None where we do not know it."""
    if device_type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for key, flops in (("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L4", 121e12), ("4090", 165e12)):
        if key in name:
            return flops
    return None


def environment():
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    env["git_commit"] = os.environ.get("GIT_COMMIT") or git_revision()  # a copy elsewhere can be told its commit
    return env


def git_revision():
    """The checkout's commit, with '+dirty' when tracked files outside results/ differ from it (results are
    what runs write, so they do not make a run's code differ); None outside git."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
        rev = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
        return (rev + ("+dirty" if changed else "")) or None
    except OSError:
        return None


def build(cfg, vocab_size):
    module, presets = load_family(cfg["model_type"])
    args = {k: cfg[k] for k in family_fields(module)}
    args["vocab_size"] = vocab_size
    try:
        return module.GPT(module.GPTConfig(**args))
    except ValueError as e:
        raise UserError(f"invalid model configuration: {e}") from None


def train(config_path=None, overrides=None, argv_overrides=None):
    """Train one model. config_path: a file or a list of files (None: the defaults above).

    Returns the metrics dict that is also written to out_dir/metrics.json.
    """
    paths = [config_path] if isinstance(config_path, (str, Path)) else list(config_path or [])
    cfg = configure(DEFAULTS, paths, overrides, argv_overrides)
    return run(cfg)


def run(cfg, prefix="", group=None):
    """Train one model from a resolved config (configure()'s output); prefix goes before each log line,
    group names the sweep a run belongs to (for the trackers)."""
    out = Path(cfg["out_dir"])
    ckpt_path = out / "ckpt.pt"
    if cfg["init_from"] not in ("scratch", "resume"):
        raise UserError(f"init_from must be 'scratch' or 'resume', got '{cfg['init_from']}'")
    if cfg["init_from"] == "scratch" and ckpt_path.exists():
        raise UserError(f"{ckpt_path} already exists: continue it with --init_from=resume, or choose another --out_dir")
    for key in ("batch_size", "block_size", "max_iters", "eval_iters", "eval_windows", "eval_interval", "log_interval",
                "gradient_accumulation_steps"):
        zero_ok = key in ("max_iters", "eval_iters", "eval_windows")  # eval_iters = 0: each split whole
        if cfg[key] < (0 if zero_ok else 1):
            raise UserError(f"{key} must be {'>= 0' if zero_ok else 'positive'}, got {cfg[key]}")
    device = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device_type = "cuda" if device.startswith("cuda") else device
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UserError("device='cuda' but this machine has no CUDA GPU: use --device=cpu")
    # under torchrun: one process per GPU (or CPU process, through gloo); rank 0 alone writes files
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ddp = "RANK" in os.environ and world > 1
    if ddp and cfg["gradient_accumulation_steps"] % world:
        raise UserError(f"gradient_accumulation_steps ({cfg['gradient_accumulation_steps']}) must be a multiple of "
                        f"the {world} processes, which share the steps of the same global batch")
    micro_steps = cfg["gradient_accumulation_steps"] // world if ddp else cfg["gradient_accumulation_steps"]
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    if ddp:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        if device_type == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    dtype = cfg["dtype"]
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got '{dtype}'")
    if dtype != "float32" and device_type != "cuda":
        raise UserError(f"dtype={dtype} needs a GPU here; use --dtype=float32 on {device}")

    # everything that can fail on bad input happens before the first write
    if ddp and not master:
        dist.barrier()  # rank 0 prepares a dataset's files first: the others would race it to write them
    data = load_tokens(cfg["dataset"], cfg["block_size"], device)
    if ddp and master:
        dist.barrier()
    vocab_size = dataset_vocab(cfg["dataset"])
    torch.manual_seed(cfg["seed"])
    model = build(cfg, vocab_size)
    ckpt = read_checkpoint(ckpt_path) if cfg["init_from"] == "resume" else None
    if ckpt is not None:
        if ckpt["model_type"] != cfg["model_type"]:
            raise UserError(f"{ckpt_path} holds a '{ckpt['model_type']}' model but model_type='{cfg['model_type']}'")
        wanted = asdict(model.config)
        differ = [f"{k}={wanted[k]!r} (checkpoint: {v!r})" for k, v in ckpt["model_args"].items() if wanted.get(k) != v]
        if differ:
            raise UserError(f"{ckpt_path} was trained with other model settings: {', '.join(differ)}; "
                            "resume with the run's own config")
        model = model_from_checkpoint(ckpt, ckpt_path)
    check_trackers(cfg)

    torch.manual_seed(cfg["seed"])
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    optimizer = model.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]), device_type)
    data_gen = torch.Generator(device=device).manual_seed(cfg["seed"] + rank)  # each process its own batches
    iter_num, best_val_loss = 0, float("inf")
    curves = {"train": [], "val": []}  # rows: [iter, loss, lr] and [iter, train_loss, val_loss, seconds]
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num, best_val_loss, curves = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["curves"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device_type == "cuda" and ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        if master and ckpt["rng"]["data"].numel() == data_gen.get_state().numel():
            data_gen.set_state(ckpt["rng"]["data"])
        say(prefix + f"resuming {cfg['model_type']} from {ckpt_path} at iter {iter_num}")
        del ckpt
    raw_model = model
    if cfg["compile"]:
        # static shapes: training's and evaluation's batches each keep one shape, and dynamo would otherwise
        # compile the training graph for any batch size once evaluation's (eval_group batches) differs
        model = torch.compile(model, mode=None if cfg["compile_mode"] == "default" else cfg["compile_mode"], dynamic=False)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[torch.device(device).index] if device_type == "cuda" else None)
    # compiled with CUDA graphs, each forward starts a new graph step (a no-op in the other modes)
    new_step = torch.compiler.cudagraph_mark_step_begin if cfg["compile"] else (lambda: None)
    # A backward replayed as a CUDA graph hands its gradients out in memory that the next replay reuses. A
    # .grad that is None takes that memory over, so the next micro-step would overwrite what it accumulates
    # (pytorch#169545): with several micro-steps the gradients stay allocated and each one is added in.
    keep_grads = cfg["compile"] and cfg["compile_mode"] == "reduce-overhead" and device_type == "cuda" and micro_steps > 1
    if keep_grads:
        for p in raw_model.parameters():
            p.grad = torch.zeros_like(p)
    autocast = torch.autocast(device_type=device_type, dtype=getattr(torch, dtype), enabled=dtype != "float32")
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
    # a dataset of whole sequences trains on its train split's width (MQAR's: 256), not on block_size
    train_len = data["train"]["inputs"].shape[1] if isinstance(data["train"], dict) else cfg["block_size"]
    tokens_per_iter = micro_steps * world * cfg["batch_size"] * train_len  # across all processes
    flops_per_iter = raw_model.estimate_flops_per_token(train_len) * tokens_per_iter
    peak = peak_flops(device_type)
    n_params = raw_model.get_num_params()
    say(prefix + f"{cfg['model_type']}: {n_params / 1e6:.2f}M parameters, {tokens_per_iter:,} tokens/iter, "
        f"device {device}{f' x {world} processes' if ddp else ''}, {dtype}, compile={cfg['compile']}, "
        f"kernels: {', '.join(raw_model.kernel_paths(device_type))}")
    tracker = Tracker(cfg if master else {}, cfg["wandb_run_name"] or cfg["model_type"], run_tags(cfg), group)

    def estimate_loss():
        model.eval()
        result = evaluate(model, data, cfg["batch_size"], cfg["block_size"], cfg["eval_iters"], cfg["seed"] + 1,
                          autocast, new_step, group=cfg["eval_group"], vocab_size=vocab_size, windows=cfg["eval_windows"])
        model.train()
        return result

    def metrics(status):
        val = [row[2] for row in curves["val"]]
        windows = sorted(timings[1:] if len(timings) > 1 else timings)  # the first window holds compilation
        ms = windows[len(windows) // 2] if windows else None
        m = {
            "status": status, "model_type": cfg["model_type"], "params": n_params, "iters": iter_num,
            "best_val_loss": best_val_loss if math.isfinite(best_val_loss) else None,
            **({"val_accuracy": curves["val_accuracy"][-1][1], "best_val_accuracy": max(a for _, a in curves["val_accuracy"]),
                "val_accuracy_by_slice": accuracy} if curves.get("val_accuracy") else {}),
            "final_val_loss": val[-1] if val else None,
            "final_train_loss": curves["val"][-1][1] if curves["val"] else None,
            "val_perplexity": math.exp(best_val_loss) if math.isfinite(best_val_loss) else None,
            "ms_per_iter": ms, "tokens_per_sec": tokens_per_iter / (ms / 1e3) if ms else None,
            "mfu": flops_per_iter / (ms / 1e3) / peak if ms and peak else None,
            "flops_per_iter": flops_per_iter, "kernel_path": raw_model.kernel_paths(device_type),
            "peak_memory_mib": (torch.cuda.max_memory_allocated(device) if device_type == "cuda"
                                else peak_rss_bytes()) / 2**20,
            "wall_time_s": time.time() - t_start, "device": device, "dtype": dtype, "gpu_share": cfg["gpu_share"],
            "config": cfg, "environment": env, "curves": curves,
        }
        if master:
            write_json(out / "metrics.json", m)
            write_csv(out / "losses.csv", ["iter", "loss", "lr"], curves["train"])
            write_csv(out / "eval.csv", ["iter", "train_loss", "val_loss", "seconds"], curves["val"])
        return m

    env = environment()
    # wall-clock seconds of the run so far, across resumes (older checkpoints' rows have no time)
    seconds_before = curves["val"][-1][3] if curves["val"] and len(curves["val"][-1]) > 3 else 0.0
    timings = []  # ms/iter over each stretch between log lines, evaluation excluded
    t_start = time.time()
    model.train()
    t0, steps, lossf = time.perf_counter(), 0, float("nan")
    while True:
        lr = lr_at(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if iter_num % cfg["eval_interval"] == 0 or iter_num == cfg["max_iters"]:
            losses = estimate_loss()
            recall = ""
            if isinstance(data["val"], dict):  # whole sequences with targets at some positions (MQAR): accuracy there
                model.eval()
                accuracy = recall_accuracy(raw_model, data["val"], cfg["batch_size"], autocast, vocab_size)
                model.train()
                curves.setdefault("val_accuracy", []).append([iter_num, accuracy["all"]])
                recall = f", val accuracy {accuracy['all']:.3f}"
            say(prefix + f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{recall}")
            if not (math.isfinite(losses["train"]) and math.isfinite(losses["val"])):
                tracker.finish(metrics("diverged"))
                raise TrainingDiverged(f"loss became {losses['val']} by iter {iter_num}; the last good checkpoint "
                                       f"is kept. Lower learning_rate (now {cfg['learning_rate']}) or raise warmup_iters")
            if not curves["val"] or curves["val"][-1][0] != iter_num:
                curves["val"].append([iter_num, losses["train"], losses["val"], seconds_before + time.time() - t_start])
            tracker.log({"train/loss": losses["train"], "val/loss": losses["val"], "lr": lr}, iter_num)
            if iter_num > 0 and (losses["val"] < best_val_loss or cfg["always_save_checkpoint"]):
                best_val_loss = min(best_val_loss, losses["val"])
                if master:
                    save_checkpoint(ckpt_path, raw_model, cfg["model_type"], optimizer, iter_num, best_val_loss, cfg,
                                    curves, data_gen)
            metrics("running")
            t0, steps = time.perf_counter(), 0
        if iter_num >= cfg["max_iters"]:
            break

        for micro in range(micro_steps):
            if ddp:  # gradients are averaged across processes once, on the last micro-step (nanoGPT's no_sync)
                model.require_backward_grad_sync = micro == micro_steps - 1
            X, Y = get_batch(data["train"], cfg["batch_size"], cfg["block_size"], data_gen)
            new_step()
            with autocast:
                _, loss = model(X, Y)
            scaler.scale(loss / micro_steps).backward()
        if cfg["grad_clip"] > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=not keep_grads)
        iter_num += 1
        steps += 1

        if iter_num % cfg["log_interval"] == 0:
            if ddp:  # the mean over processes of their last micro-batch's loss
                loss = loss.detach().clone()
                dist.all_reduce(loss)
                loss /= world
            lossf = loss.item()  # the one host sync of a logging stretch
            dt = (time.perf_counter() - t0) / steps
            timings.append(dt * 1e3)
            curves["train"].append([iter_num, lossf, lr])
            mfu = f", mfu {100 * flops_per_iter / dt / peak:.1f}%" if peak else ""
            say(prefix + f"iter {iter_num}: loss {lossf:.4f}, {dt * 1e3:.2f} ms/iter, {tokens_per_iter / dt:,.0f} tokens/s{mfu}")
            tracker.log({"train/loss_step": lossf, "ms_per_iter": dt * 1e3, "tokens_per_sec": tokens_per_iter / dt,
                         **({"mfu": flops_per_iter / dt / peak} if peak else {})}, iter_num)
            if not math.isfinite(lossf):
                tracker.finish(metrics("diverged"))
                raise TrainingDiverged(f"loss became {lossf} at iter {iter_num}; the last good checkpoint is kept. "
                                       f"Lower learning_rate (now {cfg['learning_rate']}) or raise warmup_iters")
            t0, steps = time.perf_counter(), 0

    m = metrics("done")
    tracker.finish(m)
    summary = (f"best val loss {m['best_val_loss']:.4f} (ppl {m['val_perplexity']:.2f}), {m['ms_per_iter']:.2f} ms/iter, "
               f"{m['tokens_per_sec']:,.0f} tokens/s, peak {m['peak_memory_mib']:.0f} MiB, {m['wall_time_s']:.0f} s"
               if m["ms_per_iter"] and m["best_val_loss"] is not None else f"after {iter_num} iters")
    say(prefix + f"done: {cfg['model_type']} {summary}")
    if ddp:
        dist.destroy_process_group()
    return m


def peak_rss_bytes():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# -----------------------------------------------------------------------------
# benchmarks: each takes a list of (name, settings), settings being a resolved config with a model_type

DECODE_TOKENS = 256  # bench_decode times this many steps, after
DECODE_WARMUP = 8  # these first new tokens: the prefill, eager warm-up steps and the CUDA-graph capture


def split(text, kind=str):
    return [kind(x) for x in str(text).split(",") if x.strip()]


def bench_specs(cfg):
    """(name, settings) for each model_type in --models. A family takes the values given for its keys;
    keys left unset (or at the model_type family's default) get its own default, or its preset."""
    specs = []
    main_defaults = family_fields(load_family(cfg["model_type"])[0])
    for name in split(cfg["models"] or cfg["model_type"]):
        module, presets = load_family(name)
        settings = dict(cfg, model_type=name)
        for key, default in family_fields(module).items():
            given = key in cfg and not (name != cfg["model_type"] and cfg[key] == main_defaults.get(key, object()))
            settings[key] = cfg[key] if given else presets.get(key, default)
        specs.append((name, settings))
    return specs


def build_for(settings, block_size, n_layer=None, vocab_size=65):
    module, _ = load_family(settings["model_type"])
    args = {k: settings[k] for k in family_fields(module) if k in settings}
    args.update(vocab_size=vocab_size, block_size=block_size, dropout=0.0)
    if n_layer is not None:
        args["n_layer"] = n_layer
    try:
        return module.GPT(module.GPTConfig(**args))
    except ValueError as e:
        raise UserError(f"invalid model configuration for {settings['model_type']}: {e}") from None


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


def bench_key(stage, name, settings, T, cfg):
    """What a benchmark row's number depends on, hashed: the model as built, the length, the batch, the
    repeats, the device and torch."""
    module, _ = load_family(settings["model_type"])
    trials = cfg["decode_trials" if stage == "bench_decode" else "trials"]
    what = {"stage": stage, "model": name, "T": T, "trials": trials, "seconds": cfg["trial_seconds"],
            "device": cfg["device"], "torch": torch.__version__,
            "tokens_per_batch": cfg["tokens_per_batch"] if stage != "bench_decode" else None,
            **{k: settings.get(k) for k in family_fields(module)}}
    if stage == "bench_decode":
        what["timing"] = "steady-state steps"  # rows of the first timing (a difference of two generate calls) are stale
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    atomic_write(out, lambda f: f.write(table.encode()))


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def bench(cfg, specs=None, warm=False):
    """Run cfg['stage'] (bench_layer, bench_decode or bench_memory) for each spec and each length;
    prints a row per measurement, writes <out_dir>/<stage>.json. Out-of-memory is a row, not a crash.
    warm: only each unmeasured row's warm-up call (its compilation), nothing measured or written."""
    stage, device = cfg["stage"], cfg["device"]
    trials, decode_trials = (0, 0) if warm else (cfg["trials"], cfg["decode_trials"])
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda")
    specs = specs or bench_specs(cfg)
    check_trackers(cfg)
    tracker = Tracker({} if warm else cfg, stage, {"task": "lm", "stage": stage})  # warm: no tracker either
    path = Path(cfg["out_dir"]) / f"{stage}.json"
    # rows already measured with the same settings are kept, so a killed benchmark resumes where it stopped
    # (profiling measures them again: the profile is what is asked for)
    kept = json.loads(path.read_text()).get("rows", []) if path.exists() and not cfg["profile"] else []
    done = {r["key"]: r for r in kept if "key" in r}
    rows, env = [], environment()
    for T in split(cfg["decode_lens" if stage == "bench_decode" else "seq_lens"], int):
        for name, settings in specs:
            key = bench_key(stage, name, settings, T, cfg)
            if key in done:
                rows.append(done[key])
                print(json.dumps(done[key]) + f"  (kept from {path})")
                continue
            row = {"model": name, "T": T, "key": key, "commit": env["git_commit"]}  # a kept row keeps its own
            started = time.perf_counter()
            if device_type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                if stage == "bench_layer":
                    m = build_for(settings, T, n_layer=1).to(device)
                    row["batch"] = B = max(1, cfg["tokens_per_batch"] // T)
                    attn = m.transformer.h[0].attn
                    x = torch.randn(B, T, settings["n_embd"], device=device, requires_grad=True)
                    pos = torch.arange(T, device=device)

                    def step():
                        with autocast:
                            y, _ = attn(x, pos)
                        y.float().sum().backward()
                elif stage == "bench_memory":  # one whole training step: forward, backward, AdamW
                    m = build_for(settings, T).to(device)
                    row["batch"] = B = max(1, cfg["tokens_per_batch"] // T)
                    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device_type)
                    idx = torch.randint(0, 65, (B, T), device=device)

                    def step():
                        with autocast:
                            _, loss = m(idx, idx)
                        loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                else:
                    m = build_for(settings, T + DECODE_WARMUP + DECODE_TOKENS).to(device).eval()
                    prompt = torch.randint(0, 65, (1, T), device=device)
                    with autocast:
                        row["ms_per_token"] = median_of(lambda: decode_ms_per_token(m, prompt, device_type),
                                                        decode_trials, cfg["trial_seconds"])
                if stage != "bench_decode":  # bench_layer's and bench_memory's step
                    row["ms"] = timed_median(step, device_type, trials, cfg["trial_seconds"])
                    if cfg["profile"] and not warm:
                        write_profile(step, path.parent / f"profile_{name}_{T}.txt", device_type)
                row["kernel_path"] = m.kernel_paths(device_type)
                if device_type == "cuda":
                    row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not is_oom(e):
                    raise
                row["status"] = "OOM"
            m = None  # free it before the next model
            row["wall_s"] = round(time.perf_counter() - started, 3)  # the row's whole cost: build, warm-up, repeats
            if warm:
                print(f"[{stage}] compiled {name} at {T} ({row['wall_s']} s{', ' + row['status'] if 'status' in row else ''})")
                continue
            rows.append(row)
            print(json.dumps(row))
            tracker.log({f"{name}/{k}": v for k, v in row.items() if k in ("ms", "ms_per_token", "peak_mib")}, T)
            write_json(path, {"stage": stage, "rows": with_others(rows, kept), "environment": env, "config": cfg})
    if warm:
        tracker.finish()
        return None
    result = {"stage": stage, "rows": with_others(rows, kept), "environment": env, "config": cfg}
    write_json(path, result)
    table = bench_table(stage, result["rows"], device_type)
    atomic_write(Path(cfg["out_dir"]) / f"{stage}.md", lambda f: f.write(table.encode()))
    print(table)
    tracker.artifacts([path])
    tracker.finish()
    return result


def with_others(rows, kept):
    """rows, then the kept rows of the (model, length) pairs they do not measure: a benchmark of one family
    adds to the bake-off's file, never empties it of the others, and a row measured again replaces its
    older self (a stale key's too)."""
    measured = {(r["model"], r["T"]) for r in rows}
    return [*rows, *(r for r in kept if (r["model"], r["T"]) not in measured)]


def markdown_table(header, rows):
    """The lines of a markdown table: header, rule, then one line per row of cells."""
    return ["| " + " | ".join(map(str, header)) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def bench_table(stage, rows, device_type):
    """A benchmark's rows as markdown: one line per model, one column per length (and peak MiB on CUDA)."""
    key, unit = ("ms_per_token", "ms/token, batch 1") if stage == "bench_decode" else ("ms", "ms, forward+backward" + (
        " + AdamW" if stage == "bench_memory" else ""))
    lens = sorted({r["T"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["T"]): r for r in rows}

    def show(r, k, spec):
        return "–" if r is None else r.get("status") or (format(r[k], spec) if k in r else "–")
    header = ["model", *(f"{t:,}" for t in lens)]
    lines = [f"{stage} ({unit}) by length", "",
             *markdown_table(header, ([m, *(show(cell.get((m, t)), key, ".3f") for t in lens)] for m in models))]
    if device_type == "cuda":
        lines += ["", "peak MiB", "",
                  *markdown_table(header, ([m, *(show(cell.get((m, t)), "peak_mib", ".0f") for t in lens)] for m in models))]
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# the sweep: every model of models_to_test, parameter-matched, at every learning rate and seed

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def model_config_path(name):
    if name.endswith(".py"):
        return Path(name)
    return CONFIG_DIR / ("train_shakespeare_char.py" if name == "vanilla" else f"train_shakespeare_char_{name}.py")


def model_settings(name, sweep_paths, raw):
    """A sweep entry's run config: its config file, with the sweep's files and command line on top."""
    path = model_config_path(name)
    if not path.is_file():
        raise UserError(f"no config for '{name}' ({path} is missing)")
    raw = {k: v for k, v in raw.items() if k not in ("model_type", "stage")}
    return configure(DEFAULTS, [str(path), *sweep_paths], raw_overrides=raw)


def count_params(settings):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return build(settings, dataset_vocab(settings["dataset"])).get_num_params()


def match_params(settings, target):
    """settings' own shape if its parameters are within 3% of target; else the closest of a small grid:
    the family's value head size or head size at its own width (where it has one), then (n_head, n_embd)
    around it.
    Ties go to the smallest change."""
    own = count_params(settings)
    if abs(own / target - 1) <= 0.03:
        return {}, own
    w, h = settings["n_embd"], settings["n_head"]
    candidates = [{"head_v_dim": d} for d in range(8, 2 * w // h + 1, 8) if "head_v_dim" in settings]
    candidates += [{"head_size": d} for d in range(2, 4 * w // h + 1, 2) if "head_size" in settings]
    candidates += [{"n_head": heads, "n_embd": width} for heads in sorted({h, 4, 6, 8})
                   for width in range(max(32, w // 2), 2 * w + 1, 2 * heads)]  # even head dims
    best = None
    for change in candidates:
        try:
            n = count_params(dict(settings, **change))
        except UserError:
            continue
        key = (abs(n - target) > 0.03 * target, "n_embd" in change, abs(n - target))  # in range, narrowest change, closest
        if best is None or key < best[0]:
            best = (key, change, n)
    if best is None or abs(best[2] / target - 1) > 0.03:
        raise UserError(f"no width within 3% of {target:,} parameters for {settings['model_type']} "
                        f"(closest {best[2] if best else own:,}): set target_params or the family's head sizes")
    return best[1], best[2]


def read_metrics(run_dir):
    """A run folder's metrics.json, or {} before its first evaluation."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def sweep_root(cfg):
    device_type = "cuda" if cfg["device"].startswith("cuda") else "cpu"
    return Path(cfg["sweep_dir"] or f"out-bakeoff-{device_type}")


def matched_specs(cfg, sweep_paths, raw):
    """Each model of models_to_test, parameter-matched: ({name: settings}, {name: why skipped}, the target,
    the matching table's rows)."""
    specs, skipped = {}, {}
    for name in split(cfg["models_to_test"]):
        try:
            specs[name] = model_settings(name, sweep_paths, raw)
        except UserError as e:  # a family not in this checkout yet: said, and the sweep goes on
            skipped[name] = str(e)
            print(f"[sweep] skipping {name}: {e}")
    if not specs:
        raise UserError("models_to_test names no model that can be built")
    for dataset in {settings["dataset"] for settings in specs.values()}:
        prepare_data(dataset)  # its meta.pkl holds the vocabulary that the parameter counts depend on
    target = cfg["target_params"] or count_params(specs.get("vanilla") or model_settings("vanilla", sweep_paths, raw))
    table = []
    for name, settings in specs.items():
        change, n = match_params(settings, target)
        settings.update(change)
        table.append({"model": name, "model_type": settings["model_type"], "n_layer": settings["n_layer"],
                      "n_head": settings["n_head"], "n_embd": settings["n_embd"], "params": n,
                      "off_target_pct": 100 * (n / target - 1), "changed": change})
    return specs, skipped, target, table


def sweep(cfg, sweep_paths=(), raw=None):
    """Train every (model, learning rate, seed); finished runs are skipped, interrupted ones resumed.

    Returns {name: matched settings} for the benchmarks. Writes <sweep_dir>/param_matching.{json,md}
    and <sweep_dir>/runs/<model>_lr<lr>_s<seed>/."""
    root, raw = sweep_root(cfg), dict(raw or {})
    check_trackers(cfg)
    specs, skipped, target, table = matched_specs(cfg, sweep_paths, raw)
    lines = markdown_table(["model", "layers", "heads", "width", "params", "off target"],
                           ([r["model"], r["n_layer"], r["n_head"], r["n_embd"], f"{r['params']:,}",
                             f"{r['off_target_pct']:+.1f}%{' (matched)' if r['changed'] else ''}"] for r in table))
    write_json(root / "param_matching.json", {"target": target, "rows": table, "skipped": skipped})
    atomic_write(root / "param_matching.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    if cfg["sweep_worker"] < 0:  # the sweep's own process says it; each of its workers matches again, silently
        print(f"[sweep] parameter matching, target {target:,}:\n" + "\n".join(lines))

    def sweep_run(name, lr, seed):  # (folder, model, description, settings), as train_runs takes a run
        return (run_folder(name, lr, seed), name, f"{name} lr={lr:g} seed={seed}",
                dict(specs[name], learning_rate=lr, min_lr=lr / 10, seed=seed))

    if cfg["sweep_worker"] < 0:  # the runs of these models that an earlier config trained and this one no
        # longer lists (its bracket went elsewhere, its extra seeds ran at another best rate) are set aside
        # too: the report counts every run of a model (results/h100-bakeoff kept DeltaNet's runs from before its retuning)
        earlier = []
        for name in specs:
            for out in root.glob(f"runs/{name}_lr*/"):
                c = read_metrics(out).get("config") or {}
                if "learning_rate" in c and "seed" in c and out.name == run_folder(name, c["learning_rate"], c["seed"]):
                    earlier.append(sweep_run(name, c["learning_rate"], c["seed"]))
        set_aside_changed(root, earlier, "sweep")
    seeds = split(cfg["seeds"], int)
    tried = bracketed_rounds(cfg, root, list(specs), lambda name, lr: [sweep_run(name, lr, seed) for seed in seeds],
                             lambda name, lrs: best_tried_lr(root, name, lrs, seeds), "sweep", sweep_paths, raw)
    if tried is None:
        return specs
    extra = [seed for seed in split(cfg["seeds_at_best"], int) if seed not in seeds]
    if extra:  # every round above is done here (a worker returns while its round has runs left)
        best = {name: best_tried_lr(root, name, tried[name], seeds) for name in specs}
        print("[sweep] seeds " + ",".join(map(str, extra)) + " at each model's best learning rate: "
              + ", ".join(f"{name} {lr:g}" for name, lr in best.items()))
        runs = [sweep_run(name, lr, seed) for name, lr in best.items() for seed in extra]
        train_runs(cfg, root, runs, "sweep", sweep_paths, raw)
    return specs


def bracketed_rounds(cfg, root, rows, runs_at, best_of, stage, sweep_paths, raw):
    """Train runs_at(row, lr) for every row (a model, or a model at a width) at each of learning_rates, then
    up to lr_bracket rounds, each one grid step past the rate best_of(row, rates tried) where it is an end.
    Returns {row: the rates tried}, or None for a worker whose round other workers are still training (the
    next round is decided once all of it is done)."""
    grid = split(cfg["learning_rates"], float)
    tried, new = {row: list(grid) for row in rows}, {row: grid for row in rows}
    for round_ in range(cfg["lr_bracket"] + 1):
        runs = [run for row, lrs in new.items() for lr in lrs for run in runs_at(row, lr)]
        pending = unfinished(root, runs)
        train_runs(cfg, root, runs, stage, sweep_paths, raw)
        if pending and cfg["sweep_worker"] >= 0:
            return None
        if round_ == cfg["lr_bracket"]:
            break
        new = {row: [lr] for row in rows if (lr := lr_beyond(best_of(row, tried[row]), tried[row], grid))}
        for row, (lr,) in new.items():
            tried[row].append(lr)
            what = f"{row[0]} d{row[1]}" if isinstance(row, tuple) else row  # (model, width) or a model
            print(f"[{stage}] {what}'s best learning rate is at an end of those tried: also {lr:g}")
        if not new:
            break
    return tried


FINISHED = ("done", "diverged", "oom", "failed")  # a run's status once it will not train any more


def unfinished(root, runs):
    return [folder for folder, *_ in runs if read_metrics(root / "runs" / folder).get("status") not in FINISHED]


def open_runs(root, runs):
    """(the models with a run begun or finished, [(k, run) that no worker has claimed or finished], and each
    model's training speed: the ms/iter that one of its runs has reported)."""
    begun, todo, speed = set(), [], {}
    for k, run in enumerate(runs, 1):
        out = root / "runs" / run[0]
        m, taken = read_metrics(out), (out / ".claimed").exists()
        if m or taken:
            begun.add(run[1])
        if m.get("ms_per_iter"):
            speed[run[1]] = m["ms_per_iter"]
        if not taken and m.get("status") not in FINISHED:
            todo.append((k, run))
    return begun, todo, speed


def claims(root, runs):
    """Yield (k, run) for a sweep worker, each claimed first (a file that no other worker can create too).
    First one run of each model that no worker has begun, in models_to_test order: every model so compiles
    early, while others train, and its later runs find it in the compile cache. (Each worker walking the runs
    from a model of its own, the three NSA runs began together at the end of the sweep and compiled for 70 s
    with the GPU idle: results/h100-bakeoff/timings.md.) Then the longest runs first, each priced at its
    iterations times its model's ms/iter so far, so that the sweep ends on short runs that finish together
    (in models_to_test order, two 205 s Gated DeltaProduct runs began with 293 and 258 s of the sweep left, and
    the last NSA run trained alone for 54 s: whole_14815e1). A model that has not reported a speed yet is
    still compiling its first run: its other runs come last, to find its kernels in the cache. (Time-sliced,
    this order slowed Gated DeltaProduct beside two NSA runs and was reverted, timed_c9dc26c; under MPS its
    runs kept their speed and the sweep's last three ended within 11-35 s of each other, whole_da7d487.)"""
    while True:
        begun, todo, speed = open_runs(root, runs)
        firsts = {}
        for k, run in todo:
            if run[1] not in begun:
                firsts.setdefault(run[1], (k, run))
        longest_first = sorted(todo, key=lambda kr: -speed.get(kr[1][1], 0) * kr[1][3].get("max_iters", 1))
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


def sweep_eta(root, runs, workers):
    """Minutes until the runs are finished, or None before any has: each unfinished run (one in progress
    too) priced at the mean wall time of its model's finished runs, or of all finished runs where its model
    has none yet, shared by the workers. (Pricing every run alike said 1.3 min with NSA's and Gated
    DeltaProduct's six runs, 3-5 minutes each, still to go: results/h100-bakeoff/timings.md.)"""
    done, todo = {}, []
    for folder, model, _, _ in runs:
        m = read_metrics(root / "runs" / folder)
        if m.get("status") == "done" and m.get("wall_time_s"):
            done.setdefault(model, []).append(m["wall_time_s"])
        elif m.get("status") not in FINISHED:
            todo.append(model)
    if not done:
        return None
    every = [t for times in done.values() for t in times]
    price = {model: sum(times) / len(times) for model, times in done.items()}
    return sum(price.get(model, sum(every) / len(every)) for model in todo) / workers / 60


def run_folder(name, lr, seed):
    return f"{name}_lr{lr:g}_s{seed}"


def lr_beyond(best, tried, grid):
    """One grid step past the end of `tried` where `best` (the best of them) is, or None when it is inside.
    With a single-value grid there is no step to take."""
    if len(grid) < 2:
        return None
    step = (max(grid) / min(grid)) ** (1 / (len(grid) - 1))
    return best / step if best == min(tried) else best * step if best == max(tried) else None


def best_tried_lr(root, name, tried, seeds):
    """The learning rate of `tried` with the lowest best val loss, mean over seeds (a run that did not
    finish counts as worst); ties go to the smaller rate."""
    def score(lr):
        ms = [read_metrics(root / "runs" / run_folder(name, lr, seed)) for seed in seeds]
        return sum(m["best_val_loss"] if m.get("status") == "done" else math.inf for m in ms) / len(ms)
    return min(sorted(tried), key=score)


# settings that choose how a run's function is computed, not which: a run trained with other values stands
KERNEL_KEYS = {"attn_impl", "chunk_size", "scan_from", "use_fla", "linear_fla", "use_flex", "use_triton"}
# what makes a run's result besides its family's model fields
TRAINING_KEYS = ("model_type", "dataset", "batch_size", "gradient_accumulation_steps", "learning_rate", "max_iters",
                 "lr_decay_iters", "warmup_iters", "min_lr", "decay_lr", "weight_decay", "beta1", "beta2", "grad_clip", "seed")


def changed_settings(old, new):
    """{key: (old, new)} for the settings that make a run's result (its family's model fields bar the kernel
    switches, and the training keys) where a run's recorded config `old` differs from `new`. A key the run
    did not record (it came later) counts as its default; lr_decay_iters 0 means max_iters."""
    family = family_fields(load_family(new["model_type"])[0])
    keys = [*TRAINING_KEYS, *sorted(set(family) - KERNEL_KEYS)]

    def value(c, k):
        v = c.get(k, family.get(k, DEFAULTS.get(k)))
        return (v or c.get("max_iters")) if k == "lr_decay_iters" else v
    pairs = {k: (value(old, k), value(new, k)) for k in keys}
    return {k: (a, b) for k, (a, b) in pairs.items() if a != b}


def set_aside_changed(root, runs, stage):
    """Moves each run folder whose recorded config differs from the run's settings now (a family's config
    was changed since it trained) to <root>/replaced/, so that it is trained again and nothing is lost."""
    for folder, _, _, settings in runs:
        out = root / "runs" / folder
        old = read_metrics(out).get("config")
        change = old and changed_settings(old, settings)
        if not change:
            continue
        to = root / "replaced" / folder
        n = 1
        while to.exists():
            n += 1
            to = root / "replaced" / f"{folder}.{n}"
        to.parent.mkdir(parents=True, exist_ok=True)
        out.rename(to)
        print(f"[{stage}] {folder} was trained with " + ", ".join(f"{k}={a!r}" for k, (a, _) in change.items())
              + " (now " + ", ".join(f"{b!r}" for _, b in change.values()) + f"): moved to {to}, to train again")


def train_runs(cfg, root, runs, stage, sweep_paths, raw):
    """Train each run, a (folder, model, description, settings), into <root>/runs/<folder>/. Finished runs
    (done, diverged, out of memory, failed) are skipped and interrupted ones resumed from their checkpoint.
    With several workers (sweep_workers, or runs_per_gpu per visible GPU) this process starts them, as
    `--stage=<stage>`, and waits; a worker (sweep_worker >= 0) claims each run before it trains it."""
    workers = cfg["sweep_workers"] or (len(visible_gpus()) * cfg["runs_per_gpu"] if cfg["device"].startswith("cuda") else 1)
    if cfg["sweep_worker"] < 0:  # the data is there (prepared now if it can be), before any run or worker starts
        set_aside_changed(root, runs, stage)
        for dataset, block_size in sorted({(s["dataset"], s["block_size"]) for _, _, _, s in runs}):
            load_tokens(dataset, block_size, "cpu")
    if workers > 1 and cfg["sweep_worker"] < 0 and unfinished(root, runs):
        spread(cfg, root, runs, sweep_paths, raw, workers, stage)
        return
    failures = []
    for k, (folder, model, what, settings) in claims(root, runs) if cfg["sweep_worker"] >= 0 else enumerate(runs, 1):
        out = root / "runs" / folder
        prior = read_metrics(out)
        if prior.get("status") in FINISHED:  # (a worker's claim: another finished it between look and claim)
            print(f"[{stage}] run {k}/{len(runs)}: {folder} already {prior['status']}, skipped")
            (out / ".claimed").unlink(missing_ok=True)
            continue
        eta = sweep_eta(root, runs, workers if cfg["sweep_worker"] >= 0 else 1)
        eta = f", {stage} ETA {eta:.1f} min" if eta is not None else ""
        resume = (out / "ckpt.pt").exists()
        print(f"[{stage}] run {k}/{len(runs)}: {what}{' (resuming)' if resume else ''}{eta}")
        run_cfg = dict(settings, out_dir=str(out), stage="train", init_from="resume" if resume else "scratch",
                       always_save_checkpoint=True, wandb_run_name=folder)
        try:
            run(run_cfg, prefix=f"[{k}/{len(runs)} {model}] ", group=root.name)
        except TrainingDiverged as e:  # metrics.json already says 'diverged'
            print(f"[{stage}] {folder} diverged: {e}")
        except UserError:
            raise  # bad input stops the whole job with its one line, before this run writes anything
        except Exception as e:  # out of memory, or a crash (a kernel's error, a bug): recorded,
            # with the traceback, and the sweep goes on to the other runs; delete the folder to try it again
            status, line = "oom" if is_oom(e) else "failed", f"{type(e).__name__}: {e}".strip().splitlines()[0]
            write_json(out / "metrics.json", dict(prior, status=status, error=line,
                                                  model_type=settings["model_type"], config=run_cfg))
            atomic_write(out / "error.log", lambda f: f.write(traceback.format_exc().encode()))
            failures.append(folder)
            print(f"[{stage}] {folder}: {status}: {line} (traceback in {out / 'error.log'})")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        (out / ".claimed").unlink(missing_ok=True)
    if failures:
        print(f"[{stage}] {len(failures)} run(s) did not finish: {', '.join(failures)}; each folder's metrics.json "
              "and error.log say why, and a re-run skips them until their folder is deleted")


def visible_gpus():
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (all of them when it is unset)."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    return split(named) if named is not None else [str(i) for i in range(torch.cuda.device_count())]


def deal(workers, gpus):
    """Each worker's GPU: round-robin, so that the GPUs carry as even a share as the count allows."""
    if not gpus:
        raise UserError("device is cuda but CUDA_VISIBLE_DEVICES leaves no GPU for the sweep's workers")
    return [gpus[i % len(gpus)] for i in range(workers)]


def spread(cfg, root, runs, sweep_paths, raw, workers, stage):
    """Run a stage's runs as `workers` processes dealt round-robin over the visible GPUs (CUDA_VISIBLE_DEVICES),
    each taking the next run no other has claimed; wait for all of them. Claims left by a killed sweep
    are cleared first."""
    for claim in root.glob("runs/*/.claimed"):
        claim.unlink()
    args = [*sweep_paths, *(f"--{k}={v}" for k, v in raw.items()
                            if k not in ("stage", "sweep_worker", "sweep_workers", "gpu_share"))]
    gpus = deal(workers, visible_gpus()) if cfg["device"].startswith("cuda") else [None] * workers
    shared_gpu = gpus[0] is not None and max(map(gpus.count, gpus)) > 1
    with mps_daemon(cfg["mps"] and shared_gpu, stage) as mps_env:

        def start(gpu, *more):  # this script with the sweep's arguments and `more`, on that GPU
            env = dict(os.environ, **mps_env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
            return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args, *more], env=env)

        procs = [start(gpu, f"--stage={stage}", f"--sweep_worker={i}", f"--sweep_workers={workers}",
                       f"--gpu_share={gpus.count(gpu) if gpu is not None else 1}") for i, gpu in enumerate(gpus)]
        print(f"[{stage}] {workers} workers started" + (f" on GPU(s) {', '.join(sorted(set(gpus)))}" if gpus[0] else ""))
        warm = None
        if cfg["stage"] == "bakeoff" and cfg["warm_benchmarks"]:
            warm = start(gpus[0], "--stage=warm_benchmarks")
            print(f"[{stage}] the benchmarks compile beside the runs, at a lower CPU priority")
            cfg["warm_benchmarks"] = False  # once a job: a later round (a bracket, more seeds) finds them compiled
        for p in procs:
            p.wait()
        if warm is not None and warm.wait() != 0:  # only a cache was lost: the benchmarks compile for themselves
            print(f"[{stage}] compiling the benchmarks ahead failed (its output is above); they will compile as they run")
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise UserError(f"{stage} worker(s) {failed} failed (their output is above); re-run to resume")


MPS_CONTROL = "nvidia-cuda-mps-control"


@contextlib.contextmanager
def mps_daemon(wanted, stage):
    """Yields the environment that makes a process a client of an NVIDIA MPS daemon of this user's, started
    here in a pipe directory of its own (no other process on the machine joins it) and quit on leaving; a
    daemon already running there (a killed sweep's) is joined and left running. Yields {} where MPS is not
    wanted, its control program is not installed, or it does not start: the workers then time-slice the GPU."""
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


# -----------------------------------------------------------------------------
# the bake-off report: tables and plots from the sweep's files

def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0


def fmt(x, spec=".4f"):
    return "–" if x is None else format(x, spec)


def run_name(metrics):
    return Path(metrics["config"]["out_dir"]).name.rsplit("_lr", 1)[0]


def report(cfg):
    """<sweep_dir>/bakeoff.json, bakeoff.md and plots/*.png from runs/, param_matching.json and the
    bench_decode / bench_memory JSON that the bake-off wrote there."""
    root = sweep_root(cfg)
    order = {name: i for i, name in enumerate(split(cfg["models_to_test"]))}  # the table follows models_to_test
    runs = sorted((json.loads(p.read_text()) for p in root.glob("runs/*/metrics.json")),
                  key=lambda m: (order.get(run_name(m), len(order)), run_name(m), m["config"]["learning_rate"]))
    if not runs:
        raise UserError(f"no runs under {root}/runs: run the sweep first (--stage=sweep)")
    matching = json.loads((root / "param_matching.json").read_text()) if (root / "param_matching.json").exists() else {}
    params = {r["model"]: r["params"] for r in matching.get("rows", [])}
    bench_files = {s: json.loads((root / f"{s}.json").read_text()) for s in ("bench_decode", "bench_memory")
                   if (root / f"{s}.json").exists()}
    benches = {s: f["rows"] for s, f in bench_files.items()}
    by_model = {}
    for m in runs:
        by_model.setdefault(run_name(m), []).append(m)

    def by_length(stage, key, name):  # {T: value, or the row's status such as 'OOM'} of one model in a benchmark
        return {str(r["T"]): r.get(key, r.get("status")) for r in benches.get(stage, []) if r["model"] == name}

    models = {}
    for name, ms in by_model.items():
        by_lr = {}
        for m in ms:
            by_lr.setdefault(m["config"]["learning_rate"], []).append(m)
        # rates are compared on the seeds they all have (seeds_at_best trains more seeds at the best one
        # only), then the chosen rate is reported over all of its seeds
        common = set.intersection(*({m["config"]["seed"] for m in group} for group in by_lr.values()))
        lr_best = {lr: mean_std([m.get("best_val_loss") for m in group if m["config"]["seed"] in common])[0]
                   for lr, group in by_lr.items()}
        finite = {lr: v for lr, v in lr_best.items() if v is not None}
        best_lr = min(finite, key=finite.get) if finite else None
        group = by_lr.get(best_lr, [])
        best, best_sd = mean_std([m.get("best_val_loss") for m in group])
        final, final_sd = mean_std([m.get("final_val_loss") for m in group])
        models[name] = {
            "params": params.get(name, group[0].get("params") if group else None), "best_lr": best_lr,
            # the best at an end of the learning rates tried is not known to be the model's best: said in the table
            "best_lr_at_edge": len(by_lr) > 1 and best_lr in (min(by_lr), max(by_lr)),
            "best_val_loss": best, "best_val_loss_std": best_sd, "final_val_loss": final, "final_val_loss_std": final_sd,
            "val_perplexity": math.exp(best) if best is not None else None, "seeds": len(group),
            "tokens_per_sec": mean_std([m.get("tokens_per_sec") for m in group])[0],
            "mfu": mean_std([m.get("mfu") for m in group])[0],
            "gpu_share": max((m.get("gpu_share", 1) for m in group), default=1),
            "kernel_path": sorted({p for m in ms for p in m.get("kernel_path") or []}),
            "status": {s: sum(m["status"] == s for m in ms) for s in sorted({m["status"] for m in ms})},
            "lr_sweep": {str(lr): v for lr, v in sorted(lr_best.items())},
            "ms_per_token": by_length("bench_decode", "ms_per_token", name),
            "peak_mib": by_length("bench_memory", "peak_mib", name), "step_ms": by_length("bench_memory", "ms", name),
        }
    env = made_in([m.get("environment", {}) for m in runs],
                  [r.get("commit", f["environment"].get("git_commit")) for f in bench_files.values() for r in f["rows"]])
    write_json(root / "bakeoff.json", {"models": models, "environment": env, "param_matching": matching})
    write_report_md(root, models, env)
    plot_report(root, by_model, models, benches)
    check_trackers(cfg)
    tracker = Tracker(cfg, f"bakeoff-{root.name}", {"task": "lm", "stage": "report"}, group=root.name)
    tracker.text("bakeoff", (root / "bakeoff.md").read_text())
    tracker.artifacts([root / "bakeoff.md", root / "bakeoff.json", *sorted((root / "plots").glob("*.png"))])
    tracker.finish()
    print((root / "bakeoff.md").read_text())
    return models


def shared(m):
    """' (GPU shared by N)' for a run (or a model's runs) that shared its GPU with other sweep workers: its
    speed is its share of the GPU; '' otherwise."""
    return f" (GPU shared by {m['gpu_share']})" if m.get("gpu_share", 1) > 1 else ""


def made_in(envs, commits=()):
    """The environment a report's runs were made in (the first run's), not the report's own, naming every
    commit among them and `commits` (a job made in parts may span several), abbreviated as git does."""
    names = {e.get("git_commit") for e in envs} | set(commits)
    names = sorted({re.sub("^([0-9a-f]{7})[0-9a-f]{33}", r"\1", c) for c in names if c})
    return dict(envs[0] if envs else {}, git_commit=", ".join(names))


def hardware(env):
    return (f"Hardware: {env.get('gpu') or 'CPU (' + str(env.get('cpu_threads')) + ' threads)'}; torch {env.get('torch')}, "
            f"triton {env.get('triton', '–')}, commit {env.get('git_commit')}")


def write_report_md(root, models, env):
    lines = [f"# Bake-off: {root}", "",
             f"{hardware(env)}. Made by `python train_runner.py` "
             "(stage bakeoff); each run's config is in runs/*/metrics.json.", ""]
    lines += markdown_table(
        ["model", "params", "best LR", "best val (± std)", "final val", "ppl", "seeds", "tokens/s", "MFU", "kernels", "runs"],
        ([name, fmt(m["params"], ","), fmt(m["best_lr"], ".3g") + (" (edge)" if m.get("best_lr_at_edge") else ""),
          fmt(m["best_val_loss"]) + (f" ± {m['best_val_loss_std']:.4f}" if m["seeds"] > 1 else ""),
          fmt(m["final_val_loss"]), fmt(m["val_perplexity"], ".2f"), m["seeds"], fmt(m["tokens_per_sec"], ",.0f") + shared(m),
          fmt(m["mfu"] and 100 * m["mfu"], ".1f") + ("%" if m["mfu"] else ""), ", ".join(m["kernel_path"]),
          ", ".join(f"{v} {k}" for k, v in m["status"].items())] for name, m in models.items()))
    if any(m.get("best_lr_at_edge") for m in models.values()):
        lines += ["", "(edge): the best of the learning rates tried is the lowest or highest of them, so the model's "
                  "own best may lie beyond; `lr_bracket` extends the grid there."]
    for key, title, spec in (("ms_per_token", "Decoding, ms/token at batch 1, by context length", ".3f"),
                             ("step_ms", "One training step (fwd+bwd+AdamW), ms, by sequence length", ".1f"),
                             ("peak_mib", "Peak memory of that step, MiB, by sequence length", ".0f")):
        lens = sorted({int(t) for m in models.values() for t in m[key]})
        if key == "peak_mib" and not any(isinstance(v, float) for m in models.values() for v in m[key].values()):
            lines += ["", "Peak memory is measured on CUDA only (torch has no allocator statistics for the CPU)."]
            continue
        if not lens:
            continue
        cells = {name: [m[key].get(str(t)) for t in lens] for name, m in models.items()}
        lines += ["", f"## {title}", "", *markdown_table(
            ["model", *(f"{t:,}" for t in lens)],
            ([name, *(c if isinstance(c, str) else fmt(c, spec) for c in row)] for name, row in cells.items()))]
    atomic_write(root / "bakeoff.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))


def pyplot():
    """matplotlib's pyplot on its file backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path):
    """Write a matplotlib figure atomically and close it."""
    plt = pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_report(root, by_model, models, benches):
    plt = pyplot()

    def save(fig, name):
        save_png(fig, root / "plots" / name)

    best_runs = {name: next((m for m in by_model[name] if m["config"]["learning_rate"] == models[name]["best_lr"]), None)
                 for name in models}
    best_runs = {k: v for k, v in best_runs.items() if v and v.get("curves", {}).get("val")}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in best_runs.items():
        a.plot([r[0] for r in m["curves"]["train"]], [r[1] for r in m["curves"]["train"]], label=name)
        b.plot([r[0] for r in m["curves"]["val"]], [r[2] for r in m["curves"]["val"]], label=name)
    for ax, title in ((a, "train loss"), (b, "val loss")):
        ax.set(xlabel="iteration", title=f"{title} (best LR, first seed)")
        ax.legend(fontsize=8)
    save(fig, "loss_curves.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [n for n in models if models[n]["best_val_loss"] is not None]
    best = [models[n]["best_val_loss"] for n in names]
    ax.bar(names, best, yerr=[models[n]["best_val_loss_std"] for n in names], capsize=4)
    ax.set(ylabel="best val loss (mean ± std over seeds)", ylim=(min(best or [0]) * 0.95, None))
    ax.tick_params(axis="x", rotation=30)
    save(fig, "final_val_loss.png")

    for name_png, xkey, xlabel in (("ppl_vs_flops.png", "flops", "training FLOPs"),
                                   ("ppl_vs_wallclock.png", "seconds", "wall-clock seconds")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, m in best_runs.items():
            rows = [r for r in m["curves"]["val"] if r[0] > 0 and (xkey == "flops" or len(r) > 3)]
            xs = [r[0] * m["flops_per_iter"] if xkey == "flops" else r[3] for r in rows]
            ax.plot(xs, [math.exp(r[2]) for r in rows], marker=".", label=name + (shared(m) if xkey == "seconds" else ""))
        ax.set(xlabel=xlabel, ylabel="val perplexity", xscale="log" if xkey == "flops" else "linear")
        ax.legend(fontsize=8)
        save(fig, name_png)

    for stage, key, png, ylabel in (("bench_decode", "ms_per_token", "latency_vs_context.png", "ms/token (batch 1)"),
                                    ("bench_memory", "peak_mib", "memory_vs_T.png", "peak MiB, one training step")):
        rows = benches.get(stage, [])
        if not any(key in r for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in dict.fromkeys(r["model"] for r in rows):
            pts = [(r["T"], r[key]) for r in rows if r["model"] == name and key in r]
            ax.plot(*zip(*pts), marker="o", label=name)
            ooms = [r["T"] for r in rows if r["model"] == name and r.get("status") == "OOM"]
            if ooms:
                ax.scatter(ooms, [max(p[1] for p in pts)] * len(ooms), marker="x", color="red")
        xlabel = "context / sequence length"
        tokens = sorted({r["batch"] * r["T"] for r in rows if "batch" in r})
        if len(tokens) > 1:  # past tokens_per_batch the batch stays 1, so a step carries more tokens there
            xlabel += f" ({tokens[0]:,} tokens per step; up to {tokens[-1]:,} where the batch is 1)"
        ax.set(xlabel=xlabel, ylabel=ylabel, xscale="log", yscale="log" if key == "peak_mib" else "linear")
        ax.legend(fontsize=8)
        save(fig, png)

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, m in models.items():
        pts = sorted((float(lr), v) for lr, v in m["lr_sweep"].items() if v is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set(xlabel="learning rate", ylabel="best val loss", xscale="log")
    ax.legend(fontsize=8)
    save(fig, "lr_sweep.png")


# -----------------------------------------------------------------------------
# looking inside a model: evaluation of a checkpoint, attention maps, head ablation

def map_kind(att, tol=1e-3):
    """What a map's rows are: 'distribution' (each sums to 1: softmax, normalised linear attention),
    'weights' (non-negative, other sums: NSA's gated sum of three distributions, each row summing to its
    gates) or 'signed' (the delta rule's implied map, a mixing matrix with negative entries)."""
    if att.min() < -tol:
        return "signed"
    return "distribution" if (att.sum(-1) - 1).abs().max() <= tol else "weights"


def as_distribution(att):
    """Non-negative rows scaled to sum to 1 (a row of no weight stays 0): where a layer reads, for entropy
    and distance."""
    total = att.sum(-1, keepdim=True)
    return torch.where(total > 0, att / total.clamp_min(1e-12), att)


def attention_entropy(att):
    """[..., T, T] rows that are distributions -> mean entropy per row, in nats, over the rows: [...]."""
    p = att.clamp_min(0)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean(-1)


def attention_distance(att):
    """Mean distance i - j under each row's weights, averaged over rows: [...]."""
    T = att.shape[-1]
    i = torch.arange(T, device=att.device)
    return (att * (i[:, None] - i[None, :]).clamp_min(0)).sum(-1).mean(-1)


def local_ratio(att, window):
    """Share of each row's weight on the last `window` positions (itself included), averaged over rows."""
    T = att.shape[-1]
    i = torch.arange(T, device=att.device)
    near = ((i[:, None] - i[None, :]) < window) & (i[None, :] <= i[:, None])
    return (att * near).sum(-1).mean(-1)


class ablated:
    """with ablated(model, layer, head): that head's output is zero (head=None: the layer's whole attention)."""

    def __init__(self, model, layer, head=None):
        self.attn, self.head, self.n_head = model.transformer.h[layer].attn, head, model.config.n_head

    def _zero_head(self, module, args):  # c_proj's input is the heads side by side: [B, T, H·Dv]
        x = args[0].unflatten(-1, (self.n_head, -1)).clone()
        x[..., self.head, :] = 0
        return (x.flatten(-2),)

    def __enter__(self):
        if self.head is None:
            self.hook = self.attn.register_forward_hook(lambda m, a, out: (torch.zeros_like(out[0]), out[1]))
        else:
            self.hook = self.attn.c_proj.register_forward_pre_hook(self._zero_head)
        return self

    def __exit__(self, *exc):
        self.hook.remove()


def load_for_analysis(ckpt_path, device, dataset=None):
    """(model in eval mode, checkpoint, data) for a checkpoint, on its own dataset unless told another."""
    ckpt = read_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path).to(device).eval()
    dataset = dataset or ckpt["config"]["dataset"]
    vocab = dataset_vocab(dataset)
    if vocab != model.config.vocab_size:
        raise UserError(f"dataset '{dataset}' has {vocab} tokens but {ckpt_path} was trained on {model.config.vocab_size}")
    return model, ckpt, load_tokens(dataset, model.config.block_size, device)


def eval_checkpoint(cfg, dataset=None):
    """Val (and train) loss of a checkpoint with the evaluation its training used: same batch size,
    context, number of batches and batch seed. Writes eval_<dataset>.json beside the checkpoint."""
    path = Path(cfg["ckpt_path"] or Path(cfg["out_dir"]) / "ckpt.pt")
    model, ckpt, data = load_for_analysis(path, cfg["device"], dataset)
    c = ckpt["config"]
    losses = evaluate(model, data, c["batch_size"], c["block_size"], c["eval_iters"], c["seed"] + 1, contextlib.nullcontext(),
                      group=cfg["eval_group"], vocab_size=model.config.vocab_size, windows=c.get("eval_windows", 0))
    result = {"checkpoint": str(path), "model_type": ckpt["model_type"], "iter": ckpt["iter_num"],
              "dataset": dataset or c["dataset"], "val_loss": losses["val"], "train_loss": losses["train"],
              "val_perplexity": math.exp(losses["val"]), "best_val_loss_at_training": ckpt["best_val_loss"],
              "environment": environment()}
    write_json(path.parent / f"eval_{result['dataset']}.json", result)
    print(f"{path}: {ckpt['model_type']} at iter {ckpt['iter_num']}, {result['dataset']}: val loss {losses['val']:.4f} "
          f"(ppl {result['val_perplexity']:.2f}), train loss {losses['train']:.4f}")
    return result


def inspect_targets(cfg):
    """{name: checkpoint} to inspect: ckpt_path, else out_dir/ckpt.pt, else the best run of each sweep model."""
    if cfg["ckpt_path"]:
        return {Path(cfg["ckpt_path"]).parent.name: Path(cfg["ckpt_path"])}
    if (Path(cfg["out_dir"]) / "ckpt.pt").exists():
        return {Path(cfg["out_dir"]).name: Path(cfg["out_dir"]) / "ckpt.pt"}
    best = {}
    for p in sweep_root(cfg).glob("runs/*/metrics.json"):
        m = json.loads(p.read_text())
        if m.get("best_val_loss") is not None and (p.parent / "ckpt.pt").exists():
            name = run_name(m)
            if name not in best or m["best_val_loss"] < best[name][0]:
                best[name] = (m["best_val_loss"], p.parent / "ckpt.pt")
    if not best:
        raise UserError(f"nothing to inspect: no --ckpt_path, no {cfg['out_dir']}/ckpt.pt, "
                        f"no checkpoints under {sweep_root(cfg)}/runs")
    order = {n: i for i, n in enumerate(split(cfg["models_to_test"]))}
    return {name: best[name][1] for name in sorted(best, key=lambda n: (order.get(n, len(order)), n))}


def inspect(cfg, dataset=None):
    """Attention maps, entropy, distance and head ablation of one checkpoint or each sweep model's best,
    as PNGs and JSON in <folder>/inspect/ (folder: the checkpoint's, or the sweep's)."""
    plt = pyplot()
    env = environment()  # before this writes anything: its own files would mark the checkout dirty

    targets = inspect_targets(cfg)
    single = cfg["ckpt_path"] or (Path(cfg["out_dir"]) / "ckpt.pt").exists()
    folder = (next(iter(targets.values())).parent if single else sweep_root(cfg)) / "inspect"
    found, summary = {}, {}
    for name, path in targets.items():
        model, ckpt, data = load_for_analysis(path, cfg["device"], dataset)
        encode, _ = codec(ckpt)
        ids = encode(cfg["text"])[: model.config.block_size]
        if not ids:
            raise UserError("--text is empty: give some text to look at")
        idx = torch.tensor([ids], device=cfg["device"])
        with torch.no_grad():
            _, _, maps = model(idx, return_attn=True)
        maps = [None if a is None else a[0].float().cpu() for a in maps]  # per layer [H, T, T]
        kinds = [None if a is None else map_kind(a) for a in maps]
        # where a layer reads (entropy, distance) is defined for non-negative maps, not for signed ones
        reads = [as_distribution(a) if k in ("distribution", "weights") else None for a, k in zip(maps, kinds)]
        c = ckpt["config"]

        def val_loss():  # over ablation_iters of the batches its training evaluated on
            return evaluate(model, data, c["batch_size"], c["block_size"], cfg["ablation_iters"], c["seed"] + 1,
                            contextlib.nullcontext(), splits=("val",), group=cfg["eval_group"],
                            vocab_size=model.config.vocab_size)["val"]
        base = val_loss()
        L, H = model.config.n_layer, model.config.n_head
        increase = torch.zeros(L, H + 1)
        for layer in range(L):
            for head in [*range(H), None]:
                with ablated(model, layer, head):
                    increase[layer, H if head is None else head] = val_loss() - base
        found[name] = (maps, kinds, increase, ids)
        summary[name] = {
            "checkpoint": str(path), "model_type": ckpt["model_type"], "val_loss": base, "map_kinds": kinds,
            "entropy": [attention_entropy(a).tolist() if a is not None else None for a in reads],
            "distance": [attention_distance(a).mean().item() if a is not None else None for a in reads],
            "local_ratio": [local_ratio(a, cfg["local_window"]).mean().item() if a is not None else None for a in reads],
            "ablation_val_loss_increase": {"per_head": increase[:, :H].tolist(), "whole_layer": increase[:, H].tolist()},
        }
        print(f"[inspect] {name}: val loss {base:.4f}; the head that matters most: layer "
              f"{int(increase[:, :H].argmax()) // H}, head {int(increase[:, :H].argmax()) % H} "
              f"(+{increase[:, :H].max():.4f} without it)")

    def save(fig, png):
        save_png(fig, folder / png)

    def no_map(ax, why):
        ax.text(0.5, 0.5, textwrap.fill(why, 28), ha="center", va="center", fontsize=7)
        ax.set_axis_off()

    def show(ax, a, kind):  # a signed map gets a diverging scale centred on 0
        m = a.abs().max().item() or 1.0
        ax.imshow(a, cmap="RdBu_r", vmin=-m, vmax=m) if kind == "signed" else ax.imshow(a, cmap="viridis")

    notes = {"distribution": "", "weights": "\n(gated: rows sum to the gates)", "signed": "\n(signed mixing, not a distribution)"}

    names = list(found)
    L = max(len(found[n][0]) for n in names)
    fig, axes = plt.subplots(len(names), L, figsize=(2.2 * L, 2.3 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        maps, kinds = found[name][0], found[name][1]
        for layer in range(L):
            ax = axes[r][layer]
            if layer >= len(maps) or maps[layer] is None:
                no_map(ax, "no attention map")
                continue
            show(ax, maps[layer].mean(0), kinds[layer])
            ax.set_title(f"{name} L{layer}" + notes[kinds[layer]], fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    save(fig, "attention_patterns.png")
    for name in names:  # every head of every layer, one file per model
        maps, kinds = found[name][0], found[name][1]
        H = max(a.shape[0] for a in maps if a is not None)
        fig, axes = plt.subplots(len(maps), H, figsize=(1.6 * H, 1.6 * len(maps)), squeeze=False)
        for layer, a in enumerate(maps):
            for h in range(H):
                if a is None:
                    no_map(axes[layer][h], "no map")
                    continue
                show(axes[layer][h], a[h], kinds[layer])
                axes[layer][h].set_title(f"L{layer} H{h}", fontsize=6)
                axes[layer][h].set_axis_off()
        save(fig, f"attention_patterns_{name}.png")

    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        ent = summary[name]["entropy"]
        if not all(e is not None for e in ent):
            no_map(ax, f"{name}: its maps are signed (the delta rule's implied map is a mixing matrix), so "
                       "attention entropy is not defined")
            continue
        im = ax.imshow(torch.tensor(ent), cmap="magma")
        gated = "weights" in summary[name]["map_kinds"]
        ax.set(title=f"{name}: entropy (nats{', rows normalised' if gated else ''})", xlabel="head", ylabel="layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    save(fig, "attention_entropy.png")

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in names:
        if all(d is not None for d in summary[name]["distance"]):
            a.plot(summary[name]["distance"], marker="o", label=name)
            b.plot(summary[name]["local_ratio"], marker="o", label=name)
    a.set(xlabel="layer", ylabel="mean attention distance (tokens)")
    b.set(xlabel="layer", ylabel=f"weight within the last {cfg['local_window']} tokens")
    for ax in (a, b):
        ax.legend(fontsize=8)
    fig.suptitle("signed maps (the delta rule) are left out; gated ones (NSA) count with rows normalised", fontsize=8)
    save(fig, "attention_distance.png")

    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        inc = found[name][2]
        im = ax.imshow(inc, cmap="Reds")
        ax.set(title=f"{name}: val loss increase", xlabel="head (last column: whole layer)", ylabel="layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    save(fig, "head_ablation.png")

    import model_sparse  # the patterns, drawn from the same predicates the models use
    T, w = 48, 8
    masks = {"causal (softmax)": torch.ones(T, T, dtype=torch.bool).tril(),
             f"sliding_window {w}": model_sparse.sliding_window_mask(T, w),
             f"local_global {w}+4": model_sparse.local_global_mask(T, w, 4),
             "strided 8": model_sparse.strided_mask(T, 8), "fixed 8, c=2": model_sparse.fixed_mask(T, 8, 2)}
    fig, axes = plt.subplots(1, len(masks) + 1, figsize=(2.6 * (len(masks) + 1), 2.9))
    for ax, (title, mask) in zip(axes, masks.items()):
        ax.imshow(mask, cmap="Greys")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    import model_nsa  # NSA's reads depend on content: one draw of random queries and keys
    nsa = model_nsa.GPTConfig(n_embd=64, n_head=4, n_kv_head=1, cmp_block=8, cmp_stride=8, select_block=8,
                              select_count=3, window_size=w)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, T, 16, generator=gen), torch.randn(1, 1, T, 16, generator=gen)
    axes[-1].imshow(model_nsa.full_resolution_keys(q, k, nsa)[0, 0], cmap="Greys")
    axes[-1].set_title(f"NSA: 3 blocks of 8 + window {w}\n(random q, k)", fontsize=8)
    axes[-1].set_axis_off()
    save(fig, "attention_masks.png")
    write_json(folder / "inspect.json", {"text": cfg["text"], "models": summary, "environment": env})
    lines = [f"# Head ablation: val loss increase when one head (or a layer's whole attention) is zeroed, "
             f"over {cfg['ablation_iters']} val batches", ""]
    for name in names:
        inc = found[name][2]
        H = inc.shape[1] - 1
        lines += [f"## {name} (val loss {summary[name]['val_loss']:.4f})", "",
                  *markdown_table(["layer", *(f"head {h}" for h in range(H)), "whole layer"],
                                  ([layer, *(f"{v:+.4f}" for v in row.tolist())] for layer, row in enumerate(inc))), ""]
    atomic_write(folder / "head_ablation.md", lambda f: f.write("\n".join(lines).encode()))
    return summary


# -----------------------------------------------------------------------------
# the recall bake-off: every family at several widths on MQAR (data/mqar), accuracy against state size

def state_bytes(model):
    """Bytes of decoding state one sequence holds at the model's full context: the floating-point tensors
    of each layer's cache as allocated (K/V in bf16; linear and delta states are float32 by design), bar
    attributes named with a leading _ (constants a cache keeps for its steps, such as NSA's gather tables)."""
    def walk(x):
        if torch.is_tensor(x):
            return x.numel() * x.element_size() if x.is_floating_point() else 0
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return sum(walk(v) for k, v in vars(x).items() if not k.startswith("_")) if hasattr(x, "__dict__") else 0
    return walk(model.new_caches(1, torch.device("cpu"), torch.bfloat16))


def mqar_run_folder(name, width, lr):
    return f"{name}_d{width}_lr{lr:g}"


def mqar_sweep(cfg, sweep_paths=(), raw=None):
    """Train each family of --models at each width of mqar_widths and each of learning_rates on MQAR, as
    the sweep trains (workers, resume, failures recorded); then mqar_report."""
    root, env = sweep_root(cfg), environment()  # before this writes anything: its own files would mark the checkout dirty
    check_trackers(cfg)
    specs, widths = bench_specs(cfg), split(cfg["mqar_widths"], int)
    rows = {(name, width): settings for name, settings in specs for width in widths}

    def runs_at(row, lr):
        (name, width) = row
        return [(mqar_run_folder(name, width, lr), f"{name}_d{width}", f"{name}, width {width}, lr={lr:g}",
                 dict(rows[row], n_embd=width, learning_rate=lr, min_lr=lr / 10))]

    def best_of(row, lrs):
        return mqar_best_lr({lr: read_metrics(root / "runs" / mqar_run_folder(*row, lr)) for lr in lrs})

    bracketed_rounds(cfg, root, list(rows), runs_at, best_of, "mqar", sweep_paths, dict(raw or {}))
    if cfg["sweep_worker"] >= 0:
        return []  # a worker only trains: the process that started the workers writes the report
    return mqar_report(cfg, env)


def mqar_tried(root, name, width, grid):
    """{learning rate: metrics} of a family at a width: the grid's rates and any other under runs/
    (an lr_bracket round's)."""
    prefix, found = mqar_run_folder(name, width, 0).removesuffix("0"), set()
    for folder in (root / "runs").glob(prefix + "*"):
        with contextlib.suppress(ValueError):  # not a run's folder
            found.add(float(folder.name[len(prefix):]))
    return {lr: read_metrics(root / "runs" / mqar_run_folder(name, width, lr)) for lr in sorted({*grid, *found})}


def mqar_best_lr(tried):
    """The rate of `tried` ({rate: metrics}) with the best val accuracy at the end of training (a run that
    did not finish counts as worst); ties go to the smaller rate."""
    return max(sorted(tried), key=lambda lr: tried[lr]["val_accuracy"] if tried[lr].get("status") == "done" else -math.inf)


def mqar_report(cfg, env=None):
    """For each family of --models and width of mqar_widths, its best learning rate by val accuracy at the
    end of training (the per-slice figures are the last evaluation's) among the finished runs, of the grid
    and of any lr_bracket round, under
    <sweep_dir>/runs, into <sweep_dir>/mqar.md, mqar.json and plots/mqar_*.png
    (also `--stage=mqar_report` alone, e.g. on a CPU from a GPU sweep's runs: `--device=cuda` picks
    config/mqar.py's GPU grid). A sweep still under way gives a partial report: the 'rates done' column
    says how many of the learning rates have finished (done, diverged, out of memory or failed)."""
    root, env = sweep_root(cfg), env or environment()
    specs, widths, grid = bench_specs(cfg), split(cfg["mqar_widths"], int), split(cfg["learning_rates"], float)
    rows, run_envs = [], []
    for name, settings in specs:
        for width in widths:
            tried = mqar_tried(root, name, width, grid)
            done = {lr: m for lr, m in tried.items() if m.get("status") == "done"}
            run_envs += [m["environment"] for m in done.values() if "environment" in m]
            best = mqar_best_lr(done) if done else None
            m, finished = done.get(best, {}), sum(t.get("status") in FINISHED for t in tried.values())
            # the cache's size does not depend on the vocabulary: no dataset needed here
            model = build_for(dict(settings, n_embd=width), settings["block_size"], vocab_size=64)
            rows.append({"model": name, "model_type": settings["model_type"], "width": width, "learning_rate": best,
                         "best_lr_at_edge": len(done) > 1 and best in (min(done), max(done)),
                         "params": m.get("params"), "state_bytes": state_bytes(model), "rates_done": finished,
                         "rates": len(tried), "accuracy": m.get("val_accuracy_by_slice"), "kernel_path": m.get("kernel_path"),
                         "lr_sweep": {f"{lr:g}": t.get("val_accuracy", t.get("status")) for lr, t in tried.items()},
                         "fell": {f"{lr:g}": (m["best_val_accuracy"], m["val_accuracy"]) for lr, m in done.items()
                                  if m["best_val_accuracy"] - m["val_accuracy"] > 0.1}})
    if not any(r["accuracy"] for r in rows):
        raise UserError(f"no MQAR run under {root}/runs finished; their metrics.json and error.log say why")
    env = made_in(run_envs) if run_envs else env  # the report may be made on a CPU from a GPU sweep's runs
    write_json(root / "mqar.json", {"rows": rows, "environment": env, "config": cfg})
    slices = [s for s in next(r["accuracy"] for r in rows if r["accuracy"]) if s != "all"]
    unfinished = sum(r["rates"] - r["rates_done"] for r in rows)
    lines = [f"# MQAR recall: {root}", "", "Accuracy at the query positions of the val set, per (sequence length x kv pairs); "
             "state = bytes of decoding state per sequence at the full context. "
             f"{hardware(env)}. Made by `python train_runner.py config/mqar.py --stage=mqar`.", ""]
    if unfinished:
        lines += [f"**Partial:** {unfinished} of {sum(r['rates'] for r in rows)} runs are not finished; each row's best is "
                  "the best of the rates done.", ""]
    lines += markdown_table(["model", "width", "params", "state bytes", "best LR", "rates done", *slices, "all"],
                            ([r["model"], r["width"], fmt(r["params"], ","), f"{r['state_bytes']:,}",
                              fmt(r["learning_rate"], ".3g") + (" (edge)" if r["best_lr_at_edge"] else ""),
                              f"{r['rates_done']}/{r['rates']}",
                              *(fmt(r["accuracy"] and r["accuracy"][s], ".3f") for s in [*slices, "all"])] for r in rows))
    if any(r["best_lr_at_edge"] for r in rows):
        lines += ["", "(edge): the best of the learning rates done is the lowest or highest of them, so the row's own "
                  "best may lie beyond the grid."]
    fell = [f"{r['model']} d{r['width']} at {lr}: {peak:.3f} at its best evaluation, {last:.3f} at the last"
            for r in rows for lr, (peak, last) in r["fell"].items()]
    if fell:
        lines += ["", "Runs whose accuracy fell by more than 0.1 after their best evaluation (the table counts the last): "
                  + "; ".join(fell) + "."]
    atomic_write(root / "mqar.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    plot_mqar(root, rows, slices)
    print("\n".join(lines))
    return rows


def plot_mqar(root, rows, slices):
    plt = pyplot()

    models = list(dict.fromkeys(r["model"] for r in rows if r["accuracy"]))  # a family with no finished run has no line
    fig, axes = plt.subplots(1, len(slices), figsize=(3.4 * len(slices), 3.2), squeeze=False)
    for ax, s in zip(axes[0], slices):
        for name in models:
            pts = [(r["width"], r["accuracy"][s]) for r in rows if r["model"] == name and r["accuracy"]]
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set(title=f"seq x kv pairs = {s}", xlabel="model width", ylabel="accuracy", xscale="log", ylim=(0, 1.02))
    axes[0][0].legend(fontsize=7)
    save_png(fig, root / "plots" / "mqar_accuracy.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in models:
        pts = [(r["state_bytes"], r["accuracy"]["all"]) for r in rows if r["model"] == name and r["accuracy"]]
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set(xlabel="decoding state per sequence (bytes)", ylabel="MQAR accuracy (all slices)", xscale="log", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    save_png(fig, root / "plots" / "mqar_state.png")


BAKEOFF_BENCHMARKS = ("bench_decode", "bench_memory")


def bakeoff_bench(cfg, stage, specs, warm=False):
    """One of the bake-off's benchmarks of the sweep's models, into the sweep's folder (bench's warm)."""
    return bench(dict(cfg, stage=stage, out_dir=str(sweep_root(cfg))), specs=list(specs.items()), warm=warm)


def warm_benchmark_caches(cfg, sweep_paths=(), raw=None):
    """The bake-off's benchmarks, each unmeasured row's first call only: their kernels compiled into torch's
    caches (on disk, shared by the processes of one machine) while the sweep's runs train. At a lower CPU
    priority than theirs: this only saves the benchmarks time later, their runs are the job's critical path."""
    if hasattr(os, "nice"):
        os.nice(10)
    specs, *_ = matched_specs(cfg, sweep_paths, dict(raw or {}))
    for stage in BAKEOFF_BENCHMARKS:
        bakeoff_bench(cfg, stage, specs, warm=True)


def bakeoff(cfg, sweep_paths=(), raw=None):
    """The main job: the sweep, then decoding latency and the memory wall for its models, then the report."""
    start = time.perf_counter()
    specs = sweep(cfg, sweep_paths, raw)
    for stage in BAKEOFF_BENCHMARKS:  # where the job's time goes, said as it goes
        print(f"[bakeoff] {time.perf_counter() - start:.0f} s in: {stage}")
        bakeoff_bench(cfg, stage, specs)
    print(f"[bakeoff] {time.perf_counter() - start:.0f} s in: report")
    return report(cfg)


def main(argv):
    paths, raw = parse_argv(argv)
    if not paths:
        paths = [str(CONFIG_DIR / "bakeoff.py")]
    cfg = configure(DEFAULTS, paths, raw_overrides=raw)
    stage = cfg["stage"]
    if stage == "train":
        return run(cfg)
    if stage in ("bench_layer", "bench_decode", "bench_memory"):
        return bench(cfg)
    if stage in ("sweep", "bakeoff"):
        return (sweep if stage == "sweep" else bakeoff)(cfg, paths, raw)
    if stage == "warm_benchmarks":  # started by the bake-off's sweep
        return warm_benchmark_caches(cfg, paths, raw)
    if stage == "report":
        return report(cfg)
    if stage == "mqar":
        return mqar_sweep(cfg, paths, raw)
    if stage == "mqar_report":
        return mqar_report(cfg)
    if stage in ("eval", "inspect"):  # on the checkpoint's own dataset unless --dataset names another
        return (eval_checkpoint if stage == "eval" else inspect)(cfg, raw.get("dataset"))
    raise UserError(f"unknown stage '{stage}'; choose train, bakeoff, sweep, bench_layer, bench_decode, bench_memory, "
                    "report, eval, inspect, mqar or mqar_report")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint in out_dir is intact", file=sys.stderr)
        sys.exit(130)
