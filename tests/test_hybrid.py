"""Hybrids (lab/hybrid.py): the layers string, each layer its family's, a one-family hybrid equal to that family,
decoding past block_size, and on a GPU the fast paths against the reference. The contract (causality,
decode == recompute, parameter matching, checkpoints) is tests/test_contract.py's, over the registry's hybrids."""

import re

import pytest
import torch
from conftest import assert_causal, assert_close_relative, assert_compiled_matches_eager, logits_and_grad

import model_delta
import model_sparse
import train_runner
from lab import UserError, families, hybrid
from model import generate_by_recompute

SMALL = dict(block_size=32, vocab_size=11, n_layer=4, n_head=2, n_embd=32)


def build(layers, **changes):
    torch.manual_seed(0)
    return hybrid.GPT(hybrid.GPTConfig(**{**SMALL, **changes}, layers=layers)).eval()


def test_entries_repeat_and_take_their_options_and_aliases():
    assert hybrid.expand("delta*2,softmax", 6) == [("delta", {}), ("delta", {}), ("vanilla", {})] * 2
    assert hybrid.expand("sparse:window=8:pos_emb=rope*2", 2) == [("sparse", {"window": "8", "pos_emb": "rope"})] * 2
    m = build("gated_delta,window:window=8:pos_emb=rope,delta,rope:n_kv_head=1")
    kinds = [(type(b.attn).__name__, b.attn.config) for b in m.transformer.h]
    assert [k for k, _ in kinds] == ["DeltaAttention", "SparseAttention", "DeltaAttention", "CausalSelfAttention"]
    assert kinds[0][1].variant == "gated_deltanet" and kinds[2][1].variant == "deltanet"  # the registry's presets
    assert kinds[1][1].window == 8 and kinds[1][1].pos_emb == "rope" and kinds[1][1].pattern == "sliding_window"
    assert kinds[3][1].pos_emb == "rope" and kinds[3][1].n_kv_head == 1
    assert all(c.n_embd == 32 and c.block_size == 32 and c.n_layer == 4 for _, c in kinds)


@pytest.mark.parametrize("layers, message", [
    ("delta,nope", "unknown family 'nope'"),
    ("delta,hybrid", "unknown family 'hybrid'"),
    ("sparse:windw=8", "unknown option 'windw' (did you mean 'window'?)"),
    ("sparse:n_embd=64", "n_embd is the hybrid's"),
    ("sparse:window=eight", "window=eight: not a valid int"),
    ("sparse:window", "write a model's own settings as name:key=value"),
    ("delta,delta,softmax", "do not repeat to n_layer=4"),
    ("delta:pos_emb=rope", "layer 0 (delta): pos_emb must be one of"),
    ("", "names no layer"),
])
def test_a_bad_layers_string_is_refused_saying_what_to_fix(layers, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        hybrid.GPTConfig(**SMALL, layers=layers)


def test_a_bad_layers_setting_stops_in_one_line_before_anything_runs():
    with pytest.raises(UserError, match="invalid model configuration for hybrid: layer 1 \\(sparse\\): unknown option"):
        train_runner.configure("config/train_shakespeare_char.py",
                               overrides=dict(profile="cpu", device="cpu", model_type="hybrid", layers="delta,sparse:x=1"))


@pytest.mark.parametrize("family, module", [("delta", model_delta), ("sparse", model_sparse)])
def test_a_one_family_hybrid_is_that_family(family, module):
    """Same parameters by name, and the same function of them: the composition adds nothing of its own."""
    fields = {k: v for k, v in families.model_fields(family).items() if k in {"variant", "pattern"}}
    own = module.GPT(module.GPTConfig(**SMALL, **fields, pos_emb="learned")).eval()
    mixed = build(family, pos_emb="learned")
    mixed.load_state_dict(own.state_dict())
    idx = torch.randint(0, 11, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(mixed(idx)[0], own(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("layers, streams", [("gated_delta,window:window=8", True), ("delta,softmax", False),
                                             ("delta,rope", False)])
def test_a_hybrid_streams_only_where_every_layer_would(layers, streams):
    assert build(layers).streams is streams
    assert build(layers, pos_emb="learned").streams is False


def test_a_streaming_hybrid_decodes_past_block_size_as_recomputing_does():
    m = build("delta,window:window=8,gated_delta,window:window=8")
    idx = torch.randint(0, 11, (1, 20), generator=torch.Generator().manual_seed(2))
    out = m.generate(idx, 30, temperature=0)  # to 50 tokens, past block_size = 32
    assert torch.equal(out, generate_by_recompute(m, idx, 30, temperature=0))


@pytest.mark.parametrize("layers", ["delta,rope:pos_emb=alibi", "nsa:n_head=4:n_kv_head=1:cmp_block=4:cmp_stride=4"
                                    ":select_block=4:window_size=8,gated_delta", "window:window=4:pos_emb=rope,delta"])
def test_options_keep_every_layer_causal(layers):
    with torch.no_grad():
        assert_causal(build(layers), T=32)


FAST_FLAGS = ("use_fla", "use_flex", "use_triton")


@pytest.mark.gpu
@pytest.mark.parametrize("layers", ["delta,rope", "gated_delta,window:window=64",
                                    "delta,nsa:n_head=16:n_kv_head=1:cmp_block=16:cmp_stride=16:select_block=16:"
                                    "window_size=64:use_fla=False:use_triton=True"])
def test_gpu_a_hybrid_fast_paths_equal_its_reference(layers):
    """Each layer's fast kernels on (FLA, FlexAttention, our Triton) against every layer on the PyTorch path."""
    m = hybrid.GPT(hybrid.GPTConfig(block_size=256, vocab_size=65, n_layer=2, n_head=4, n_embd=256, layers=layers)).cuda()
    layer_configs = [c for _, c in m.config.per_layer]
    fast = [{f: getattr(c, f) for f in FAST_FLAGS if hasattr(c, f)} for c in layer_configs]
    idx = torch.randint(0, 65, (2, 256), device="cuda")
    outs = []
    for on in (True, False):
        for c, flags in zip(layer_configs, fast):
            for f, value in flags.items():
                setattr(c, f, value and on)
        outs.append(logits_and_grad(m, idx, m.lm_head.weight))
    assert_close_relative(outs, 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("layers", ["delta,rope", "gated_delta,window:window=64"])
def test_gpu_a_compiled_hybrid_is_one_graph_and_equals_eager(layers):
    m = hybrid.GPT(hybrid.GPTConfig(block_size=256, vocab_size=65, n_layer=2, n_head=4, n_embd=256, layers=layers)).cuda()
    assert_compiled_matches_eager(m, torch.randint(0, 65, (2, 256), device="cuda"), m.lm_head.weight, breaks=0)
