"""model_linear.py: the chunked form against the quadratic definition, decoding, causality, stability."""

import math

import pytest
import torch
from conftest import assert_causal, assert_fast_path_matches_reference, decode_stepwise

from model import generate_by_recompute
from model_linear import GPT, GPTConfig, chunked_linear_attention, local_attention

VARIANTS = [
    dict(feature_map="elu"),
    dict(feature_map="relu"),
    dict(feature_map="taylor", n_features=4),
    dict(feature_map="identity", normalize=False),
    dict(feature_map="elu", based_window=5),
    dict(feature_map="taylor", n_features=4, based_window=3, n_kv_head=2),
    dict(feature_map="identity", normalize=False, based_window=4),
]
IDS = ["elu", "relu", "taylor", "identity", "elu+window", "taylor+window+gqa", "identity+window"]


def tiny(pos_emb="learned", **kw):
    torch.manual_seed(0)
    cfg = dict(block_size=16, vocab_size=11, n_layer=2, n_head=4, n_embd=32, chunk_size=5, pos_emb=pos_emb)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).double().eval()


@pytest.mark.parametrize("T", [1, 7, 16, 17, 50])
def test_chunked_equals_quadratic(T):
    q, k = torch.rand(2, 3, T, 5, dtype=torch.double), torch.rand(2, 3, T, 5, dtype=torch.double)
    v = torch.randn(2, 3, T, 4, dtype=torch.double)
    out, state = chunked_linear_attention(q, k, v, chunk_size=8)
    torch.testing.assert_close(out, (q @ k.transpose(-1, -2)).tril() @ v, rtol=0, atol=1e-12)
    torch.testing.assert_close(state, k.transpose(-1, -2) @ v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("T, window", [(1, 4), (13, 4), (16, 4), (9, 20), (30, 1)])
def test_local_attention_equals_banded_softmax(T, window):
    q, k, v = (torch.randn(2, 3, T, 6, dtype=torch.double) for _ in range(3))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = (q @ k.transpose(-1, -2) / math.sqrt(6)).masked_fill((j > i) | (j <= i - window), float("-inf"))
    torch.testing.assert_close(local_attention(q, k, v, window), scores.softmax(-1) @ v, rtol=0, atol=1e-12)


def test_gradients_match_finite_differences():
    q, k = (torch.rand(1, 2, 7, 3, dtype=torch.double, requires_grad=True) for _ in range(2))
    v = torch.randn(1, 2, 7, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: chunked_linear_attention(a, b, c, 3)[0], (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: local_attention(a, b, c, 3), (q, k, v))


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_forward_equals_implied_attention_map(variant):
    model = tiny(**variant)
    idx = torch.randint(0, 11, (2, 16))
    fast, _ = model(idx)
    mapped, _, maps = model(idx, return_attn=True)
    torch.testing.assert_close(fast, mapped, rtol=0, atol=1e-10)
    assert maps[0].shape == (2, 4, 16, 16) and maps[0].triu(1).abs().max() == 0
    rows = maps[0].sum(-1)
    if variant.get("normalize", True):  # rows sum to den / (den + ε): 1 unless φ(q)·φ(k) is tiny (ReLU's zeros)
        assert rows.max() <= 1 and (variant["feature_map"] == "relu" or rows.min() > 1 - 1e-4)


@pytest.mark.parametrize("pos_emb", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_causality(variant, pos_emb):
    model = tiny(pos_emb, **variant)
    assert_causal(model)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_recurrent_steps_equal_parallel_form(variant):
    model = tiny("none", **variant)
    idx = torch.randint(0, 11, (2, 40))  # streams: past block_size 16 on the state
    full, _ = model(idx)
    steps, caches = decode_stepwise(model, idx, 6)
    torch.testing.assert_close(steps, full[:, 5:], rtol=0, atol=1e-10)
    assert caches[0].S.shape == (2, 4, model.config.feature_dim, 9)  # the state does not grow with T


@pytest.mark.parametrize("pos_emb", ["learned", "none"])
def test_generate_equals_recompute(pos_emb):
    model = tiny(pos_emb, feature_map="elu", based_window=4)
    assert model.streams == (pos_emb == "none")
    prompt = torch.randint(0, 11, (2, 5))
    fast = model.generate(prompt, 30, temperature=0)
    assert torch.equal(fast, generate_by_recompute(model, prompt, 30, temperature=0))


def test_bf16_large_inputs_stay_finite():
    torch.manual_seed(0)
    for variant in VARIANTS:
        model = GPT(GPTConfig(block_size=512, vocab_size=11, n_layer=2, n_head=4, n_embd=64, **variant))
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(30.0)  # scores far beyond what exp or bf16 sums forgive
        idx = torch.randint(0, 11, (2, 512))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = model(idx, idx)
        loss.backward()
        assert torch.isfinite(logits).all() and torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), variant


@pytest.mark.parametrize("bad, message", [
    (dict(feature_map="cosine"), "feature_map must be one of"),
    (dict(feature_map="identity"), "use normalize=False"),
    (dict(feature_map="taylor", n_embd=384, n_head=6), "set n_features"),
    (dict(pos_emb="rope"), "one of learned, sinusoidal, none for this family"),
    (dict(based_window=-1), "based_window must be >= 0"),
])
def test_bad_config(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**bad)


# -- GPU: flash-linear-attention against the PyTorch path (run on the device machine) -------------

@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_gpu_fla_equals_reference(variant):
    pytest.importorskip("fla")
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=1024, vocab_size=65, n_layer=2, n_head=6, n_embd=384, linear_fla=True, **variant)
    model = GPT(cfg).cuda()
    assert model.kernel_paths("cuda") == (["pytorch"] if variant["feature_map"] == "taylor" else ["fla"])
    idx = torch.randint(0, 65, (4, 1024), device="cuda")
    assert_fast_path_matches_reference(model, "linear_fla", idx, model.transformer.h[0].attn.c_attn.weight)


@pytest.mark.gpu
def test_gpu_graph_decoding_equals_recompute():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=4, n_embd=128, pos_emb="none",
                          based_window=8)).cuda().eval()
    prompt = torch.randint(0, 65, (2, 10), device="cuda")
    graphed = model.generate(prompt, 100, temperature=0, cuda_graph=True)
    eager = model.generate(prompt, 100, temperature=0, cuda_graph=False)
    assert torch.equal(graphed, eager)
    assert torch.equal(eager, generate_by_recompute(model, prompt, 100, temperature=0))
