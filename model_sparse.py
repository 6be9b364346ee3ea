"""
Sparse attention: softmax attention in which each query sees only a fixed (or content-chosen)
subset of the past, so compute and memory follow the number of allowed pairs instead of T².

    y_i = Σ_{j ∈ A(i)} softmax_j(q_i·k_j / √d) v_j,        A(i) ⊆ {0..i}

Patterns A(i) (`pattern`; one predicate per pattern below, shared by the dense masks, the
FlexAttention mask_mods and the decoding masks):
    sliding_window  i - window < j ≤ i                                     (local attention)
    local_global    the window, plus the first n_global tokens: j < n_global
                    (Longformer's globals, Beltagy et al. 2020, kept causal)
    strided         i - j < stride, or (i - j) a multiple of stride        (Child et al. 2019)
    fixed           j in i's own block of `stride` tokens, or j among the last `summary`
                    positions of an earlier block: j mod stride ≥ stride - summary
                                                                           (Child et al. 2019)
    topk            the `topk` past keys with the highest q·k (content-based, as in Explicit
                    Sparse Transformer, Zhao et al. 2019). Scores are computed densely (in
                    query blocks), so it saves no compute: it is here to compare quality.

GPU: torch.nn.attention.flex_attention with a BlockMask of 128×128 tiles (Dong et al. 2024,
"Flex Attention"). Tiles the pattern leaves empty are skipped, so a 512-token window at T=65,536
touches ~5 tiles per row instead of 512. The BlockMask is built once per (pattern, T, device)
and reused by every layer and step; mask_mods are cached per setting so the compiled kernel is
reused (each new mask function object would recompile it). Flex compiles per length too, so it
runs at lengths that are whole tiles (training's block_size); generation's growing contexts do not.
CPU (FlexAttention has no backward there), prefill and the reference: query blocks of 128 rows,
each against only the keys its pattern can reach, through SDPA with a boolean mask: never a T×T
matrix. Neither path drops attention weights (dropout): FlexAttention has no dropout, and both
must compute the same function; residual dropout stays.

Decoding: sliding_window and local_global keep a ring buffer of the last `window` keys and
values plus the n_global first ones: memory and time per token flat in the context. With
positions that are not a learned table (rope, sinusoidal, none) the model streams past
block_size. strided, fixed and topk reach back arbitrarily far and use the backbone's full
static KV cache.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import model
from attn_kernels.flex import FLEX_BLOCK, built_once, compiled_flex_attention, new_block_mask

PATTERNS = ("sliding_window", "local_global", "strided", "fixed", "topk")
RING_PATTERNS = ("sliding_window", "local_global")  # bounded decoding state
QUERY_BLOCK = 128  # rows per block on the PyTorch path


# -----------------------------------------------------------------------------
# the patterns: one predicate each, over broadcastable query/key position tensors

def sliding_window(q, k, window, causal=True):
    d = q - k
    return ((d >= 0) & (d < window)) if causal else (d.abs() < window)


def local_global(q, k, window, n_global, causal=True):
    is_global = (k < n_global) if causal else ((k < n_global) | (q < n_global))
    return sliding_window(q, k, window, causal) | (is_global & (k <= q) if causal else is_global)


def strided(q, k, stride, causal=True):
    d = q - k if causal else (q - k).abs()
    return (d >= 0) & ((d < stride) | (d % stride == 0))


def fixed(q, k, stride, summary, causal=True):
    same_block = q // stride == k // stride
    summary_col = k % stride >= stride - summary
    return ((k <= q) & (same_block | summary_col)) if causal else (same_block | summary_col)


def pattern_allows(pattern, q, k, window, n_global, stride, summary):
    if pattern == "sliding_window":
        return sliding_window(q, k, window)
    if pattern == "local_global":
        return local_global(q, k, window, n_global)
    if pattern == "strided":
        return strided(q, k, stride)
    if pattern == "fixed":
        return fixed(q, k, stride, summary)
    return k <= q  # topk: causal here; the content choice is made on the scores


def _grid(T):
    i = torch.arange(T)
    return i[:, None], i[None, :]


def sliding_window_mask(T, window, causal=True):
    """[T, T] bool: True where query i may attend key j."""
    return sliding_window(*_grid(T), window, causal)


def local_global_mask(T, window, n_global, causal=True):
    return local_global(*_grid(T), window, n_global, causal)


def strided_mask(T, stride, causal=True):
    return strided(*_grid(T), stride, causal)


def fixed_mask(T, stride, summary, causal=True):
    return fixed(*_grid(T), stride, summary, causal)


@dataclass
class GPTConfig(model.BackboneConfig):
    pos_embs = ("learned", "sinusoidal", "rope", "none")
    pattern: str = "sliding_window"
    window: int = 64  # sliding_window, local_global
    n_global: int = 4  # local_global
    stride: int = 16  # strided, fixed
    summary: int = 4  # fixed: Sparse Transformer's c
    topk: int = 32  # topk
    use_flex: bool = True  # FlexAttention on CUDA; False: the PyTorch path everywhere

    def __post_init__(self):
        super().__post_init__()
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}; got '{self.pattern}'")
        need = {"sliding_window": ("window",), "local_global": ("window", "n_global"), "strided": ("stride",),
                "fixed": ("stride", "summary"), "topk": ("topk",)}[self.pattern]
        for name in need:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 for pattern '{self.pattern}', got {getattr(self, name)}")
        if self.pattern == "local_global" and self.n_global >= self.block_size:
            raise ValueError(f"n_global ({self.n_global}) must be < block_size ({self.block_size})")
        if self.pattern == "fixed" and self.summary > self.stride:
            raise ValueError(f"summary ({self.summary}) must be <= stride ({self.stride})")

    def allowed(self, q, k):
        """The pattern's predicate for query positions q and key positions k (broadcast), causal."""
        return pattern_allows(self.pattern, q, k, self.window, self.n_global, self.stride, self.summary)

    def keys_for(self, start, end, device=None):
        """Key positions that queries start..end-1 can reach: the window's span plus the globals."""
        if self.pattern not in RING_PATTERNS:
            return torch.arange(end, device=device)
        lo = max(0, start - self.window + 1)
        g = min(self.n_global, lo) if self.pattern == "local_global" else 0
        return torch.cat([torch.arange(g, device=device), torch.arange(lo, end, device=device)])


# -----------------------------------------------------------------------------
# FlexAttention: one BlockMask per setting, shared by every layer and step

@built_once
def block_mask(pattern, window, n_global, stride, summary, T, device):
    def mod(b, h, q_idx, kv_idx):
        return pattern_allows(pattern, q_idx, kv_idx, window, n_global, stride, summary)
    return new_block_mask(mod, T, T, device)


# -----------------------------------------------------------------------------
# the reference (CPU, prefill): query blocks against only the keys they can reach

def repeat_kv(x, n_head):
    return x.repeat_interleave(n_head // x.shape[1], dim=1)


def topk_keep(scores, allowed, topk):
    """Keep, among the allowed keys of each row, the topk highest scores."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    kth = scores.topk(min(topk, scores.shape[-1]), dim=-1).values[..., -1:]
    return allowed & (scores >= kth)


def scaled_scores(q, k):
    return (q @ repeat_kv(k, q.shape[1]).transpose(-1, -2)) / math.sqrt(q.shape[-1])


def blocked_sparse_attention(q, k, v, config, q_pos=None):
    """Pattern attention of q [B, H, T, D] over k, v [B, Hkv, T, D]; memory O(T · keys per block)."""
    T = q.shape[2]
    q_pos = torch.arange(T, device=q.device) if q_pos is None else q_pos
    out = []
    for s in range(0, T, QUERY_BLOCK):
        e = min(s + QUERY_BLOCK, T)
        keys = config.keys_for(s, e, q.device)  # made on the device: no copy
        qb, kb, vb = q[:, :, s:e], k.index_select(2, keys), v.index_select(2, keys)
        allowed = config.allowed(q_pos[s:e, None], keys[None, :])
        if config.pattern == "topk":
            allowed = topk_keep(scaled_scores(qb, kb), allowed, config.topk)
        out.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=allowed, enable_gqa=kb.shape[1] != qb.shape[1]))
    return torch.cat(out, dim=2)


# -----------------------------------------------------------------------------
# decoding state for the windowed patterns

class RingCache:
    """The n_global first keys/values, and the last `window` in a ring indexed by position % window."""

    def __init__(self, batch_size, config, device, dtype):
        Hkv, D = config.n_kv_head, config.head_dim
        g = config.n_global if config.pattern == "local_global" else 0
        n = g + config.window
        self.k = torch.zeros(batch_size, Hkv, n, D, device=device, dtype=dtype)
        self.v = torch.zeros(batch_size, Hkv, n, D, device=device, dtype=dtype)
        self.positions = torch.full((n,), -1, device=device)  # -1: empty
        self.n_global, self.window = g, config.window

    def write(self, k, v, pos):
        if pos.shape[0] > 1:  # a prefill: of its positions only the globals and the last `window` stay
            keep = ((pos < self.n_global) | (pos > pos[-1] - self.window)).nonzero().flatten()
            k, v, pos = k[:, :, keep], v[:, :, keep], pos[keep]
        slots = torch.where(pos < self.n_global, pos, self.n_global + pos % self.window)
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        self.positions.index_copy_(0, slots, pos)


# -----------------------------------------------------------------------------
# the attention module

class SparseAttention(model.CausalSelfAttention):
    """Softmax attention (the backbone's projections, GQA and RoPE) restricted to the pattern."""

    def new_cache(self, batch_size, device, dtype):
        c = self.config
        if c.pattern in RING_PATTERNS:
            return RingCache(batch_size, c, device, dtype)
        return model.KVCache(batch_size, c.n_kv_head, c.block_size, c.head_dim, device, dtype)

    def kernel_path(self, device_type):
        return "flex" if device_type == "cuda" and self.config.use_flex and self.config.pattern != "topk" else "pytorch"

    def mean_keys(self, T):
        """Average number of keys a query attends at context T (counted on the pattern, in row blocks)."""
        c = self.config
        if c.pattern == "topk":
            return sum(min(c.topk, i + 1) for i in range(T)) / T
        total = 0
        for s in range(0, T, QUERY_BLOCK):
            keys = c.keys_for(s, min(s + QUERY_BLOCK, T))
            total += int(c.allowed(torch.arange(s, min(s + QUERY_BLOCK, T))[:, None], keys[None, :]).sum())
        return total / T

    def forward_flops_per_token(self, T):
        flops = 2 * 2 * self.n_head * self.head_dim * self.mean_keys(T)
        return flops + (2 * self.n_head * self.head_dim * T if self.config.pattern == "topk" else 0)  # dense scores

    def forward(self, x, pos, cache=None, return_attn=False):
        B, T, C = x.shape
        q, k, v = self.qkv(x, pos)
        att = None
        if return_attn:
            y, att = self._attend_with_map(q, k, v, pos)
        elif cache is not None and T == 1:
            cache.write(k, v, pos)
            y = self._step(q, cache, pos)
        else:
            if cache is not None:
                cache.write(k, v, pos)
            if cache is None and T % FLEX_BLOCK == 0 and self.kernel_path(x.device.type) == "flex":
                y = self._flex(q, k, v)
            else:
                y = blocked_sparse_attention(q, k, v, self.config, pos)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), att

    def _flex(self, q, k, v):
        c = self.config
        mask = block_mask(c.pattern, c.window, c.n_global, c.stride, c.summary, q.shape[2], str(q.device))
        return compiled_flex_attention(q, k, v, block_mask=mask, enable_gqa=self.n_kv_head != self.n_head)

    def _step(self, q, cache, pos):
        allowed = (cache.positions >= 0) & self.config.allowed(pos[:, None], cache.positions[None, :])
        k, v = cache.k.to(q.dtype), cache.v.to(q.dtype)
        if self.config.pattern == "topk":
            allowed = topk_keep(scaled_scores(q, k), allowed, self.config.topk)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=self.n_kv_head != self.n_head)

    def _attend_with_map(self, q, k, v, pos):
        """The dense [B, H, T, T] masked weights, only when asked for."""
        allowed = self.config.allowed(pos[:, None], pos[None, :])
        if self.config.pattern == "topk":
            allowed = topk_keep(scaled_scores(q, k), allowed, self.config.topk)
        bias = torch.zeros(allowed.shape, device=q.device).masked_fill(~allowed, float("-inf"))
        return model.naive_attention(q, k, v, bias)


class GPT(model.GPT):
    attention_class = SparseAttention

    @property
    def streams(self):  # a ring-buffer pattern without a position table carries on past block_size
        return self.config.pattern in RING_PATTERNS and self.config.pos_emb != "learned"
