"""
Hybrid models: each layer's attention from a family of its own, on the one backbone (model.py).

    layers = "delta,delta,softmax"                      # repeated to fill n_layer: D D S D D S at n_layer = 6
    layers = "gated_delta*2,sparse:window=64,rope"      # 'name*k' repeats an entry; 'name:key=value' sets its options

An entry is a model of the registry (lab/families.py; 'softmax' is vanilla, 'window' is sparse) with that
name's presets, then its own options, each a field of that family's GPTConfig. Every layer shares the
backbone's width, context, depth, dropout and bias; heads (n_head, n_kv_head, head sizes) and positions
that act inside attention (pos_emb=rope or alibi) are a layer's own, since families differ in what they
accept (the delta family takes neither grouped K/V nor RoPE; NSA's fast path wants 16 query heads per
K/V head). The hybrid's own pos_emb is what enters at the input: by default none, as in the hybrids of
Gated DeltaNet (Yang et al. 2025) and Jamba (Lieber et al. 2024), whose order comes from the recurrent
layers' convolutions and the softmax layers' RoPE.

Each block's attention keeps its family's contract (model.py), so a block carries its own decoding
state (KV cache, ring buffer, recurrent state, NSA's caches) and a hybrid decodes as each layer does.
The hybrid streams past block_size only where every layer would, and its input positions allow it.
"""

import ast
from dataclasses import dataclass, fields
from functools import cached_property

import model
from lab import UserError, families

ALIASES = {"softmax": "vanilla", "window": "sparse"}
# what every layer takes from the hybrid: the residual stream's width, the context, the depth (GPT-2's scaled
# init) and the regularisation; an entry that sets one of them is refused
SHARED = ("block_size", "vocab_size", "n_layer", "n_embd", "dropout", "bias", "short_conv")


def parse_entry(text):
    """'name:key=value:key=value*k' -> (name, {key: value text}, k)."""
    text, repeat = text.strip(), 1
    head, star, count = text.rpartition("*")
    if star and count.strip().isdigit():
        text, repeat = head.strip(), int(count)
    try:
        name, opts = families.split_entry(text)
    except UserError as e:
        raise ValueError(str(e)) from None
    if repeat < 1:
        raise ValueError(f"'{text}*{count}': an entry repeats at least once")
    return ALIASES.get(name, name), opts, repeat


def expand(layers, n_layer):
    """The layers string as n_layer (name, options) entries; a pattern shorter than n_layer repeats."""
    entries = []
    for part in layers.split(","):
        if part.strip():
            name, opts, repeat = parse_entry(part)
            entries += [(name, opts)] * repeat
    if not entries:
        raise ValueError("layers names no layer: e.g. layers='delta,delta,softmax'")
    if n_layer % len(entries):
        raise ValueError(f"layers names {len(entries)} layer(s), which do not repeat to n_layer={n_layer}")
    return entries * (n_layer // len(entries))


def typed(key, text, default):
    """An option's text as the type of its field's default."""
    if isinstance(default, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"{key}={text}: not a valid {type(default).__name__}") from None
    if default is not None and not isinstance(value, type(default)) and not (isinstance(default, float)
                                                                              and isinstance(value, int)):
        raise ValueError(f"{key}={text}: must be a {type(default).__name__}")
    return value


def layer_config(hybrid, i, name, opts):
    """The GPTConfig of layer i: its family's, the shared fields from the hybrid, then presets, then options."""
    if name not in families.MODELS or families.MODELS[name][0] == __name__:
        options = ", ".join(n for n, (m, _) in families.MODELS.items() if m != __name__)
        raise ValueError(f"layer {i}: unknown family '{name}'{families.closest(name, families.MODELS)}; "
                         f"choose from softmax, window, {options}")
    module, presets = families.load(name)
    known = {f.name: f.default for f in fields(module.GPTConfig)}
    for key in opts:
        if key not in known:
            raise ValueError(f"layer {i} ({name}): unknown option '{key}'{families.closest(key, known)}")
        if key in SHARED:
            raise ValueError(f"layer {i} ({name}): {key} is the hybrid's, shared by every layer; set it on the model")
    args = {k: getattr(hybrid, k) for k in SHARED}
    args["pos_emb"] = "learned" if hybrid.pos_emb == "learned" else "none"  # positions added at the input are the backbone's
    if "n_head" not in opts and "n_head" not in presets:
        args.update(n_head=hybrid.n_head, n_kv_head=hybrid.n_kv_head if hybrid.n_kv_head != hybrid.n_head else None)
    args.update(presets)
    args.update({k: typed(f"layer {i} ({name}): {k}", v, known[k]) for k, v in opts.items()})
    try:
        return module, module.GPTConfig(**args)
    except ValueError as e:
        raise ValueError(f"layer {i} ({name}): {e}") from None


@dataclass
class GPTConfig(model.BackboneConfig):
    pos_embs = ("learned", "sinusoidal", "none")  # at the input; rope and alibi are a softmax layer's own option
    pos_emb: str = "none"
    layers: str = "delta,softmax"

    def __post_init__(self):
        super().__post_init__()
        if not self.per_layer:  # every entry is checked as the config is made
            raise ValueError("layers names no layer")

    @cached_property
    def per_layer(self):
        """[(family module, GPTConfig)] for each layer."""
        return [layer_config(self, i, name, opts) for i, (name, opts) in enumerate(expand(self.layers, self.n_layer))]


def streams(module, config):
    """Whether a model of this family and config would carry on past block_size."""
    flag = module.GPT.streams
    return flag.fget(type("View", (), {"config": config})()) if isinstance(flag, property) else flag


class GPT(model.GPT):
    def new_attention(self, layer_idx):
        module, config = self.config.per_layer[layer_idx]
        return module.GPT.attention_class(config, layer_idx)

    @property
    def streams(self):
        return self.config.pos_emb != "learned" and all(streams(m, c) for m, c in self.config.per_layer)
