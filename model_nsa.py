"""
Native Sparse Attention (Yuan et al. 2025, "Native Sparse Attention: Hardware-Aligned and Natively
Trainable Sparse Attention"): each query reads the past three ways and mixes them with learned gates,

    y_t = g_cmp · Attn(q_t, K̃, Ṽ) + g_slc · Attn(q_t, K[S_t], V[S_t]) + g_win · Attn(q_t, K[W_t], V[W_t])
    (g_cmp, g_slc, g_win) = sigmoid(W_g x_t)                                         per query head

compressed   K̃_i = φ(k[i·d : i·d + l]) summarises the i-th block of l = `cmp_block` keys taken every
             d = `cmp_stride` tokens (Ṽ alike); φ is the mean (`compression='mean'`, as
             flash-linear-attention) or a small MLP over the block with intra-block positions
             (`'mlp'`, as the paper). Block i is visible to t once complete: i·d + l - 1 <= t; a query
             with no complete block yet gets 0 from this branch.
selected     the compressed softmax p_t,i, summed over the query heads of a GQA group, scores the
             blocks of l' = `select_block` tokens: block j gets Σ_i p_t,i · |block_i ∩ block_j| / l
             (with l = d = l' exactly p_t,j). S_t is the first block, the query's current and previous
             blocks (always), and the best-scored others up to n = `select_count` blocks, shared by
             the group; the query attends every key of S_t at full resolution, keys after t masked.
             Selection is an index choice, so no gradient flows through it (as in the paper).
window       W_t = the last w = `window_size` keys, t - w < j <= t (0: no window branch).

Keys and values are shared by the three branches (as flash-linear-attention's layer; the paper gives
each branch its own). Queries get `n_head` heads of `head_size` (default n_embd / n_head), keys and
values `n_kv_head`: the kernels process a GQA group's query heads together, which is where NSA gets
its speed. At the baby GPT's context of 256 the paper's sizes (l=32, d=16, l'=64, n=16, w=512) would
let every branch see everything, so its config scales them down; the long-context benchmarks do not.

Paths (kernel_path):
    pytorch      the reference and the CPU path: query blocks of 128 rows, each against the keys before
                 its end, with boolean masks (O(T · 128) memory per block, O(T²) time; never T×T).
    fla+flex     on CUDA where FLA can run the layout (fla_layout): FLA's parallel_nsa computes the
                 compressed and selected branches (attn_kernels/fla_nsa.py), FlexAttention the window.
    flex         on CUDA otherwise: FlexAttention for all three branches (attn_kernels/flex.py), the selection
                 a BlockMask of 128×128 tiles built per forward from the chosen blocks.
    flex+triton  with use_triton: as flex, but the selection and the selected branch in Triton
                 (attn_kernels/nsa_triton.py): each (token, K/V head) reads just its n blocks for the whole
                 group, as the paper's kernel does, so no tile is left dense by neighbouring queries'
                 different choices; custom operators, so a compiled model is one graph.
Decoding keeps the full static KV cache (selection may reach anything) and the compressed keys and
values, each written as its block completes; a step scores the compressed blocks, then gathers only
the n selected blocks and the window from the cache.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import model
from attn_kernels import fla_nsa, flex, nsa_triton
from attn_kernels.flex import FLEX_BLOCK
from attn_kernels.nsa_triton import triton_takes

COMPRESSIONS = ("mean", "mlp")
QUERY_BLOCK = 128  # rows per block on the PyTorch path
# float32 scores per block of query rows when scoring the selection (1 GiB): fewer, larger launches, a
# layer step at T = 65,536 30.4 ms against 46.6 in blocks of 1,024 rows (results/h100-nsa)
SELECT_SCORES = 2**28
# FlexAttention's backward runs a program per key tile and K/V head: the compressed branch's few tiles need
# its keys repeated per query head to fill the GPU (75.5 -> 46.6 ms a layer step at T = 65,536), the
# window's many tiles do not, and run slower so (results/h100-nsa)
REPEAT_KV_CMP, REPEAT_KV_WIN = True, False


def per_query_head(t, H):
    return t.repeat_interleave(H // t.shape[1], dim=1) if t.shape[1] != H else t


@dataclass
class GPTConfig(model.BackboneConfig):
    pos_embs = ("learned", "sinusoidal", "rope", "none")
    cmp_block: int = 32  # l: tokens per compressed block
    cmp_stride: int = 32  # d: a compressed block starts every d tokens
    select_block: int = 32  # l': tokens per selectable block
    select_count: int = 4  # n: blocks each query reads, the first, previous and current included
    window_size: int = 64  # the sliding-window branch's span; 0: no window branch (FLA's name)
    compression: str = "mean"
    head_size: int = 0  # 0: n_embd // n_head
    use_fla: bool = True  # flash-linear-attention's kernels on CUDA where the layout allows
    use_flex: bool = True  # FlexAttention on CUDA otherwise; False: the PyTorch path everywhere
    use_triton: bool = False  # on the flex path, the selection and the selected branch in Triton (attn_kernels/nsa_triton.py)

    def __post_init__(self):
        if self.head_size < 0:
            raise ValueError(f"head_size must be >= 0 (0: n_embd // n_head), got {self.head_size}")
        super().__post_init__()
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}; got '{self.compression}'")
        for name in ("cmp_block", "cmp_stride", "select_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cmp_block % self.cmp_stride or self.select_block % self.cmp_stride:
            raise ValueError(f"cmp_block ({self.cmp_block}) and select_block ({self.select_block}) must be "
                             f"multiples of cmp_stride ({self.cmp_stride})")
        if self.select_count < 3:
            raise ValueError(f"select_count must be >= 3 (the first, previous and current blocks are always "
                             f"read), got {self.select_count}")
        if self.window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0: no window branch), got {self.window_size}")
        if self.use_triton and not triton_takes(self.select_block):
            raise ValueError(f"use_triton needs select_block a power of two >= 16, got {self.select_block}")

    @property
    def head_dim(self):
        return self.head_size or self.n_embd // self.n_head

    @property
    def head_group(self):  # query heads per K/V head
        return self.n_head // self.n_kv_head

    def n_cmp_blocks(self, T):
        """Compressed blocks that fit in T tokens."""
        return 0 if T < self.cmp_block else (T - self.cmp_block) // self.cmp_stride + 1

    def n_select_blocks(self, T):
        """Selectable blocks that T tokens start (the last may be partial)."""
        return -(-T // self.select_block)

    def fla_layout(self):
        """None if FLA's parallel_nsa computes this configuration's compressed and selected branches, else why not."""
        if self.compression != "mean":
            return "compression='mlp'"
        return fla_nsa.layout_refusal(self.cmp_block, self.cmp_stride, self.select_block, self.head_group,
                                      self.select_count, self.head_dim)


# -----------------------------------------------------------------------------
# the reference: the three branches for a block of queries, over keys at positions 0..Tk-1

def compress(x, config, mlp=None):
    """x [B, Hkv, T, D] -> [B, Hkv, Tc, D]: block i = x[i·d : i·d + l] pooled by the mean or by mlp."""
    B, H, T, D = x.shape
    n = config.n_cmp_blocks(T)
    if n == 0:
        return x.new_zeros(B, H, 0, D)
    return pool(x.unfold(2, config.cmp_block, config.cmp_stride)[:, :, :n].transpose(-1, -2), mlp)


def pool(blocks, mlp=None):
    """[..., l, D] blocks -> [..., D]: φ, the mean or the MLP."""
    return blocks.mean(-2) if mlp is None else mlp(blocks)


class BlockMLP(nn.Module):
    """The paper's φ: an MLP over a block's l keys (or values) with a learned intra-block position added."""

    def __init__(self, block, dim):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(block, dim))
        self.fc1 = nn.Linear(block * dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, blocks):  # [..., l, D] -> [..., D]
        return self.fc2(F.gelu(self.fc1((blocks + self.pos.to(blocks.dtype)).flatten(-2))))


def block_ends(n_blocks, config, device):
    """[Tc]: the position at which compressed block i is complete, i·d + l - 1."""
    return torch.arange(n_blocks, device=device) * config.cmp_stride + config.cmp_block - 1


def cmp_visible(t, n_blocks, config, ends=None):
    """[Q, Tc] bool: compressed block i complete by query position t; ends: block_ends, where a caller
    holds them already."""
    ends = block_ends(n_blocks, config, t.device) if ends is None else ends
    return ends[None, :] <= t[:, None]


def importance_tables(n_cmp, n_sel, config, device):
    """What block_importance gathers: selectable block j meets only the compressed blocks i with
    j·l' - l < i·d < (j+1)·l', at most S = (l' + l) / d + 1 of them. Returns their indices [S·Ts] and the
    weights |block_i ∩ block_j| / l [S, Ts] (0 where i is past the last block)."""
    size, d, ls = config.cmp_block, config.cmp_stride, config.select_block
    j = torch.arange(n_sel, device=device)
    i = ((j * ls - size) // d + 1).clamp(min=0) + torch.arange((ls + size) // d + 1, device=device)[:, None]  # [S, Ts]
    overlap = (torch.minimum(i * d + size, (j + 1) * ls) - torch.maximum(i * d, j * ls)).clamp(min=0) * (i < n_cmp)
    return i.clamp(max=max(n_cmp - 1, 0)).flatten(), overlap.float() / size


def block_importance(p, n_sel, config, tables=None):
    """p [..., Tc] compressed-block weights -> [..., Ts] selectable-block scores, Σ_i p_i · |block_i ∩ block_j| / l,
    by gathering the few blocks each j meets (importance_tables; a decoding cache holds them) instead of
    multiplying by the mostly-zero [Tc, Ts] overlap matrix: O(S · Ts) per query instead of O(Tc · Ts)."""
    if p.shape[-1] == 0:
        return p.new_zeros(*p.shape[:-1], n_sel)
    index, weight = tables or importance_tables(p.shape[-1], n_sel, config, p.device)
    return (p.index_select(-1, index).unflatten(-1, weight.shape) * weight.to(p.dtype)).sum(-2)


def masked_softmax(scores, allowed):
    """Softmax over the allowed entries; a row with none allowed is all zeros (and has finite gradients)."""
    empty = ~allowed.any(-1, keepdim=True)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(empty, 0.0)
    return torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)


def grouped(a, b):
    """a [B, H, Q, X] @ b [B, Hkv, X, Y] -> [B, H, Q, Y], query head h against K/V head h // (H / Hkv):
    a group's query heads as more rows of one product, instead of b repeated per query head."""
    B, H, Q, X = a.shape
    Hkv = b.shape[1]
    return (a.reshape(B, Hkv, H // Hkv * Q, X) @ b).view(B, H, Q, b.shape[-1])


def cmp_probs(q, kc, t, config, ends=None):
    """The compressed branch's weights [B, H, Q, Tc] for q [B, H, Q, D] at positions t [Q], in float32 at
    least: the selection ranks them, and bf16-rounded scores would reorder near-ties. ends: as cmp_visible's."""
    wide = model.wide_dtype(q.dtype)
    scores = grouped(q.to(wide), kc.transpose(-1, -2).to(wide))
    return masked_softmax(scores * (1.0 / math.sqrt(q.shape[-1])), cmp_visible(t, kc.shape[2], config, ends))


def chosen_blocks(p_cmp, t, n_sel, config, tables=None):
    """The blocks each query group reads. p_cmp [B, H, Q, Tc] compressed probabilities at positions t [Q]
    -> [B, Hkv, Q, min(n, Ts)] block ids (Ts = n_sel), -1 in a slot left empty. Forced blocks score +inf,
    blocks after the query's -inf."""
    B, H, Q, Tc = p_cmp.shape
    G = config.head_group
    importance = block_importance(p_cmp.view(B, H // G, G, Q, Tc).sum(2), n_sel, config, tables)
    j = torch.arange(n_sel, device=t.device)[None, :]
    current = (t // config.select_block)[:, None]
    forced = (j == 0) | (j == current) | (j == current - 1)
    score = torch.where(forced, float("inf"), importance.masked_fill(j > current, float("-inf")))
    top = score.topk(min(config.select_count, n_sel), dim=-1)
    return top.indices.masked_fill(top.values == float("-inf"), -1)


def blocks_as_mask(ids, n_sel):
    """[..., n] block ids (-1: none) -> [..., n_sel] bool, True at the chosen blocks."""
    spare = torch.where(ids < 0, n_sel, ids)  # an empty slot marks a column past the last, dropped
    return torch.zeros(*ids.shape[:-1], n_sel + 1, dtype=torch.bool, device=ids.device).scatter_(-1, spare, True)[..., :n_sel]


def select_blocks(p_cmp, t, n_sel, config, tables=None):
    """chosen_blocks as a mask: [B, Hkv, Q, Ts] bool."""
    return blocks_as_mask(chosen_blocks(p_cmp, t, n_sel, config, tables), n_sel)


def nsa_branches(q, k, v, kc, vc, t, config, want_maps=False):
    """The three branches for queries q [B, H, Q, D] at positions t [Q], over keys and values
    [B, Hkv, Tk, D] at positions 0..Tk-1 and their compressed blocks kc, vc [B, Hkv, Tc, D].
    Returns (o_cmp, o_slc, o_win) [B, H, Q, D], and with want_maps their [B, H, Q, ·] weights."""
    H, Hkv, Tk = q.shape[1], k.shape[1], k.shape[2]
    p_cmp = cmp_probs(q, kc, t, config)
    o_cmp = grouped(p_cmp.to(v.dtype), vc)

    key = torch.arange(Tk, device=q.device)
    sel = select_blocks(p_cmp.detach(), t, config.n_select_blocks(Tk), config)
    causal = key[None, :] <= t[:, None]
    slc_keys = (sel[..., key // config.select_block] & causal).repeat_interleave(H // Hkv, dim=1)
    win_keys = causal & (key[None, :] > t[:, None] - config.window_size)

    def attend(allowed):
        if want_maps:
            return model.naive_attention(q, k, v, torch.zeros(allowed.shape, device=q.device).masked_fill(~allowed, float("-inf")))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=H != Hkv), None

    o_slc, w_slc = attend(slc_keys)
    o_win, w_win = attend(win_keys) if config.window_size else (torch.zeros_like(o_slc), None)
    if not want_maps:
        return o_cmp, o_slc, o_win
    # a compressed block's weight spread over its l tokens: exactly the map o_cmp applies to v for the
    # mean; for the MLP, which is not linear in v, where the branch looks
    spread = (key[None, :] >= torch.arange(kc.shape[2], device=q.device)[:, None] * config.cmp_stride)
    spread &= key[None, :] < torch.arange(kc.shape[2], device=q.device)[:, None] * config.cmp_stride + config.cmp_block
    w_cmp = p_cmp @ (spread.to(p_cmp.dtype) / config.cmp_block)
    return (o_cmp, o_slc, o_win), (w_cmp, w_slc, w_win)


def nsa_step(q, cache, pos, config):
    """One decoding step: the three branches of nsa_branches for q [B, H, 1, D] at position pos [1],
    over an NSACache's static k, v [B, Hkv, L, D] (nothing written after pos) and its compressed blocks,
    gathering just the keys each branch reads: O(n·l' + window + L/d) per step instead of O(L)."""
    B, H, _, D = q.shape
    k, v = cache.k.to(q.dtype), cache.v.to(q.dtype)
    kc, vc = cache.kc[:, :, :-1].to(q.dtype), cache.vc[:, :, :-1].to(q.dtype)
    Hkv, L = k.shape[1], k.shape[2]
    size, w = config.select_block, config.window_size
    p_cmp = cmp_probs(q, kc, pos, config, ends=cache._ends)
    o_cmp = grouped(p_cmp.to(v.dtype), vc)
    q_rows = q.reshape(B, Hkv, H // Hkv, D)  # at one position a K/V head's query heads are rows over the same keys

    def attend(keys, ok):  # keys [B, Hkv, N] positions to gather, ok [B, Hkv, N] which of them count
        idx = keys.clamp(0, L - 1)[..., None].expand(-1, -1, -1, D)
        o = F.scaled_dot_product_attention(q_rows, k.gather(2, idx), v.gather(2, idx), attn_mask=ok[:, :, None])
        return o.reshape(B, H, 1, D)  # CUDA's SDPA may hand back [B, Hkv, G, D] with G and Hkv swapped in memory

    ids = chosen_blocks(p_cmp, pos, config.n_select_blocks(L), config, cache._importance)[:, :, 0]  # [B, Hkv, n]
    keys = (ids[..., None] * size + cache._in_block).flatten(-2)
    o_slc = attend(keys, (ids[..., None] >= 0).expand(-1, -1, -1, size).flatten(-2) & (keys <= pos))
    if w == 0:
        return o_cmp, o_slc, torch.zeros_like(o_slc)
    recent = (pos + cache._back).expand(B, Hkv, w)
    return o_cmp, o_slc, attend(recent, recent >= 0)


def full_resolution_keys(q, k, config):
    """[B, Hkv, T, T] bool, for drawing: the keys each query group reads at full resolution (its
    selected blocks and its window) for q [B, H, T, D] and k [B, Hkv, T, D]. Forms T×T: only on request."""
    T = q.shape[2]
    t = torch.arange(T, device=q.device)
    sel = select_blocks(cmp_probs(q, compress(k, config), t, config), t, config.n_select_blocks(T), config)
    causal = t[None, :] <= t[:, None]
    return (sel[..., t // config.select_block] | (t[None, :] > t[:, None] - config.window_size)) & causal


def combine(branches, gates):
    """Σ_b g_b · o_b; gates [B, H, Q, 3] in (cmp, slc, win) order."""
    return sum(o * gates[..., i, None].to(o.dtype) for i, o in enumerate(branches))


def nsa_reference(q, k, v, kc, vc, gates, config):
    """The whole layer's attention, y [B, H, T, D], for q [B, H, T, D] at positions 0..T-1."""
    T = q.shape[2]
    pos = torch.arange(T, device=q.device)
    out = []
    for s in range(0, T, QUERY_BLOCK):
        e = min(s + QUERY_BLOCK, T)
        branches = nsa_branches(q[:, :, s:e], k[:, :, :e], v[:, :, :e], kc, vc, pos[s:e], config)
        out.append(combine(branches, gates[:, :, s:e]))
    return torch.cat(out, dim=2)


# -----------------------------------------------------------------------------
# fast paths (CUDA)

def selection_rows(q, kc, pos, n_sel, config):
    """chosen_blocks of the queries q at positions pos: scores, masked softmax, group sum, importance, top-n."""
    return chosen_blocks(cmp_probs(q, kc, pos, config), pos, n_sel, config)


# compiled, the float32 softmax and the group's sum are fused into the scores' one pass instead of some
# five passes over [B, H, rows, Tc] (at T = 65,536, l = d = 64: 64 blocks of 64 MB each)
compiled_selection_rows = torch.compile(selection_rows, dynamic=False)


@torch.no_grad()
def selection_for_flex(q, kc, config, compiled=None):
    """[B, Hkv, T, n] the block ids every query reads (chosen_blocks), scored in row blocks (no T×Tc in
    memory at once); compiled (default: on CUDA) through compiled_selection_rows."""
    T = q.shape[2]
    pos = torch.arange(T, device=q.device)
    rows = compiled_selection_rows if (q.is_cuda if compiled is None else compiled) else selection_rows
    step = max(FLEX_BLOCK, SELECT_SCORES // (q.shape[0] * q.shape[1] * max(1, kc.shape[2])))
    out = [rows(q[:, :, s:s + step], kc, pos[s:s + step], config.n_select_blocks(T), config)
           for s in range(0, T, step)]
    return torch.cat(out, dim=2)


def selection_triton(q, kc, config):
    """selection_for_flex's block ids [B, Hkv, T, n] from the Triton kernels, in row blocks of at most
    SELECT_SCORES probabilities: the group's compressed probabilities, block_importance (unless the
    compressed blocks are the selectable ones), the top n. The same set per query (the forced ones first)."""
    c = config
    (B, _, T, _), (Hkv, Tc) = q.shape, kc.shape[1:3]
    q, kc = q.detach().contiguous(), kc.detach().to(q.dtype).contiguous()
    n_sel, identity = c.n_select_blocks(T), c.cmp_block == c.cmp_stride == c.select_block  # then j's score is p_j
    step = max(nsa_triton.SEL_ROWS, SELECT_SCORES // (B * Hkv * max(1, Tc)))
    out = []
    for t0 in range(0, T, step):
        p = nsa_triton.nsa_group_probs(q, kc, t0, min(step, T - t0), c.cmp_block, c.cmp_stride)
        x = p if identity else block_importance(p, n_sel, c).contiguous()
        out.append(nsa_triton.nsa_top_blocks(x, t0, n_sel, c.select_block, c.select_count))
    return torch.cat(out, dim=2)


def window_attention(q, k, v, config):
    """The window branch alone, in FlexAttention with a sliding-window BlockMask (T whole tiles)."""
    mask = flex.sliding_window_block_mask(config.window_size, q.shape[2], str(q.device))
    if REPEAT_KV_WIN:
        k, v = per_query_head(k, q.shape[1]), per_query_head(v, q.shape[1])
    return flex.compiled_flex_attention(q, k, v, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


# -----------------------------------------------------------------------------
# decoding state

class NSACache(model.KVCache):
    """The full static KV cache, plus the compressed keys and values of the blocks completed so far
    (one spare slot takes the writes of steps that complete no block, so every step has one shape)."""

    def __init__(self, batch_size, config, device, dtype):
        super().__init__(batch_size, config.n_kv_head, config.block_size, config.head_dim, device, dtype)
        self.n_blocks = config.n_cmp_blocks(config.block_size)
        shape = (batch_size, config.n_kv_head, self.n_blocks + 1, config.head_dim)
        self.kc, self.vc = torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        # constants of the model, not of the sequence (so named with a leading _), built once instead of in every
        # step of every layer: the selection's gather, where each compressed block ends, and for each position p
        # the first of the l keys a block ending at p pools and its slot (the spare one where p ends no block)
        L, size, d = config.block_size, config.cmp_block, config.cmp_stride
        self._importance = importance_tables(self.n_blocks, config.n_select_blocks(L), config, device)
        self._ends = block_ends(self.n_blocks, config, device)
        start = torch.arange(L, device=device) + 1 - size
        self._first, self._offsets = start.clamp(min=0), torch.arange(size, device=device)
        self._slot = torch.where((start >= 0) & (start % d == 0), start.div(d, rounding_mode="floor"), self.n_blocks)
        # a selected block's keys from its first, and the window's from the newest (pos + 1 - w .. pos)
        self._in_block = torch.arange(config.select_block, device=device)
        self._back = torch.arange(1 - config.window_size, 1, device=device)

    def write_compressed(self, kc, vc, slots):
        self.kc.index_copy_(2, slots, kc.to(self.kc.dtype))
        self.vc.index_copy_(2, slots, vc.to(self.vc.dtype))


# -----------------------------------------------------------------------------
# the attention module

class NSAAttention(model.CausalSelfAttention):
    """The backbone's projections (GQA, RoPE), a gate per branch and head, and the three branches."""

    def __init__(self, config, layer_idx=0):
        super().__init__(config, layer_idx)
        self.g_proj = nn.Linear(config.n_embd, 3 * config.n_head, bias=False)
        mlp = config.compression == "mlp"
        self.k_compress = BlockMLP(config.cmp_block, config.head_dim) if mlp else None
        self.v_compress = BlockMLP(config.cmp_block, config.head_dim) if mlp else None

    def new_cache(self, batch_size, device, dtype):
        return NSACache(batch_size, self.config, device, dtype)

    def kernel_path(self, device_type):
        c = self.config
        if device_type != "cuda" or not (c.use_fla or c.use_flex):
            return "pytorch"
        fla = c.use_fla and c.fla_layout() is None  # the probe's record read first: a compiled forward stays in its graph
        if fla and (fla_nsa.FLA_STATUS["status"] if fla_nsa.FLA_STATUS else fla_nsa.fla_status()) is None:
            return "fla+flex"
        return ("flex+triton" if c.use_triton else "flex") if c.use_flex else "pytorch"

    def forward_flops_per_token(self, T):
        c = self.config
        t = torch.arange(T, dtype=torch.float64)
        cmp = ((t + 1 - c.cmp_block).clamp(min=-1).div(c.cmp_stride, rounding_mode="floor") + 1).mean()
        keys = cmp + (t + 1).clamp(max=c.select_count * c.select_block).mean() + (t + 1).clamp(max=c.window_size).mean()
        return 2 * 2 * self.n_head * self.head_dim * float(keys)

    def compressed(self, k, v):
        return compress(k, self.config, self.k_compress), compress(v, self.config, self.v_compress)

    def forward(self, x, pos, cache=None, return_attn=False):
        B, T, _ = x.shape
        c = self.config
        q, k, v = self.qkv(x, pos)
        gates = torch.sigmoid(self.g_proj(x).to(model.wide_dtype(x.dtype)))
        gates = gates.view(B, T, self.n_head, 3).transpose(1, 2)  # [B, H, T, (cmp, slc, win)]
        att = None
        if cache is not None:
            cache.write(k, v, pos)
        if cache is not None and T == 1:
            self._compress_step(cache, pos)
            y = combine(nsa_step(q, cache, pos, c), gates)
        else:
            kc, vc = self.compressed(k, v)
            if cache is not None:  # a prefill from position 0: its complete blocks
                cache.write_compressed(kc, vc, torch.arange(kc.shape[2], device=x.device))
            path = self.kernel_path(x.device.type)
            if return_attn:
                branches, maps = nsa_branches(q, k, v, kc, vc, pos, c, want_maps=True)
                y = combine(branches, gates)
                att = sum(m * gates[..., i, None] for i, m in enumerate(maps) if m is not None)
            elif path == "pytorch" or T % FLEX_BLOCK or kc.shape[2] == 0:
                y = nsa_reference(q, k, v, kc, vc, gates, c)
            elif path == "fla+flex":
                y = fla_nsa.fla_cmp_and_slc(q, k, v, gates, c.select_count, c.select_block)
                if c.window_size:
                    y = y + window_attention(q, k, v, c) * gates[..., 2, None].to(y.dtype)
            else:
                y = self._flex(q, k, v, kc, vc, gates)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_dropout(self.c_proj(y)), att

    def _flex(self, q, k, v, kc, vc, gates):
        c, T = self.config, q.shape[2]
        cmp_mask = flex.compressed_block_mask(T, c.cmp_block, c.cmp_stride, str(q.device))
        kc_, vc_ = (per_query_head(kc, self.n_head), per_query_head(vc, self.n_head)) if REPEAT_KV_CMP else (kc, vc)
        o_cmp = flex.compiled_flex_attention(q, kc_, vc_, block_mask=cmp_mask, enable_gqa=kc_.shape[1] != self.n_head)
        if c.use_triton:
            if nsa_triton.triton is None:  # checked here: a CPU without Triton builds the same model for its reference path
                raise RuntimeError("use_triton needs Triton on this GPU: pip install triton")
            o_slc = nsa_triton.selected_attention(q, k, v, selection_triton(q, kc, c), c.select_block)
        else:
            o_slc = self._selected_flex(q, k, v, kc)
        o_win = window_attention(q, k, v, c) if c.window_size else torch.zeros_like(o_slc)
        return combine((o_cmp, o_slc, o_win), gates)

    # an eager call of compiled pieces: inlined into a compiled model, the selection's BlockMask (its mask_mod
    # closing over this forward's choice) gives wrong outputs and gradients on an H100 (torch 2.11)
    @torch.compiler.disable
    def _selected_flex(self, q, k, v, kc):
        c = self.config
        sel = blocks_as_mask(selection_for_flex(q, kc, c), c.n_select_blocks(q.shape[2]))
        return flex.compiled_selected_flex(q, k, v, sel, flex.tile_mask_from_selection(sel, c.select_block), c.select_block)

    def _compress_step(self, cache, pos):
        """After the key at pos is written: if it completes compressed block i (pos + 1 - l = i·d),
        compress that block into slot i; otherwise into the spare slot. No host synchronisation."""
        idx = cache._first.index_select(0, pos) + cache._offsets
        kb, vb = (t.index_select(2, idx).unsqueeze(2) for t in (cache.k, cache.v))  # [B, Hkv, 1, l, D]
        kc, vc = pool(kb, self.k_compress), pool(vb, self.v_compress)
        cache.write_compressed(kc, vc, cache._slot.index_select(0, pos))


class GPT(model.GPT):
    attention_class = NSAAttention
