"""
The GPT backbone, written once, and its vanilla softmax attention.

Backbone (GPT-2 / nanoGPT, pre-norm):

    h_0     = wte[idx] (+ wpe[pos] for learned or sinusoidal positions)
    h'_l    = h_l  + Attention(LayerNorm(h_l))
    h_{l+1} = h'_l + MLP(LayerNorm(h'_l)),      MLP(x) = W_2 GELU(W_1 x), 4x wide
    logits  = LayerNorm(h_L) wteᵀ                (input and output embeddings tied)

With `short_conv` = k > 0 the mixer's input is first u + conv_k(u), u = LayerNorm(h_l): a causal
depthwise convolution over the last k positions (Zoology / H3's pairing of a mixer with a short conv).

Softmax attention (Vaswani et al. 2017, "Attention Is All You Need"), causal:

    Attn(Q, K, V) = softmax(Q Kᵀ / √d + M) V,    M[i, j] = 0 if j <= i else -inf

computed by F.scaled_dot_product_attention, which on a GPU runs a flash kernel
(Dao et al. 2022) that never forms the T×T score matrix. `attn_impl='naive'`
forms it on purpose, for the memory-wall benchmark.

Grouped-query attention (Ainslie et al. 2023): `n_kv_head` K/V heads, each
shared by n_head / n_kv_head query heads. n_kv_head = n_head is plain
multi-head attention, n_kv_head = 1 multi-query attention.

Positions (`pos_emb`):
    learned     a trained table wpe[block_size, C] added to the input (GPT-2)
    sinusoidal  sin/cos of pos / 10000^(2i/C) added to the input (Vaswani et al.)
    rope        q and k rotated by position-dependent angles, so q·k depends on
                i - j only (Su et al. 2021, RoFormer)
    alibi       a per-head bias -m_h (i - j) added to the scores, slopes m_h a
                geometric sequence (Press et al. 2022)
    none        no position signal; the causal mask alone carries order (NoPE)

Adding an attention family: write model_<family>.py with an attention module that keeps the
contract below, subclass BackboneConfig with its fields (one meaning per field name across families:
hybrids mix them) and GPT with `attention_class = YourAttention`, and add one line to
lab/families.py's MODELS. The attention contract:

    __init__(config, layer_idx)
    kernel_path(device_type) -> the name of the implementation it runs there
    forward(x, pos, cache=None, return_attn=False) -> (y, attention map or None)
        x [B, T, C]; pos [T] absolute positions (a tensor, so a decode step has
        fixed shapes and can be replayed as a CUDA graph). With a cache and
        T > 1 the call is a prefill and pos is 0..T-1; with T == 1 it is one
        decoding step at position pos[0].
    new_cache(batch_size, device, dtype) -> this layer's decoding state (its tensors as attributes;
        constants of the model, not of the sequence, named with a leading _)
    forward_flops_per_token(T) -> forward FLOPs per token of the token mixing
        (scores and weighted sums; projections are counted by the backbone)

A softmax-like family (sigmoid attention, a different bias or normaliser) need not write all that:
subclass CausalSelfAttention and override only its score-based hook

    attend(q, k, v, q_pos, k_pos, return_attn) -> (y [B, H, Tq, D], weights [B, H, Tq, Tk] or None)
        q [B, H, Tq, D]; k, v [B, Hkv, Tk, D] (GQA: Hkv divides H); q_pos [Tq] and k_pos [Tk] absolute
        positions. In a decoding step Tk is the static cache's length (block_size), and keys at
        positions after q_pos are not yet written: mask them.

and it gets the projections, positions, training, prefill, the KV cache and decoding from
CausalSelfAttention. Its config can be GPTConfig itself (kernel_path then reports attn_impl, which
only softmax's attend reads: override kernel_path to name yours).

Decoding past block_size: a family whose decoding state is bounded by the
context (softmax's KV cache, learned positions) sets `streams = False`, and
generate() then conditions each token on the last block_size tokens, exactly
as nanoGPT's model(idx[:, -block_size:]) does: while the context fits, one
cached step per token; once it is full, each token recomputes the window.
A recurrent family sets `streams = True` and carries its state on forever.

Sequences longer than block_size: forward takes them wherever the positions allow (`extends`): every
scheme but the learned table, which has no row past block_size. Training's length is block_size; this
is for evaluating past it.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

POS_EMBS = ("learned", "sinusoidal", "rope", "alibi", "none")
ATTN_IMPLS = ("sdpa", "naive")


@dataclass
class BackboneConfig:
    """What every family shares: the backbone's sizes, positions and short convolution. A family's
    config subclasses it with that family's own options."""
    block_size: int = 256
    vocab_size: int = 65
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    n_kv_head: int | None = None  # None: = n_head
    dropout: float = 0.0
    bias: bool = False
    pos_emb: str = "learned"
    rope_base: float = 10000.0
    short_conv: int = 0  # > 0: each block's mixer input first passes a causal depthwise conv this wide (ShortConv)
    # the positions a family takes: rope and alibi act on softmax scores, which a recurrent family does not form
    pos_embs: ClassVar[tuple] = POS_EMBS

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "n_kv_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.pos_emb not in self.pos_embs:
            raise ValueError(f"pos_emb must be one of {', '.join(self.pos_embs)} for this family; got '{self.pos_emb}'")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head dim; got {self.head_dim}")
        if self.short_conv < 0:
            raise ValueError(f"short_conv must be >= 0 (0: off), got {self.short_conv}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head


@dataclass
class GPTConfig(BackboneConfig):
    """Softmax attention's config: the backbone's, and how the scores are computed."""
    attn_impl: str = "sdpa"  # 'naive' forms the T×T scores on purpose (the memory-wall benchmark)

    def __post_init__(self):
        super().__post_init__()
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {', '.join(ATTN_IMPLS)}; got '{self.attn_impl}'")


def wide_dtype(dtype):
    """At least float32: decoding states and long sums of small terms lose them in bf16 (float64 stays)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# Positions: shared helpers any family may use
# ---------------------------------------------------------------------------

def sinusoidal_embedding(pos, dim):
    """[T] positions -> [T, dim] sin/cos features (Vaswani et al. 2017), any length."""
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = pos.float()[:, None] * inv_freq[None, :]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)[:, :dim]


def apply_rope(x, pos, base=10000.0):
    """Rotate pairs (x[2i], x[2i+1]) of x [B, H, T, D] by angle pos * base^(-2i/D). q and k go through
    in one call, as heads of one x: a decoding step is kernel launches, and this is most of rope's."""
    D = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    angles = pos.float()[:, None] * inv_freq[None, :]  # [T, D/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((torch.addcmul(x1 * cos, x2, sin, value=-1), torch.addcmul(x2 * cos, x1, sin)), dim=-1).flatten(-2)


def alibi_slopes(n_head):
    """Per-head slopes m_h = 2^(-8h/n) (Press et al. 2022), with their fix for n not a power of 2."""
    def powers(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(n_head).is_integer():
        return torch.tensor(powers(n_head))
    p = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(powers(p) + powers(2 * p)[0::2][: n_head - p])


def alibi_bias(slopes, q_pos, k_pos):
    """[H, Tq, Tk] additive bias: -m_h (i - j) where j <= i, -inf for the future."""
    dist = (q_pos[:, None] - k_pos[None, :]).float()
    bias = -slopes.to(dist.device)[:, None, None] * dist
    return bias.masked_fill(dist < 0, float("-inf"))


# ---------------------------------------------------------------------------
# Softmax attention
# ---------------------------------------------------------------------------

class KVCache:
    """Static K/V buffers [B, n_kv_head, block_size, head_dim] for one layer.

    Writes go to the token's position in place, so a decoding step has the same
    shapes at every position (what lets one CUDA graph serve them all).
    """

    def __init__(self, batch_size, n_kv_head, max_len, head_dim, device, dtype):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.positions = torch.arange(max_len, device=device)

    def write(self, k, v, pos):
        self.k.index_copy_(2, pos, k.to(self.k.dtype))
        self.v.index_copy_(2, pos, v.to(self.v.dtype))


def naive_attention(q, k, v, bias):
    """softmax(q kᵀ/√d + bias) v with the [B, H, Tq, Tk] scores in memory. Returns (y, weights)."""
    if k.shape[1] != q.shape[1]:  # GQA: each K/V head serves a group of query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1])) + bias.to(q.dtype)
    low_precision = scores.dtype in (torch.float16, torch.bfloat16)
    weights = F.softmax(scores.float() if low_precision else scores, dim=-1).to(q.dtype)
    return weights @ v, weights


def causal_bias(T, device):
    return torch.full((T, T), float("-inf"), device=device).triu(1)


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal softmax attention with a static KV cache."""

    # Query rows per chunk when ALiBi's bias must be given to SDPA as a tensor:
    # memory stays O(H · chunk · T) instead of the O(H · T²) of one big bias.
    alibi_chunk = 256

    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.config = config
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * self.head_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_head * self.head_dim, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.pos_emb == "alibi":
            self.register_buffer("slopes", alibi_slopes(config.n_head), persistent=False)

    def new_cache(self, batch_size, device, dtype):
        return KVCache(batch_size, self.n_kv_head, self.config.block_size, self.head_dim, device, dtype)

    def kernel_path(self, device_type):
        return self.config.attn_impl

    def forward_flops_per_token(self, T):
        # q·k and weights·v, 2 FLOPs per multiply-add, over all T keys (nanoGPT's convention)
        return 2 * 2 * self.n_head * self.head_dim * T

    def qkv(self, x, pos):
        """x [B, T, C] -> q [B, H, T, D] and k, v [B, Hkv, T, D], q and k rotated when pos_emb='rope'."""
        B, T, C = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        qk, v = self.c_attn(x).split([(H + Hkv) * D, Hkv * D], dim=2)
        qk = qk.view(B, T, H + Hkv, D).transpose(1, 2)
        if self.config.pos_emb == "rope":
            qk = apply_rope(qk, pos, self.config.rope_base)
        q, k = qk.split([H, Hkv], dim=1)
        return q, k, v.view(B, T, Hkv, D).transpose(1, 2)

    def forward(self, x, pos, cache=None, return_attn=False):
        B, T, C = x.shape
        q, k, v = self.qkv(x, pos)
        k_pos = pos
        if cache is not None:
            cache.write(k, v, pos)
            if T == 1:  # one decoding step: attend over the whole static cache, masked past pos
                k, v, k_pos = cache.k, cache.v, cache.positions
        y, att = self.attend(q, k, v, pos, k_pos, return_attn)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_dropout(self.c_proj(y)), att

    def attend(self, q, k, v, q_pos, k_pos, return_attn):
        """The score-based hook (module docstring): softmax over the keys at or before each query."""
        # no dropout on the weights: the other families form none to drop, and regularisation stays equal
        gqa = self.n_kv_head != self.n_head
        alibi = self.config.pos_emb == "alibi"
        decoding = q.shape[2] == 1 and k.shape[2] != 1
        if return_attn or self.config.attn_impl == "naive":
            bias = alibi_bias(self.slopes, q_pos, k_pos) if alibi else \
                torch.zeros(q.shape[2], k.shape[2], device=q.device).masked_fill(k_pos[None] > q_pos[:, None], float("-inf"))
            return naive_attention(q, k, v, bias)
        if decoding:
            mask = alibi_bias(self.slopes, q_pos, k_pos).to(q.dtype) if alibi else (k_pos <= q_pos)[None, :]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa), None
        if not alibi:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa), None
        chunks = []
        for s in range(0, q.shape[2], self.alibi_chunk):  # causal: rows s..e need keys < e only
            e = min(s + self.alibi_chunk, q.shape[2])
            bias = alibi_bias(self.slopes, q_pos[s:e], k_pos[:e]).to(q.dtype)
            chunks.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e], attn_mask=bias,
                                                         enable_gqa=gqa))
        return torch.cat(chunks, dim=2), None


# ---------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class ShortConv(nn.Module):
    """A causal depthwise convolution over time, y_t = Σ_{i<size} w[size-1-i] x_{t-i} (the last tap on x_t,
    as nn.Conv1d and FLA's causal_conv1d store it), zero-initialised. Zoology
    and H3 pair every sequence mixer with one: it hands each position its predecessors, which recall
    (MQAR) needs before attention can match keys. The delta family convolves its q, k and v with it."""

    def __init__(self, channels, size):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, 1, size))

    def forward(self, x, past=None):
        """x [B, T, C]; past [B, C, size-1]: the inputs before x when decoding (a prefill from position 0,
        or one step), updated in place."""
        size = self.weight.shape[-1]
        if past is not None and x.shape[1] == 1:
            window = torch.cat([past, x.transpose(1, 2).to(past.dtype)], dim=2)
            past.copy_(window[:, :, 1:])
            return (window * self.weight[:, 0].to(past.dtype)).sum(-1)[:, None].to(x.dtype)
        xt = x.transpose(1, 2)
        if past is not None:  # a prefill: remember its last size-1 inputs (zeros before the start)
            past.copy_(F.pad(xt, (size - 1, 0))[:, :, xt.shape[2]:].to(past.dtype))
        if torch.compiler.is_compiling():
            # the same sum as size shifted products, which the compiler fuses (with the SiLU after) into one
            # pass over x, where a separate depthwise-convolution kernel is a third of a DeltaNet layer's GPU time
            # at 65,536 tokens (results/h100-delta)
            w, padded = self.weight[:, 0].to(x.dtype), F.pad(x, (0, 0, size - 1, 0))
            return sum(padded[:, i:i + x.shape[1]] * w[:, i] for i in range(size))
        return F.conv1d(F.pad(xt, (size - 1, 0)), self.weight.to(x.dtype), groups=x.shape[-1]).transpose(1, 2)


class Block(nn.Module):
    def __init__(self, config, attention):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.conv = ShortConv(config.n_embd, config.short_conv) if config.short_conv else None
        self.attn = attention
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def new_cache(self, batch_size, device, dtype):
        """The attention's decoding state, and with a short convolution its last inputs too."""
        cache = self.attn.new_cache(batch_size, device, dtype)
        if self.conv is None:
            return cache
        return torch.zeros(batch_size, self.conv.weight.shape[0], self.conv.weight.shape[-1] - 1, device=device,
                           dtype=wide_dtype(dtype)), cache

    def forward(self, x, pos, cache=None, return_attn=False):
        h = self.ln_1(x)
        if self.conv is not None:
            past, cache = cache if cache is not None else (None, None)
            h = h + self.conv(h, past)  # zero weights at first: the block starts as without it
        a, att = self.attn(h, pos, cache, return_attn)
        x = x + a
        return x + self.mlp(self.ln_2(x)), att


class GPT(nn.Module):
    attention_class = CausalSelfAttention
    streams = False  # see the module docstring: decoding past block_size

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, self.new_attention(i)) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        if config.pos_emb == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @property
    def extends(self):
        """Whether forward takes sequences longer than block_size (see the module docstring)."""
        return self.config.pos_emb != "learned"

    def new_attention(self, layer_idx):
        """Layer layer_idx's attention: the family's, from the model's config (a hybrid picks per layer)."""
        return self.attention_class(self.config, layer_idx)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameters, without the position table by default (the token table is tied to the head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    # -- forward -------------------------------------------------------------

    def _embed(self, idx, pos):
        x = self.transformer.wte(idx)
        if self.config.pos_emb == "learned":
            x = x + self.transformer.wpe(pos)
        elif self.config.pos_emb == "sinusoidal":
            x = x + sinusoidal_embedding(pos, self.config.n_embd).to(x.dtype)
        return self.transformer.drop(x)

    def forward(self, idx, targets=None, return_attn=False):
        """idx [B, T] -> (logits [B, T, vocab], loss or None[, per-layer attention maps])."""
        B, T = idx.shape
        if T > self.config.block_size and not self.extends:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}, and learned "
                             "positions have no row past it: train with pos_emb=rope, alibi, sinusoidal or none")
        pos = torch.arange(T, device=idx.device)
        x = self._embed(idx, pos)
        maps = []
        for block in self.transformer.h:
            x, att = block(x, pos, return_attn=return_attn)
            maps.append(att)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            flat = logits.view(-1, logits.size(-1))
            loss = F.cross_entropy(flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat,
                                   targets.reshape(-1), ignore_index=-1)
        return (logits, loss, maps) if return_attn else (logits, loss)

    # -- decoding --------------------------------------------------------------

    def new_caches(self, batch_size, device=None, dtype=None):
        p = self.lm_head.weight
        return [b.new_cache(batch_size, device or p.device, dtype or p.dtype) for b in self.transformer.h]

    def step(self, idx, pos, caches):
        """Run idx [B, T] at positions pos [T] through the caches; logits of the last position [B, vocab].

        T > 1 is a prefill (pos = 0..T-1), T == 1 one decoding step.
        """
        x = self._embed(idx, pos)
        for block, cache in zip(self.transformer.h, caches):
            x, _ = block(x, pos, cache)
        return self.lm_head(self.transformer.ln_f(x[:, -1]))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, cuda_graph=None, on_token=None):
        """Append max_new_tokens sampled tokens to idx [B, T0]; temperature 0 is greedy.

        Each token is drawn from the logits that model(context) gives, where the
        context is everything so far (streams) or its last block_size tokens
        (softmax): the cache only makes that cheaper, never different.
        A decoding step reads its input token and position from device tensors
        and writes its output there, so it needs nothing from the host: on CUDA
        it is captured once as a CUDA graph and each new token is one replay,
        since at batch 1 the cost is kernel launches, not arithmetic.
        on_token(i), if given, is called on the host once the i-th new token has
        been queued (i = 1 is the prefill's), e.g. to time the steps between two.
        """
        B, T0 = idx.shape
        L, device = self.config.block_size, idx.device
        dtype = torch.get_autocast_dtype("cuda") if idx.is_cuda and torch.is_autocast_enabled("cuda") else None
        out = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=device)
        out[:, :T0] = idx
        if max_new_tokens == 0:
            return out
        caches = self.new_caches(B, device, dtype)
        window = torch.arange(L, device=device)
        t = torch.tensor([T0], device=device)  # where the next token goes

        def emit(logits):
            out.index_copy_(1, t, sample_next(logits, temperature, top_k)[:, None])
            t.add_(1)

        def cached_step():  # the newest token, at position t-1, joins the cache
            pos = t - 1
            emit(self.step(out.index_select(1, pos), pos, caches))

        def window_step():  # the context is full: recompute its last L tokens, exactly as model(idx[:, -L:])
            emit(self.step(out.index_select(1, t - L + window), window, [None] * len(caches)))

        if cuda_graph if cuda_graph is not None else idx.is_cuda:
            cached_step, window_step = CapturedStep(cached_step), CapturedStep(window_step)
        n = T0 if self.streams else min(T0, L)
        emit(self.step(idx[:, T0 - n:], window[:n] if n <= L else torch.arange(n, device=device), caches))  # prefill
        if on_token:
            on_token(1)
        for i in range(2, max_new_tokens + 1):  # the i-th new token, from the context of length T0 + i - 1
            cached_step() if self.streams or T0 + i - 1 <= L else window_step()
            if on_token:
                on_token(i)
        return out

    # -- accounting and optimisation ---------------------------------------------

    def kernel_paths(self, device_type):
        """Which implementation each attention layer runs on this device (e.g. 'fla', 'pytorch', 'sdpa')."""
        return sorted({block.attn.kernel_path(device_type) for block in self.transformer.h})

    def estimate_flops_per_token(self, T):
        """Training FLOPs per token at context T: 6 per parameter (fwd+bwd) plus 3x each layer's mixing."""
        mixing = sum(block.attn.forward_flops_per_token(T) for block in self.transformer.h)
        return 6 * self.get_num_params() + 3 * mixing

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; matrices decay, vectors (norms, biases) do not; fused kernel on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")


@torch.no_grad()
def generate_by_recompute(model, idx, max_new_tokens, temperature=1.0, top_k=None):
    """The reference decoder (nanoGPT's): one full forward over the context per new token, no cache."""
    for _ in range(max_new_tokens):
        context = idx if model.streams else idx[:, -model.config.block_size:]
        logits, _ = model(context)
        idx = torch.cat((idx, sample_next(logits[:, -1], temperature, top_k)[:, None]), dim=1)
    return idx


def sample_next(logits, temperature=1.0, top_k=None):
    """[B, vocab] logits -> [B] next tokens. temperature 0 picks the argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1).squeeze(1)


class CapturedStep:
    """fn() run eagerly for its first calls, then captured as a CUDA graph and replayed.

    fn must read and write only tensors that outlive it. The eager warm-up calls
    are real steps, run on a side stream so lazy initialisation (cuBLAS handles,
    kernel choice) stays out of the graph; the capture itself runs nothing, so
    the call that captures replays once.
    """

    warmup_calls = 2

    def __init__(self, fn):
        self.fn, self.calls, self.graph = fn, 0, None

    def __call__(self):
        if self.graph is None and self.calls < self.warmup_calls:
            self.calls += 1
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.fn()
            torch.cuda.current_stream().wait_stream(stream)
            return
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.fn()
        self.graph.replay()
