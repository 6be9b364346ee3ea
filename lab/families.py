"""
The registry: every model the lab can build, by name. A name is a family file (its GPTConfig and GPT)
and presets of that family's fields; a name's tuned settings for the bake-off, where it has any, are
config/models/<name>.py (settings.py applies them when `recipes` is on).

Adding a family: write model_<family>.py (model.py's docstring has the contract) and add its line here.
"""

import difflib
import importlib
from dataclasses import fields
from pathlib import Path

from lab import UserError

MODELS = {
    "vanilla": ("model", {}),
    "rope": ("model", {"pos_emb": "rope"}),
    "linear": ("model_linear", {}),
    "based": ("model_linear", {"feature_map": "taylor", "n_features": 16, "based_window": 64}),
    "sparse": ("model_sparse", {"pattern": "sliding_window"}),
    "local_global": ("model_sparse", {"pattern": "local_global"}),
    "strided": ("model_sparse", {"pattern": "strided"}),
    "fixed": ("model_sparse", {"pattern": "fixed"}),
    "topk": ("model_sparse", {"pattern": "topk"}),
    "delta": ("model_delta", {"variant": "deltanet"}),
    "gated_delta": ("model_delta", {"variant": "gated_deltanet"}),
    "delta_product": ("model_delta", {"variant": "gated_deltaproduct"}),
    "nsa": ("model_nsa", {}),
    # hybrids (lab/hybrid.py): each layer a family of the above
    "hybrid": ("lab.hybrid", {}),
    "delta_softmax": ("lab.hybrid", {"layers": "delta,delta,rope"}),
    "gated_delta_window": ("lab.hybrid", {"layers": "gated_delta,window"}),
    "delta_nsa": ("lab.hybrid", {"layers": "delta,delta,nsa"}),
}
RECIPES = Path(__file__).resolve().parent.parent / "config" / "models"


def closest(name, options):
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def load(name):
    """(the family's module, its presets) for a model name."""
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'{closest(name, MODELS)}; choose from {', '.join(MODELS)}")
    module_name, presets = MODELS[name]
    return importlib.import_module(module_name), presets


def split_entry(text):
    """'name:key=value:key=value' (a model with its own settings, as `models` and hybrid layers name one)
    -> (name, {key: value text})."""
    name, *options = text.strip().split(":")
    opts = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or not key.strip():
            raise UserError(f"'{option}' in '{text}': write a model's own settings as name:key=value")
        opts[key.strip()] = value.strip()
    return name.strip(), opts


def is_hybrid(name):
    return load(name)[0].__name__ == "lab.hybrid"


def model_fields(name):
    """{field: default} of a model's GPTConfig, its presets applied, bar vocab_size (the dataset sets it)."""
    module, presets = load(name)
    return {f.name: presets.get(f.name, f.default) for f in fields(module.GPTConfig) if f.name != "vocab_size"}


def recipe(name):
    """config/models/<name>.py, or None where the model has no tuned settings of its own."""
    path = RECIPES / f"{name}.py"
    return path if path.is_file() else None


def build(name, args, vocab_size):
    """The model `name` with GPTConfig fields `args` (others at their defaults) and the dataset's vocabulary."""
    module, _ = load(name)
    known = model_fields(name)
    try:
        return module.GPT(module.GPTConfig(**{k: v for k, v in args.items() if k in known}, vocab_size=vocab_size))
    except ValueError as e:
        raise UserError(f"invalid model configuration for {name}: {e}") from None
