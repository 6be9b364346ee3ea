"""model_sparse.py: masks against their written definitions, attention against dense masked softmax,
decoding against recompute, causality, the FlexAttention path against the reference."""

import math

import pytest
import torch
from conftest import assert_causal, assert_compiled_matches_eager, assert_fast_path_matches_reference, decode_stepwise

import model_sparse
from model import generate_by_recompute
from model_sparse import GPT, GPTConfig, blocked_sparse_attention

VARIANTS = [
    dict(pattern="sliding_window", window=5),
    dict(pattern="local_global", window=4, n_global=3),
    dict(pattern="strided", stride=4),
    dict(pattern="fixed", stride=5, summary=2),
    dict(pattern="topk", topk=3),
    dict(pattern="sliding_window", window=6, n_kv_head=2),
]
IDS = ["sliding_window", "local_global", "strided", "fixed", "topk", "window+gqa"]


def brute_force(T, pattern, window=0, n_global=0, stride=1, summary=0):
    """Each pattern as its paper words it, one (i, j) at a time."""
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):
            if pattern == "sliding_window":
                m[i, j] = i - j < window
            elif pattern == "local_global":
                m[i, j] = i - j < window or j < n_global
            elif pattern == "strided":
                m[i, j] = i - j < stride or (i - j) % stride == 0
            elif pattern == "fixed":
                m[i, j] = i // stride == j // stride or j % stride >= stride - summary
    return m


@pytest.mark.parametrize("T", [1, 9, 40])
def test_masks_equal_their_definitions(T):
    assert torch.equal(model_sparse.sliding_window_mask(T, 5), brute_force(T, "sliding_window", window=5))
    assert torch.equal(model_sparse.local_global_mask(T, 4, 3), brute_force(T, "local_global", window=4, n_global=3))
    assert torch.equal(model_sparse.strided_mask(T, 4), brute_force(T, "strided", stride=4))
    assert torch.equal(model_sparse.fixed_mask(T, 5, 2), brute_force(T, "fixed", stride=5, summary=2))
    for mask in (model_sparse.sliding_window_mask(T, 5, causal=False), model_sparse.strided_mask(T, 4, causal=False),
                 model_sparse.local_global_mask(T, 4, 3, causal=False)):
        assert torch.equal(mask, mask.T)  # these bidirectional versions are symmetric (fixed's summaries are not)
    assert torch.equal(model_sparse.fixed_mask(T, 5, 2, causal=False).tril(), brute_force(T, "fixed", stride=5, summary=2))


def dense_reference(q, k, v, cfg):
    T = q.shape[2]
    k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    if cfg.pattern == "topk":
        causal = scores.masked_fill(j > i, float("-inf"))
        kth = causal.topk(min(cfg.topk, T), dim=-1).values[..., -1:]
        allowed = (j <= i) & (causal >= kth)
    else:
        allowed = brute_force(T, cfg.pattern, cfg.window, cfg.n_global, cfg.stride, cfg.summary)
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("query_block", [7, 128])
@pytest.mark.parametrize("T", [1, 13, 50])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_blocked_equals_dense_masked_softmax(variant, T, query_block, monkeypatch):
    monkeypatch.setattr(model_sparse, "QUERY_BLOCK", query_block)
    cfg = GPTConfig(n_embd=24, n_head=4, **variant)
    q = torch.randn(2, 4, T, 6, dtype=torch.double)
    k, v = (torch.randn(2, cfg.n_kv_head, T, 6, dtype=torch.double) for _ in range(2))
    torch.testing.assert_close(blocked_sparse_attention(q, k, v, cfg), dense_reference(q, k, v, cfg), rtol=0, atol=1e-12)


def tiny(pos_emb="learned", **kw):
    torch.manual_seed(0)
    cfg = dict(block_size=16, vocab_size=11, n_layer=2, n_head=4, n_embd=32, pos_emb=pos_emb)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).double().eval()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_forward_equals_attention_map_path(variant):
    m = tiny(**variant)
    idx = torch.randint(0, 11, (2, 16))
    fast, _ = m(idx)
    mapped, _, maps = m(idx, return_attn=True)
    torch.testing.assert_close(fast, mapped, rtol=0, atol=1e-12)
    assert maps[0].shape == (2, 4, 16, 16) and maps[0].triu(1).abs().max() == 0
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 16, dtype=torch.double))


@pytest.mark.parametrize("pos_emb", ["learned", "rope", "none"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_causality(variant, pos_emb):
    assert_causal(tiny(pos_emb, **variant))


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_generate_equals_recompute(variant, pos_emb):
    m = tiny(pos_emb, **variant)
    assert m.streams == (pos_emb == "rope" and variant["pattern"] in ("sliding_window", "local_global"))
    for prompt_len in (3, 12):  # a prompt inside and beyond the window; 40 tokens run past block_size 16
        prompt = torch.randint(0, 11, (2, prompt_len))
        fast = m.generate(prompt, 40, temperature=0)
        assert torch.equal(fast, generate_by_recompute(m, prompt, 40, temperature=0))


def test_ring_cache_is_bounded():
    m = tiny("rope", pattern="local_global", window=4, n_global=3)
    idx = torch.randint(0, 11, (2, 60))
    full, _ = m(idx)  # streams: any length
    steps, caches = decode_stepwise(m, idx, 9)
    torch.testing.assert_close(steps, full[:, 8:], rtol=0, atol=1e-12)
    assert caches[0].k.shape[2] == 3 + 4


@pytest.mark.parametrize("variant", VARIANTS[:4], ids=IDS[:4])
def test_flex_block_mask_equals_reference_on_cpu(variant):
    # FlexAttention runs forward (not backward) on CPU: enough to check the mask_mods and BlockMask
    from torch.nn.attention.flex_attention import flex_attention
    cfg = GPTConfig(n_embd=32, n_head=4, **variant)
    T = 300  # three 128-tiles, the last partial
    q, k, v = (torch.randn(1, 4, T, 8) for _ in range(3))
    mask = model_sparse.block_mask(cfg.pattern, cfg.window, cfg.n_global, cfg.stride, cfg.summary, T, "cpu")
    flex = flex_attention(q, k, v, block_mask=mask)
    torch.testing.assert_close(flex, blocked_sparse_attention(q, k, v, cfg), rtol=1e-4, atol=1e-5)


def test_flops_count_the_attended_keys():
    attn = tiny(pattern="sliding_window", window=4).transformer.h[0].attn
    assert attn.mean_keys(16) == (1 + 2 + 3 + 4 * 13) / 16
    assert tiny(pattern="topk", topk=3).transformer.h[0].attn.mean_keys(4) == (1 + 2 + 3 + 3) / 4


@pytest.mark.parametrize("bad, message", [
    (dict(pattern="dilated"), "pattern must be one of"),
    (dict(window=0), "window must be >= 1"),
    (dict(pattern="strided", stride=0), "stride must be >= 1"),
    (dict(pattern="local_global", n_global=256), "n_global .* must be < block_size"),
    (dict(pattern="fixed", stride=4, summary=5), "summary .* must be <= stride"),
    (dict(pattern="topk", topk=0), "topk must be >= 1"),
    (dict(pos_emb="alibi"), "one of learned, sinusoidal, rope, none for this family"),
])
def test_bad_config(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**bad)


# -- GPU: FlexAttention against the PyTorch path (run on the device machine) -------------

@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS[:4] + VARIANTS[5:], ids=IDS[:4] + IDS[5:])
def test_gpu_flex_equals_reference(variant):
    torch.manual_seed(0)
    variant = dict(variant, window=variant.get("window", 5) * 20, stride=variant.get("stride", 1) * 16)  # sizes for T=1024
    model = GPT(GPTConfig(block_size=1024, vocab_size=65, n_layer=2, n_head=6, n_embd=384, pos_emb="rope", **variant)).cuda()
    assert model.kernel_paths("cuda") == ["flex"]
    idx = torch.randint(0, 65, (4, 1024), device="cuda")
    assert_fast_path_matches_reference(model, "use_flex", idx, model.transformer.h[0].attn.c_attn.weight)


@pytest.mark.gpu
def test_gpu_compiled_model_is_one_graph_equal_to_eager():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=65, n_layer=2, n_head=6, n_embd=384, window=64)).cuda()
    assert model.kernel_paths("cuda") == ["flex"]
    idx = torch.randint(0, 65, (8, 256), device="cuda")
    assert_compiled_matches_eager(model, idx, model.transformer.h[0].attn.c_attn.weight)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3]], ids=["local_global", "fixed"])
def test_gpu_graph_decoding_equals_recompute(variant):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=4, n_embd=128, pos_emb="rope",
                          **variant)).cuda().eval()
    prompt = torch.randint(0, 65, (2, 10), device="cuda")
    graphed = model.generate(prompt, 100, temperature=0, cuda_graph=True)
    eager = model.generate(prompt, 100, temperature=0, cuda_graph=False)
    assert torch.equal(graphed, eager)
    assert torch.equal(eager, generate_by_recompute(model, prompt, 100, temperature=0))


def test_a_compiled_kernel_past_its_recompile_limit_fails_loudly():
    # flex_attention past the limit would run an unfused T×T path: a new length must not slow a job silently
    from attn_kernels import flex  # noqa: F401  (its import sets dynamo's config)

    def double(x):
        return x * 2
    compiled = torch.compile(double, dynamic=False, backend="eager")
    with torch._dynamo.config.patch(recompile_limit=2):
        compiled(torch.ones(1)), compiled(torch.ones(2))
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            compiled(torch.ones(3))
    torch._dynamo.reset()
