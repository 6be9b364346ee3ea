"""
Settings: nanoGPT's configurator, validated once into one frozen, typed object.

    defaults (train_runner.py's globals) <- config files, in order <- the model's recipe <- overrides <- --key=value

Config files are plain Python run with the settings so far in scope: they assign settings, and may branch
on `profile` ('cpu' or 'gpu', settled before any file is read). A model's recipe, config/models/<model>.py
(lab/families.py), is read after the command's files while `recipes` is on. Every value must have its
default's type; the fields of the model's GPTConfig are settings too. An unknown key, a wrong type, an
impossible value or a model that cannot be built stops here, in one line, before anything is written.
"""

import ast
import builtins
import hashlib
import json
from dataclasses import asdict, field, make_dataclass, replace
from pathlib import Path

import torch

from lab import UserError, families

CHOICES = {"init_from": ("scratch", "resume"), "dtype": ("auto", "float32", "bfloat16", "float16"),
           "profile": ("auto", "cpu", "gpu"), "compile_mode": ("default", "reduce-overhead", "max-autotune")}
AT_LEAST = {1: ("batch_size", "block_size", "eval_interval", "log_interval", "gradient_accumulation_steps", "eval_group",
                "runs_per_gpu", "decode_trials", "finalists"),
            0: ("max_iters", "eval_iters", "eval_windows", "warmup_iters", "lr_decay_iters", "lr_bracket", "sweep_workers",
                "trials", "target_params", "ablation_iters", "local_window", "grad_clip", "min_lr", "weight_decay",
                "trial_seconds", "tokens_per_batch", "length_chunks", "length_stride")}
LISTS = {"learning_rates": float, "seeds": int, "seeds_at_best": int, "seq_lens": int, "decode_lens": int, "mqar_widths": int}
# settings that say where a run writes, what it logs or how a job is organised, not what a run computes:
# left out of a run's identity (its folder's name and its benchmark rows' keys)
BOOKKEEPING = frozenset({
    "out_dir", "data_dir", "eval_group", "log_interval", "always_save_checkpoint", "init_from", "wandb_log",
    "wandb_project", "wandb_run_name", "mlflow_uri", "tensorboard_dir", "recipes", "profile", "stage", "models",
    "learning_rates", "lr_bracket", "seeds", "seeds_at_best", "finalists", "target_params", "sweep_workers", "runs_per_gpu", "mps",
    "sweep_worker", "gpu_share", "warm_benchmarks", "seq_lens", "tokens_per_batch", "decode_lens", "trials",
    "decode_trials", "trial_seconds", "torch_profile", "ckpt_path", "text", "ablation_iters", "local_window",
    "mqar_widths", "publish_to", "sources", "placement_bases", "placement_mixer", "placements", "length_factors",
    "length_chunks", "length_stride"})


def split(text, kind=str):
    """'a,b' -> [kind(a), kind(b)]."""
    return [kind(x.strip()) for x in str(text).split(",") if x.strip()]


def parse_argv(argv):
    """['cfg.py', '--a=1'] -> (['cfg.py'], {'a': '1'}), the values left as strings."""
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
        ok, want = value is None or (isinstance(value, int) and not isinstance(value, bool)), "an int or None"
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


def run_file(path, ns):
    """Execute a config file with the settings ns in scope; {key: value} of what it set or changed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    scope = dict(ns)
    try:
        exec(builtins.compile(path.read_text(), str(path), "exec"), scope)
    except Exception as e:
        raise UserError(f"config file {path} failed: {type(e).__name__}: {e}") from None
    return {k: v for k, v in scope.items() if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))
            and (k not in ns or v is not ns[k])}


def configure_script(defaults, config_files=(), raw=None):
    """A small script's settings (sample.py's): its defaults <- config files <- '--key=value', checked the same way."""
    ns, given = dict(defaults), []
    for path in config_files:
        given += [(k, v, str(path)) for k, v in run_file(path, ns).items()]
    given += [(k, parse_value(k, v, defaults.get(k)) if k in defaults else v, f"--{k}") for k, v in (raw or {}).items()]
    for key, val, source in given:
        if key not in defaults:
            raise UserError(f"unknown setting '{key}' from {source}{families.closest(key, defaults)}")
        ns[key] = check_type(key, val, defaults[key], source)
    ns["device"] = resolve_device(ns["device"])
    return make_dataclass("ScriptSettings", list(defaults), frozen=True)(**ns)


def resolve_device(device):
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got '{device}'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device='{device}' but this machine has no CUDA GPU: use --device=cpu")
    return device


def configure(defaults, config_files=(), overrides=None, raw=None, model=None):
    """The Settings for train_runner's `defaults`, config files, an overrides dict and '--key=value' strings
    (raw); `model` (a sweep's entry) takes the place of model_type."""
    overrides, raw = dict(overrides or {}), dict(raw or {})
    ns = dict(defaults)
    ns["device"] = resolve_device(str(raw.get("device", overrides.get("device", ns["device"]))))
    profile = str(raw.get("profile", overrides.get("profile", ns["profile"])))
    ns["profile"] = ("gpu" if ns["device"].startswith("cuda") else "cpu") if profile == "auto" else profile
    given = []  # (key, value, source), in the order they apply
    for path in config_files:
        changed = run_file(path, ns)
        ns.update(changed)
        given += [(k, v, str(path)) for k, v in changed.items()]
    name, own = families.split_entry(model or raw.get("model_type") or overrides.get("model_type") or ns["model_type"])
    fields = families.model_fields(name)
    recipes = parse_value("recipes", raw["recipes"], True) if "recipes" in raw else overrides.get("recipes", ns["recipes"])
    if recipes and families.recipe(name):
        changed = run_file(families.recipe(name), ns)
        ns.update(changed)
        given += [(k, v, str(families.recipe(name))) for k, v in changed.items()]
    allowed = {**fields, **defaults}
    listed = str(raw.get("models", overrides.get("models", ns.get("models", ""))))
    elsewhere = {k for other in split(listed) for k in families.model_fields(families.split_entry(other)[0])} - set(allowed)
    given += [(k, v, "overrides") for k, v in overrides.items()]
    given += [(k, parse_value(k, v, allowed.get(k)) if k in allowed else v, f"--{k}") for k, v in raw.items()]
    given += [(k, parse_value(k, v, allowed.get(k)) if k in allowed else v, f"'{model}' in models") for k, v in own.items()]
    for key, val, source in given:
        if key not in allowed:
            if key in elsewhere:  # another listed model's field: that model takes it
                continue
            hint = " (the dataset's meta.pkl sets it)" if key == "vocab_size" else families.closest(key, allowed)
            raise UserError(f"unknown setting '{key}' from {source}{hint}")
        ns[key] = check_type(key, val, allowed[key], source)
    ns["model_type"] = name
    ns["device"] = resolve_device(ns["device"])
    if ns["dtype"] == "auto":
        ns["dtype"] = "bfloat16" if ns["device"].startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    family = {k: ns.get(k, v) for k, v in fields.items() if k not in defaults}
    sources = (tuple(map(str, config_files)), tuple(overrides.items()), tuple(raw.items()))
    s = settings_class(defaults)(**{k: ns[k] for k in defaults}, family=family, sources=sources)
    validate(s)
    return s


_classes = {}


def settings_class(defaults):
    """The frozen dataclass of train_runner's settings: one field per default (its type), plus `family`
    (the model's own GPTConfig fields) and `sources` (what made it: files, overrides, arguments)."""
    key = tuple((k, type(v)) for k, v in defaults.items())
    if key not in _classes:
        _classes[key] = make_dataclass(
            "Settings", [*((k, type(v)) for k, v in defaults.items()), ("family", dict, field(default_factory=dict)),
                         ("sources", tuple, ())], frozen=True, namespace=dict(
                defaults=dict(defaults), model_args=model_args, replace=with_changes,
                device_type=property(lambda s: "cuda" if s.device.startswith("cuda") else "cpu")))
    return _classes[key]


def model_args(s):
    """The model's GPTConfig fields, bar vocab_size: the backbone's from the settings, the family's own."""
    backbone = {k: getattr(s, k) for k in families.model_fields(s.model_type) if k in s.defaults}
    return {**backbone, **s.family}


def with_changes(s, **changes):
    """These settings with some changed (runner settings or the model's fields), validated again."""
    family = {k: v for k, v in changes.items() if k in s.family}
    unknown = set(changes) - set(family) - set(s.defaults)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    changed = replace(s, **{k: v for k, v in changes.items() if k in s.defaults}, family={**s.family, **family})
    validate(changed)
    return changed


def validate(s):
    """Ranges, choices, lists and the model itself; each failure one line."""
    for key, choices in CHOICES.items():
        if getattr(s, key) not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}, got '{getattr(s, key)}'")
    for least, keys in AT_LEAST.items():
        for key in keys:
            if getattr(s, key) < least:
                raise UserError(f"{key} must be >= {least}, got {getattr(s, key)}")
    if s.learning_rate <= 0:
        raise UserError(f"learning_rate must be > 0, got {s.learning_rate}")
    if s.dtype != "float32" and s.device_type != "cuda":
        raise UserError(f"dtype={s.dtype} needs a GPU here; use --dtype=float32 on {s.device}")
    for key, kind in LISTS.items():
        try:
            values = split(getattr(s, key), kind)
        except ValueError:
            raise UserError(f"{key} must be a comma-separated list of {kind.__name__}s, got '{getattr(s, key)}'") from None
        if any(v <= 0 for v in values) and key != "seeds" and key != "seeds_at_best":
            raise UserError(f"{key} must be positive, got '{getattr(s, key)}'")
    for entry in split(s.models):
        name, own = families.split_entry(entry)
        unknown = set(own) - set(families.model_fields(name)) - set(asdict(s))
        if unknown:
            raise UserError(f"'{entry}' in models: {', '.join(sorted(unknown))} is no setting of {name}")
    with torch.device("meta"):  # shapes only: a model of any size is checked at no cost
        families.build(s.model_type, model_args(s), vocab_size=1)


def flat(s):
    """Every setting as one dict, the model's own fields among them (a run's recorded config)."""
    return {**{k: v for k, v in asdict(s).items() if k not in ("family", "sources")}, **s.family}


def for_model(s, name, **changes):
    """The settings of a job's entry `name` (a sweep's model): the job's own files, overrides and
    arguments again, with that model's presets and recipe, and `changes` on top."""
    files, overrides, raw = s.sources
    raw = {k: v for k, v in raw if k not in ("model_type", "stage")}
    overrides = {k: v for k, v in overrides if k not in ("model_type", "stage")}
    entry = configure(s.defaults, files, overrides, raw, model=name)
    return entry.replace(**changes) if changes else entry


def as_argv(s):
    """The command line that configures these settings again (a worker process's)."""
    files, overrides, raw = s.sources
    values = {**{k: v if isinstance(v, str) else repr(v) for k, v in overrides}, **dict(raw)}
    return [*files, *(f"--{k}={v}" for k, v in values.items())]


def identity(s, leave_out=(), device_type=None, **extra):
    """A short hash of what makes a run's result: every setting but the bookkeeping ones and `leave_out`,
    the model's fields, the device type (this machine's, or the job's where it ran elsewhere) and `extra`
    (e.g. the kernels each layer runs there)."""
    what = {k: v for k, v in asdict(s).items() if k not in BOOKKEEPING and k not in leave_out and k != "family"}
    what.update(s.family, device=device_type or s.device_type, **extra)
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]


def repo_path(path):
    """A path as given, or for a relative one that is not there, the same path inside this checkout (so a
    notebook in another folder can name config/... and data/... as the README does)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    inside = Path(__file__).resolve().parent.parent / path
    return inside if inside.exists() else path
