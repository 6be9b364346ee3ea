"""The backbone and vanilla attention: shapes, causality, the three attention paths, cached decoding,
sampling, and the score-based hook (attend) a softmax-like family overrides."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_causal, decode_stepwise

from model import (
    GPT,
    POS_EMBS,
    BackboneConfig,
    CausalSelfAttention,
    GPTConfig,
    alibi_slopes,
    apply_rope,
    generate_by_recompute,
    sample_next,
)

GQA = [4, 2, 1]  # multi-head, grouped, multi-query


def tiny(pos_emb="learned", n_kv_head=4, **kw):
    torch.manual_seed(0)
    cfg = dict(block_size=16, vocab_size=11, n_layer=2, n_head=4, n_embd=32, n_kv_head=n_kv_head, pos_emb=pos_emb)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).double().eval()


def test_shapes_and_initial_loss():
    model = tiny()
    idx = torch.randint(0, 11, (3, 16))
    logits, loss = model(idx, torch.randint(0, 11, (3, 16)))
    assert loss.dtype == torch.double and logits.shape == (3, 16, 11)
    assert abs(loss.item() - math.log(11)) < 0.1  # an untrained model is close to uniform
    logits, loss = model(idx)
    assert loss is None and logits.shape == (3, 16, 11)


@pytest.mark.parametrize("impl", ["sdpa", "naive"])
@pytest.mark.parametrize("n_kv_head", GQA)
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_causality(pos_emb, n_kv_head, impl):
    model = tiny(pos_emb, n_kv_head, attn_impl=impl)
    assert_causal(model)


@pytest.mark.parametrize("n_kv_head", GQA)
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_sdpa_naive_and_maps_agree(pos_emb, n_kv_head):
    model = tiny(pos_emb, n_kv_head)
    idx = torch.randint(0, 11, (2, 16))
    fast, _ = model(idx)
    model.config.attn_impl = "naive"
    naive, _ = model(idx)
    mapped, _, maps = model(idx, return_attn=True)
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast, mapped, rtol=0, atol=1e-12)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 16, 16)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 16, dtype=torch.double))
    assert maps[0].triu(1).abs().max() == 0  # nothing above the diagonal: no future


def test_rope_is_a_rotation_of_each_pair_and_scores_depend_on_relative_position():
    # the reference: pair i of a head as a complex number, times e^{i·pos·θ_i}, θ_i = 10000^(-2i/D)
    x = torch.randn(2, 3, 7, 8, dtype=torch.double)
    pos = torch.arange(5, 12)
    theta = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.double) / 8)
    rotated = torch.view_as_complex(x.view(2, 3, 7, 4, 2)) * torch.polar(torch.ones(7, 4, dtype=torch.double),
                                                                        pos[:, None] * theta)
    torch.testing.assert_close(apply_rope(x, pos), torch.view_as_real(rotated).flatten(-2), rtol=0, atol=1e-6)
    q, k = x[:, :, :1], x[:, :, 1:2]  # q·k after rotating both by positions (m, n) depends on m - n only
    score = [(apply_rope(q, torch.tensor([m])) * apply_rope(k, torch.tensor([n]))).sum() for m, n in ((3, 1), (9, 7))]
    torch.testing.assert_close(score[0], score[1], rtol=0, atol=1e-5)


def test_alibi_chunks_equal_one_pass(monkeypatch):
    model = tiny("alibi")
    idx = torch.randint(0, 11, (2, 16))
    whole, _ = model(idx)
    monkeypatch.setattr(CausalSelfAttention, "alibi_chunk", 5)  # 16 rows in chunks of 5, 5, 5, 1
    chunked, _ = model(idx)
    torch.testing.assert_close(whole, chunked, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_kv_head", GQA)
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_cached_steps_equal_recompute(pos_emb, n_kv_head):
    model = tiny(pos_emb, n_kv_head)
    idx = torch.randint(0, 11, (2, 16))
    full, _ = model(idx)
    steps, _ = decode_stepwise(model, idx, 5)
    torch.testing.assert_close(steps, full[:, 4:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_generate_equals_recompute_past_block_size(pos_emb):
    model = tiny(pos_emb, 2)
    prompt = torch.randint(0, 11, (2, 5))
    fast = model.generate(prompt, 30, temperature=0)  # 35 tokens: twice past block_size 16
    ref = generate_by_recompute(model, prompt, 30, temperature=0)
    assert torch.equal(fast, ref)
    long_prompt = torch.randint(0, 11, (1, 40))  # a prompt longer than the context is cropped
    assert torch.equal(model.generate(long_prompt, 5, temperature=0),
                       generate_by_recompute(model, long_prompt, 5, temperature=0))


def test_sampling_draws_like_recompute():
    model = tiny("rope")
    prompt = torch.randint(0, 11, (3, 4))
    torch.manual_seed(5)
    fast = model.generate(prompt, 20, temperature=0.9, top_k=5)
    torch.manual_seed(5)
    ref = generate_by_recompute(model, prompt, 20, temperature=0.9, top_k=5)
    assert torch.equal(fast, ref)
    assert model.generate(prompt, 0).shape == (3, 4)


def test_top_k_limits_choices():
    model = tiny()
    prompt = torch.randint(0, 11, (64, 1))
    logits, _ = model(prompt)
    top2 = logits[:, -1].topk(2).indices
    out = model.generate(prompt, 1, temperature=5.0, top_k=2)[:, 1]
    assert all(o in t for o, t in zip(out.tolist(), top2.tolist()))


def test_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("bad, message", [
    (dict(n_embd=30, n_head=4), "divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), "divisible by n_kv_head"),
    (dict(pos_emb="rotary"), "pos_emb must be one of"),
    (dict(attn_impl="flash"), "attn_impl must be one of"),
    (dict(n_embd=12, n_head=4, pos_emb="rope"), "even head dim"),
    (dict(n_layer=0), "n_layer must be >= 1"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_config(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**bad)


def test_params_flops_and_optimizer_groups():
    model = tiny()
    n = sum(p.numel() for p in model.parameters())
    assert model.get_num_params(non_embedding=False) == n
    assert model.get_num_params() == n - 16 * 32  # the position table is not counted
    attn = 2 * 2 * 4 * 8 * 16  # per layer: scores and values, H * d * T multiply-adds each
    assert model.estimate_flops_per_token(16) == 6 * model.get_num_params() + 3 * 2 * attn
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    decayed, plain = opt.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n


def test_gradients_reach_every_parameter():
    model = tiny("alibi", 2).train()
    idx = torch.randint(0, 11, (2, 16))
    model(idx, idx)[1].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.gpu
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_gpu_paths_match_reference(pos_emb):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=256, vocab_size=65, n_layer=2, n_head=6, n_embd=384, n_kv_head=2, pos_emb=pos_emb)
    model = GPT(cfg).cuda().eval()
    idx = torch.randint(0, 65, (4, 256), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast, _ = model(idx)
        model.config.attn_impl = "naive"
        naive, _ = model(idx)
        model.config.attn_impl = "sdpa"
    ref, _ = model.double()(idx)
    for out in (fast, naive):
        assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("pos_emb", ["learned", "rope", "alibi"])
def test_gpu_cuda_graph_decoding_equals_eager(pos_emb):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=4, n_embd=128, pos_emb=pos_emb)).cuda().eval()
    prompt = torch.randint(0, 65, (2, 10), device="cuda")
    graphed = model.generate(prompt, 100, temperature=0, cuda_graph=True)  # runs past block_size 64
    eager = model.generate(prompt, 100, temperature=0, cuda_graph=False)
    ref = generate_by_recompute(model, prompt, 100, temperature=0)
    assert torch.equal(graphed, eager) and torch.equal(eager, ref)


def test_short_conv_compiled_as_shifted_products_is_the_same_convolution():
    # compiled, ShortConv sums shifted products (fused by the compiler) instead of calling conv1d: the same
    # function, forward and backward, and a prefill still remembers its last inputs
    from model import ShortConv
    torch.manual_seed(0)
    conv = ShortConv(6, 4).double()
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(2, 9, 6, dtype=torch.double, requires_grad=True)
    outs = []
    for fn in (conv, torch.compile(conv, backend="aot_eager", fullgraph=True)):
        past = torch.zeros(2, 6, 3, dtype=torch.double)
        y = fn(x, past)
        gx, gw = torch.autograd.grad((y * torch.linspace(-1, 1, 9)[:, None]).sum(), (x, conv.weight))
        outs.append((y, gx, gw, past))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.equal(outs[0][3], x[:, -3:].detach().transpose(1, 2))


# -- sampling ------------------------------------------------------------------------------------

def probabilities_drawn_from(monkeypatch, logits, **kw):
    """The probabilities sample_next hands to torch.multinomial."""
    seen, multinomial = [], torch.multinomial

    def spy(probs, num_samples, **kwargs):
        seen.append(probs)
        return multinomial(probs, num_samples, **kwargs)
    monkeypatch.setattr(torch, "multinomial", spy)
    sample_next(logits, **kw)
    return seen[0]


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sampling_divides_the_logits_by_the_temperature(monkeypatch, temperature):
    logits = torch.randn(3, 11)
    probs = probabilities_drawn_from(monkeypatch, logits, temperature=temperature)
    torch.testing.assert_close(probs, F.softmax(logits / temperature, dim=-1))


@pytest.mark.parametrize("k", [1, 3, 10, 11, 20])
def test_top_k_keeps_exactly_the_k_most_likely_tokens(monkeypatch, k):
    logits = torch.randn(4, 11)
    probs = probabilities_drawn_from(monkeypatch, logits, temperature=0.7, top_k=k)
    kept = probs > 0
    assert torch.equal(kept.sum(-1), torch.full((4,), min(k, 11)))
    assert torch.equal(kept, logits >= logits.topk(min(k, 11)).values[:, -1:])
    torch.testing.assert_close(probs, F.softmax((logits / 0.7).masked_fill(~kept, float("-inf")), dim=-1))


def test_alibi_slopes_are_the_papers():
    # Press et al.'s reference: 2^(-8i/n) for n a power of two; otherwise those of the power of two below,
    # then every other one of the power above
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([0.25, 0.0625, 0.015625, 0.00390625]))
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]))


# -- the score-based hook: a softmax-like family overrides attend and gets the rest ---------------

class SigmoidAttention(CausalSelfAttention):
    """Sigmoid attention (Ramapuram et al. 2024): σ(q·k/√d + b) weights, no normalisation, b = -log(block_size)."""

    def attend(self, q, k, v, q_pos, k_pos, return_attn):
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        w = torch.sigmoid(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) - math.log(self.config.block_size))
        w = w.masked_fill(k_pos[None, :] > q_pos[:, None], 0.0)  # the future, and a decoding step's unwritten cache
        return w @ v, w if return_attn else None


class SigmoidGPT(GPT):
    attention_class = SigmoidAttention


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_a_family_overriding_only_attend_is_causal_and_decodes_exactly(pos_emb):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=4, n_embd=32, n_kv_head=2, pos_emb=pos_emb)
    m = SigmoidGPT(cfg).double().eval()
    assert_causal(m)
    idx = torch.randint(0, 11, (2, 16))
    full, _, maps = m(idx, return_attn=True)
    softmax = GPT(cfg).double().eval()
    softmax.load_state_dict(m.state_dict())
    assert not torch.allclose(full, softmax(idx)[0])  # the hook is what runs
    assert maps[0].triu(1).abs().max() == 0 and maps[0][:, :, 0].sum(-1).max() < 0.5  # its own: causal, unnormalised
    steps, _ = decode_stepwise(m, idx, 5)  # a prefill, then steps over the static cache
    torch.testing.assert_close(steps, full[:, 4:], rtol=0, atol=1e-12)
    prompt = torch.randint(0, 11, (2, 5))
    assert torch.equal(m.generate(prompt, 30, temperature=0), generate_by_recompute(m, prompt, 30, temperature=0))


def test_the_backbone_config_has_no_softmax_options():
    assert not hasattr(BackboneConfig(), "attn_impl") and GPTConfig().attn_impl == "sdpa"
