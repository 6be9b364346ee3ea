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
window       W_t = the last `window` keys, t - window < j <= t (0: no window branch).

Keys and values are shared by the three branches (as flash-linear-attention's layer; the paper gives
each branch its own). Queries get `n_head` heads of `head_size` (default n_embd / n_head), keys and
values `n_kv_head`: the kernel processes a GQA group's query heads together, which is where NSA gets
its speed, so FLA needs n_head / n_kv_head a power of two >= 16.

At the baby GPT's context of 256 with the paper's settings (l=32, d=16, l'=64, n=16, window 512) every
branch would see the whole context. config/train_shakespeare_char_nsa.py therefore scales them
down so the comparison at 256 is a sparse one; the long-context benchmarks use the paper's sizes.

Paths (kernel_path):
    pytorch   the reference and the CPU path: query blocks of 128 rows, each against the keys before
              its end, with boolean masks (O(T · 128) memory per block, O(T²) time; never a T×T matrix).
    fla+flex  on CUDA when FLA can run the layout (mean compression, l = d = l', a power-of-two group
              >= 16, n a power of two with l' >= 2n, head dim <= 256): FLA's parallel_nsa computes the
              compressed and selected branches (window_size=0: its window branch needs flash-attn),
              FlexAttention the window.
    flex      on CUDA otherwise: FlexAttention for all three branches; the selection becomes a
              BlockMask of 128×128 tiles built per forward from the chosen blocks.
    flex+triton  with use_triton: as flex, but the selected branch runs in this file's Triton kernels
              (selected_attention): each (token, K/V head) reads just its n blocks for the whole GQA
              group, as the paper's kernel does, and the backward inverts the selection so each
              block's dK/dV gathers the queries that chose it. Tiles that neighbouring queries'
              different choices leave dense, which slow the flex path at long T, do not arise. The
              selection too runs in Triton (selection_triton): the group's compressed probabilities
              summed in one kernel, without each head's scores in memory, the top n in another. The
              kernels are custom operators, so a compiled model is one graph (CUDA graphs can replay it).
Decoding keeps the full static KV cache (selection may reach anything) and the compressed keys and
values, each written as its block completes; a step scores the compressed blocks, then gathers only
the n selected blocks and the window from the cache.
"""

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

import model
import model_sparse

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton here (torch's CUDA builds bring it): use_triton is unavailable
    triton = None

COMPRESSIONS = ("mean", "mlp")
QUERY_BLOCK = 128  # rows per block on the PyTorch path
FLEX_BLOCK = model_sparse.FLEX_BLOCK
# float32 scores per block of query rows when scoring the selection for the flex path (1 GiB): at
# T = 65,536 (B = 1, 16 heads, 1,024 compressed keys) blocks of 16,384 rows, 30.4 ms a layer's step
# against 46.6 in blocks of 1,024 (results/h100/nsa: fewer, larger launches)
SELECT_SCORES = 2**28
# FlexAttention's backward runs one program per tile of keys and K/V head, over all the query heads of its
# group: with one K/V head, the 8 tiles of compressed keys at T = 65,536 were 8 programs for the whole
# dK/dV. Keys and values repeated per query head give G times the programs (autograd sums the copies):
# 75.5 -> 46.6 ms for that layer's step on an H100. The window's 512 tiles already fill the GPU; repeating
# its keys too measured slower (53.6), so it stays off (results/h100/nsa).
REPEAT_KV_CMP, REPEAT_KV_WIN = True, False


def per_query_head(t, H):
    return t.repeat_interleave(H // t.shape[1], dim=1) if t.shape[1] != H else t


def triton_takes(select_block):
    """Whether the Triton selection (use_triton) can run blocks of this size: a power of two >= 16."""
    return select_block >= 16 and select_block & (select_block - 1) == 0


@dataclass
class GPTConfig(model.GPTConfig):
    cmp_block: int = 32  # l: tokens per compressed block
    cmp_stride: int = 32  # d: a compressed block starts every d tokens
    select_block: int = 32  # l': tokens per selectable block
    select_count: int = 4  # n: blocks each query reads, the first, previous and current included
    window: int = 64  # the sliding-window branch's span; 0: no window branch
    compression: str = "mean"
    head_size: int = 0  # 0: n_embd // n_head
    use_fla: bool = True  # flash-linear-attention's kernels on CUDA where the layout allows
    use_flex: bool = True  # FlexAttention on CUDA otherwise; False: the PyTorch path everywhere
    use_triton: bool = False  # on the flex path, the selected branch in this file's Triton kernel

    def __post_init__(self):
        if self.head_size < 0:
            raise ValueError(f"head_size must be >= 0 (0: n_embd // n_head), got {self.head_size}")
        super().__post_init__()
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}; got '{self.compression}'")
        if self.pos_emb == "alibi":
            raise ValueError("pos_emb='alibi' is not supported by the nsa family; use 'rope' or 'learned'")
        for name in ("cmp_block", "cmp_stride", "select_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cmp_block % self.cmp_stride or self.select_block % self.cmp_stride:
            raise ValueError(f"cmp_block ({self.cmp_block}) and select_block ({self.select_block}) must be "
                             f"multiples of cmp_stride ({self.cmp_stride})")
        if self.select_count < 3:
            raise ValueError(f"select_count must be >= 3 (the first, previous and current blocks are always "
                             f"read), got {self.select_count}")
        if self.window < 0:
            raise ValueError(f"window must be >= 0 (0: no window branch), got {self.window}")
        if self.use_triton and triton is None:
            raise ValueError("use_triton needs Triton: pip install triton")
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
        g, n = self.head_group, self.select_count
        if self.compression != "mean":
            return "compression='mlp'"
        if not self.cmp_block == self.cmp_stride == self.select_block:
            return "cmp_block, cmp_stride and select_block differ"
        if g < 16 or g & (g - 1):
            return f"n_head / n_kv_head = {g} is not a power of two >= 16"
        if n & (n - 1) or self.select_block < 2 * n:
            return f"select_count {n} is not a power of two <= select_block / 2"
        if self.head_dim > 256:
            return f"head dim {self.head_dim} > 256"
        return None


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
    win_keys = causal & (key[None, :] > t[:, None] - config.window)

    def attend(allowed):
        if want_maps:
            return model.naive_attention(q, k, v, torch.zeros(allowed.shape, device=q.device).masked_fill(~allowed, float("-inf")))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=H != Hkv), None

    o_slc, w_slc = attend(slc_keys)
    o_win, w_win = attend(win_keys) if config.window else (torch.zeros_like(o_slc), None)
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
    size, w = config.select_block, config.window
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
    return (sel[..., t // config.select_block] | (t[None, :] > t[:, None] - config.window)) & causal


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

@model_sparse.built_once
def compressed_block_mask(T, size, stride, device):
    """The compressed branch's BlockMask: T queries against the (T - l) // d + 1 blocks."""
    def visible(b, h, q_idx, kv_idx):
        return kv_idx * stride + size - 1 <= q_idx
    return model_sparse.new_block_mask(visible, T, (T - size) // stride + 1, device)


def tile_mask_from_selection(sel, config):
    """sel [B, Hkv, T, Ts] -> [B, Hkv, T/128, T/128] bool: the 128×128 tiles that hold a selected key of
    some query of the tile (and are not wholly in its future)."""
    B, Hkv, T, Ts = sel.shape
    n = T // FLEX_BLOCK
    rows = sel.view(B, Hkv, n, FLEX_BLOCK, Ts).any(3).float()  # [B, Hkv, n, Ts]
    j0 = torch.arange(Ts, device=sel.device)[:, None] * config.select_block
    tile0 = torch.arange(n, device=sel.device)[None, :] * FLEX_BLOCK
    covers = (j0 < tile0 + FLEX_BLOCK) & (j0 + config.select_block > tile0)  # [Ts, n]: block j meets tile
    tiles = (rows @ covers.float()) > 0
    return tiles & torch.ones(n, n, dtype=torch.bool, device=sel.device).tril()


def _selected_flex(q, k, v, sel, tiles, select_block):
    G = q.shape[1] // k.shape[1]
    num = tiles.sum(-1, dtype=torch.int32).repeat_interleave(G, dim=1)
    idx = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32).repeat_interleave(G, dim=1)

    def chosen(b, h, q_idx, kv_idx):
        return sel[b, h // G, q_idx, kv_idx // select_block] & (kv_idx <= q_idx)

    mask = BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=chosen,
                                    seq_lengths=(q.shape[2], k.shape[2]))
    return flex_attention(q, k, v, block_mask=mask, enable_gqa=G > 1)


# the mask_mod closes over this forward's selection: built inside the compiled function, so one
# compiled kernel serves every selection of a shape
selected_flex = torch.compile(_selected_flex, dynamic=False)


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


# -- the selected branch in Triton: a GQA group's query heads together, only the blocks they chose --------
# Forward and dQ: one program per (token, K/V head) runs over its n blocks with an online softmax (the
# paper's kernel). dK/dV: the selection inverted (for each block, the tokens that chose it), one program
# per segment of SLC_SEGMENT tokens of one block, so a block every query reads (the first) is spread over
# many programs; segments of one block add their partial dK/dV atomically. No T×T anything.
SLC_SEGMENT = 256  # tokens per dK/dV program
SLC_ROWS = 64  # query rows (tokens × heads of the group) per step of a dK/dV program: at 128 ptxas spilt (sm_90)
# 404 bytes and a layer step at 65,536 took 25.7-26.0 ms, at 64 none and 24.6-25.1 (results/h100/nsa)
LOG2E = 1.4426950408889634  # the kernels' softmax runs in exp2


def selection_work(idx, n_sel, segment=None):
    """The selection inverted, for the dK/dV kernel, with no host synchronisation. idx [B, Hkv, T, n] ->
    (tokens [B·Hkv, T·n] int32: the tokens grouped by the block they chose, work [B·Hkv, W, 3] int32:
    (block, first, end) ranges of at most `segment` entries of tokens, block -1 past the last)."""
    BH, T, n = idx.shape[0] * idx.shape[1], idx.shape[2], idx.shape[3]
    segment = segment or SLC_SEGMENT
    block = idx.reshape(BH, T * n).long()
    block = torch.where(block < 0, n_sel, block)  # unused slots sort last, into a block of their own
    tokens = (torch.argsort(block, dim=1, stable=True) // n).to(torch.int32)
    counts = torch.zeros(BH, n_sel + 1, dtype=torch.long, device=idx.device).scatter_add_(1, block, torch.ones_like(block))
    counts = counts[:, :n_sel]
    starts = counts.cumsum(1) - counts
    n_seg = (counts + segment - 1) // segment
    seg_end = n_seg.cumsum(1)
    W = n_sel + T * n // segment + 1  # >= Σ ceil(count / segment)
    p = torch.arange(W, device=idx.device).expand(BH, W).contiguous()
    j = torch.searchsorted(seg_end, p, right=True)
    jc = j.clamp(max=n_sel - 1)
    first = starts.gather(1, jc) + (p - (seg_end.gather(1, jc) - n_seg.gather(1, jc))) * segment
    end = torch.minimum(first + segment, starts.gather(1, jc) + counts.gather(1, jc))
    work = torch.stack([torch.where(j < n_sel, jc, -1), first, end], dim=-1).to(torch.int32)
    return tokens, work


if triton is not None:  # the kernels (TRITON_INTERPRET=1, read as they are defined, runs them on a CPU)
    @triton.jit
    def slc_block_kv(K, V, bh, t, j, T, D: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr):
        """Block j's keys and values for the query at t (those after t zeroed), and which of them count."""
        key, d = j * BS + tl.arange(0, BS), tl.arange(0, BD)
        ok = key <= t
        kv, mask = (bh * T + key[:, None]) * D + d[None, :], ok[:, None] & (d[None, :] < D)
        return ok, tl.load(K + kv, mask=mask, other=0.0), tl.load(V + kv, mask=mask, other=0.0)

    @triton.jit
    def slc_fwd(Q, K, V, IDX, OUT, LSE, T, qk_scale, G: tl.constexpr, D: tl.constexpr, BG: tl.constexpr,
            BD: tl.constexpr, BS: tl.constexpr, N: tl.constexpr):
        t, bh = tl.program_id(0), tl.program_id(1)
        rows = bh * G + tl.arange(0, BG)  # bh = b·Hkv + hk: query heads b·H + hk·G + g
        d = tl.arange(0, BD)
        row_ok = tl.arange(0, BG) < G
        q = tl.load(Q + (rows[:, None] * T + t) * D + d[None, :], mask=row_ok[:, None] & (d[None, :] < D), other=0.0)
        m = tl.full([BG], float("-inf"), tl.float32)
        den = tl.zeros([BG], tl.float32)
        acc = tl.zeros([BG, BD], tl.float32)
        for i in range(N):
            j = tl.load(IDX + (bh * T + t) * N + i)
            if j >= 0:
                ok, k, v = slc_block_kv(K, V, bh, t, j, T, D, BD, BS)
                x = tl.where(ok[None, :], tl.dot(q, tl.trans(k)) * qk_scale, float("-inf"))
                m_new = tl.maximum(m, tl.max(x, 1))
                p = tl.exp2(x - m_new[:, None])
                alpha = tl.exp2(m - m_new)
                den = den * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m = m_new
        tl.store(OUT + (rows[:, None] * T + t) * D + d[None, :], (acc / den[:, None]).to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & (d[None, :] < D))
        tl.store(LSE + rows * T + t, m + tl.log2(den), mask=row_ok)

    @triton.jit
    def slc_bwd_dq(Q, K, V, IDX, DO, LSE, DELTA, DQ, T, qk_scale, sm_scale, G: tl.constexpr, D: tl.constexpr,
               BG: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr, N: tl.constexpr):
        t, bh = tl.program_id(0), tl.program_id(1)
        rows = bh * G + tl.arange(0, BG)
        d = tl.arange(0, BD)
        row_ok = tl.arange(0, BG) < G
        at = (rows[:, None] * T + t) * D + d[None, :]
        q_ok = row_ok[:, None] & (d[None, :] < D)
        q = tl.load(Q + at, mask=q_ok, other=0.0)
        do = tl.load(DO + at, mask=q_ok, other=0.0)
        lse = tl.load(LSE + rows * T + t, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + rows * T + t, mask=row_ok, other=0.0)
        dq = tl.zeros([BG, BD], tl.float32)
        for i in range(N):
            j = tl.load(IDX + (bh * T + t) * N + i)
            if j >= 0:
                ok, k, v = slc_block_kv(K, V, bh, t, j, T, D, BD, BS)
                p = tl.where(ok[None, :], tl.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None]), 0.0)
                ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k)
        tl.store(DQ + at, (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_ok)

    @triton.jit
    def slc_bwd_dkdv(Q, K, V, TOKENS, WORK, DO, LSE, DELTA, DK, DV, T, qk_scale, sm_scale, W,
                 G: tl.constexpr, D: tl.constexpr, BG: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr,
                 N: tl.constexpr, R: tl.constexpr):
        w, bh = tl.program_id(0), tl.program_id(1)
        j = tl.load(WORK + (bh * W + w) * 3)
        if j >= 0:
            first = tl.load(WORK + (bh * W + w) * 3 + 1)
            end = tl.load(WORK + (bh * W + w) * 3 + 2)
            d, s, r = tl.arange(0, BD), tl.arange(0, BS), tl.arange(0, R)
            key = j * BS + s
            kv = (bh * T + key[:, None]) * D + d[None, :]
            kv_ok = (key[:, None] < T) & (d[None, :] < D)
            k = tl.load(K + kv, mask=kv_ok, other=0.0)
            v = tl.load(V + kv, mask=kv_ok, other=0.0)
            dk = tl.zeros([BS, BD], tl.float32)
            dv = tl.zeros([BS, BD], tl.float32)
            for e in range(first, end, R // BG):  # R // BG tokens, R rows (token, head) per step
                at_e = e + r // BG
                ok = (at_e < end) & (r % BG < G)
                tok = tl.load(TOKENS + bh * T * N + at_e, mask=ok, other=0)
                row = bh * G + r % BG
                at = (row[:, None] * T + tok[:, None]) * D + d[None, :]
                q = tl.load(Q + at, mask=ok[:, None] & (d[None, :] < D), other=0.0)
                do = tl.load(DO + at, mask=ok[:, None] & (d[None, :] < D), other=0.0)
                lse = tl.load(LSE + row * T + tok, mask=ok, other=0.0)
                delta = tl.load(DELTA + row * T + tok, mask=ok, other=0.0)
                live = ok[None, :] & (key[:, None] <= tok[None, :])
                p = tl.where(live, tl.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :]), 0.0)  # [BS, R]
                dv += tl.dot(p.to(do.dtype), do)
                ds = p * (tl.dot(v, tl.trans(do)) - delta[None, :])
                dk += tl.dot(ds.to(q.dtype), q)
            tl.atomic_add(DK + kv, dk * sm_scale, mask=kv_ok)
            tl.atomic_add(DV + kv, dv, mask=kv_ok)


def _slc_shapes(q, k, select_block, n):
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    return dict(G=G, D=D, BG=max(16, triton.next_power_of_2(G)), BD=max(16, triton.next_power_of_2(D)),
                BS=select_block, N=n), (B * Hkv, T)


# The kernels run as custom operators (torch.library), opaque to torch.compile but inside its graph: the
# whole model then compiles as one graph and replays as CUDA graphs. As an autograd.Function called from a
# compiler-disabled method, each layer was a graph break with its glue (gates, casts, their gradients)
# run eagerly: a baby NSA step took 55 ms for 20 ms of GPU work (results/h100/bakeoff/timed_c9dc26c).
@torch.library.custom_op("attention_lab::selected_attention", mutates_args=())
def selected_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                           select_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse): lse the log2 of each row's softmax sum, which the backward reads."""
    shapes, (BH, T) = _slc_shapes(q, k, select_block, idx.shape[-1])
    o = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    slc_fwd[(T, BH)](q, k, v, idx, o, lse, T, LOG2E / math.sqrt(q.shape[-1]), **shapes)
    return o, lse


@selected_attention_fwd.register_fake
def _(q, k, v, idx, select_block):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("attention_lab::selected_attention_bwd", mutates_args=())
def selected_attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                           o: torch.Tensor, lse: torch.Tensor, select_block: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    do = do.contiguous()
    shapes, (BH, T) = _slc_shapes(q, k, select_block, idx.shape[-1])
    sm_scale = 1.0 / math.sqrt(q.shape[-1])
    delta = (do.float() * o.float()).sum(-1)
    dq = torch.empty_like(q)
    slc_bwd_dq[(T, BH)](q, k, v, idx, do, lse, delta, dq, T, sm_scale * LOG2E, sm_scale, **shapes)
    tokens, work = selection_work(idx, -(-T // select_block))
    dk, dv = (torch.zeros(k.shape, device=k.device, dtype=torch.float32) for _ in range(2))
    slc_bwd_dkdv[(work.shape[1], BH)](q, k, v, tokens, work, do, lse, delta, dk, dv, T, sm_scale * LOG2E, sm_scale,
                                      work.shape[1], R=max(SLC_ROWS, shapes["BG"]), **shapes)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


@selected_attention_bwd.register_fake
def _(do, q, k, v, idx, o, lse, select_block):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _slc_setup(ctx, inputs, output):
    q, k, v, idx, ctx.select_block = inputs
    ctx.save_for_backward(q, k, v, idx, *output)


def _slc_backward(ctx, do, dlse):
    dq, dk, dv = selected_attention_bwd(do, *ctx.saved_tensors, ctx.select_block)
    return dq, dk, dv, None, None


selected_attention_fwd.register_autograd(_slc_backward, setup_context=_slc_setup)


def selected_attention(q, k, v, idx, select_block):
    """The selected branch: q [B, H, T, D] attends, per GQA group, the blocks idx [B, Hkv, T, n] of
    k, v [B, Hkv, T, D] (keys after the query masked). Triton forward and backward."""
    q, k, v, idx = (t.contiguous() for t in (q, k, v, idx.to(torch.int32)))
    return selected_attention_fwd(q, k, v, idx, select_block)[0]


# -- the selection in Triton (use_triton): chosen_blocks without the [B, H, T, Tc] scores ----------------
# selection_for_flex writes each head's float32 scores and softmax before the group's sum, then sorts
# whole rows for the top n: at T = 65,536 (16 heads, 1,024 compressed blocks) some 8 ms of a 30 ms layer
# step (results/h100/nsa). Here one kernel writes only the group's summed probabilities [B, Hkv, T, Tc]:
# per tile of queries it finds each head's softmax normaliser in a first pass over the visible
# compressed keys, then sums the heads' exp2(s - lse) in a second; a second kernel takes the n best of
# each row by n rounds of max, with the forced and the future blocks set to +inf and -inf first.
SEL_ROWS, SEL_KEYS = 32, 64  # query rows per program, compressed keys per step


if triton is not None:
    @triton.jit
    def cmp_keys(KC, bh, c, Tc, t, cmp_block, cmp_stride, D: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr):
        """Compressed keys c .. c + BC - 1 of K/V head bh: their indices, the keys, and which of them each
        query at t sees (block i complete by t)."""
        i, d = c + tl.arange(0, BC), tl.arange(0, BD)
        kc = tl.load(KC + (bh * Tc + i[:, None]) * D + d[None, :], mask=(i[:, None] < Tc) & (d[None, :] < D), other=0.0)
        return i, kc, (i[None, :] * cmp_stride + cmp_block - 1) <= t[:, None]

    @triton.jit
    def cmp_group_probs(Q, KC, LSE, P, T, T0, R, Tc, qk_scale, cmp_block, cmp_stride, G: tl.constexpr,
                        D: tl.constexpr, BD: tl.constexpr, BQ: tl.constexpr, BC: tl.constexpr,
                        PRECISION: tl.constexpr):
        tb, bh = tl.program_id(0), tl.program_id(1)
        r = tb * BQ + tl.arange(0, BQ)  # rows of this call, positions T0 + r
        t, r_ok, d = T0 + r, r < R, tl.arange(0, BD)
        last = tl.minimum(T0 + tb * BQ + BQ - 1, T0 + R - 1)
        n_vis = tl.minimum(tl.where(last >= cmp_block - 1, (last - cmp_block + 1) // cmp_stride + 1, 0), Tc)
        q_mask = r_ok[:, None] & (d[None, :] < D)
        for g in range(G):  # each head's log2 normaliser over the blocks visible to each row
            row = bh * G + g  # query head b·H + hk·G + g
            q = tl.load(Q + (row * T + t[:, None]) * D + d[None, :], mask=q_mask, other=0.0)
            m = tl.full([BQ], float("-inf"), tl.float32)
            den = tl.zeros([BQ], tl.float32)
            for c in range(0, n_vis, BC):
                i, kc, vis = cmp_keys(KC, bh, c, Tc, t, cmp_block, cmp_stride, D, BD, BC)
                s = tl.where(vis, tl.dot(q, tl.trans(kc), input_precision=PRECISION) * qk_scale, float("-inf"))
                m_new = tl.maximum(m, tl.max(s, 1))
                m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
                den = den * tl.exp2(m - m_ref) + tl.sum(tl.exp2(s - m_ref[:, None]), 1)
                m = m_new
            tl.store(LSE + row * R + r, tl.where(den > 0, m + tl.log2(den), 0.0), mask=r_ok)
        tl.debug_barrier()  # the normalisers just stored are read below by other threads of this program
        for c in range(0, n_vis, BC):  # the group's summed probabilities, written once
            i, kc, vis = cmp_keys(KC, bh, c, Tc, t, cmp_block, cmp_stride, D, BD, BC)
            acc = tl.zeros([BQ, BC], tl.float32)
            for g in range(G):
                row = bh * G + g
                q = tl.load(Q + (row * T + t[:, None]) * D + d[None, :], mask=q_mask, other=0.0)
                lse = tl.load(LSE + row * R + r, mask=r_ok, other=0.0)
                s = tl.dot(q, tl.trans(kc), input_precision=PRECISION) * qk_scale
                acc += tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
            tl.store(P + (bh * R + r[:, None]) * Tc + i[None, :], acc, mask=r_ok[:, None] & (i[None, :] < Tc))

    @triton.jit
    def top_blocks(X, IDX, T0, R, Tx, select_block, BR: tl.constexpr, BTS: tl.constexpr, N: tl.constexpr):
        tb, bh = tl.program_id(0), tl.program_id(1)
        r = tb * BR + tl.arange(0, BR)
        r_ok, j = r < R, tl.arange(0, BTS)
        x = tl.load(X + (bh * R + r[:, None]) * Tx + j[None, :], mask=r_ok[:, None] & (j[None, :] < Tx), other=0.0)
        current = ((T0 + r) // select_block)[:, None]
        forced = (j[None, :] == 0) | (j[None, :] == current) | (j[None, :] == current - 1)
        x = tl.where(forced, float("inf"), tl.where(j[None, :] > current, float("-inf"), x))
        for n in tl.static_range(N):
            best, at = tl.max(x, 1), tl.argmax(x, 1)
            tl.store(IDX + (bh * R + r) * N + n, tl.where(best == float("-inf"), -1, at), mask=r_ok)
            x = tl.where(j[None, :] == at[:, None], float("-inf"), x)


def selection_triton(q, kc, config):
    """selection_for_flex's block ids [B, Hkv, T, n] from the two kernels above, in row blocks of at most
    SELECT_SCORES probabilities. The same set of blocks per query (the forced ones in index order)."""
    return triton_selection(q.detach(), kc.detach(), config.cmp_block, config.cmp_stride, config.select_block,
                            config.select_count)


@torch.library.custom_op("attention_lab::nsa_selection", mutates_args=())  # as selected_attention_fwd
def triton_selection(q: torch.Tensor, kc: torch.Tensor, cmp_block: int, cmp_stride: int, select_block: int,
                     select_count: int) -> torch.Tensor:
    config = GPTConfig(cmp_block=cmp_block, cmp_stride=cmp_stride, select_block=select_block, select_count=select_count)
    B, H, T, D = q.shape
    Hkv, Tc = kc.shape[1], kc.shape[2]
    G, n_sel = H // Hkv, config.n_select_blocks(T)
    N = min(config.select_count, n_sel)
    q, kc = q.contiguous(), kc.to(q.dtype).contiguous()  # one dtype for tl.dot
    identity = config.cmp_block == config.cmp_stride == config.select_block  # then block j's score is p_j
    step = max(SEL_ROWS, SELECT_SCORES // (B * Hkv * max(1, Tc)))
    BTS = triton.next_power_of_2(n_sel)
    BR = max(1, min(16, 8192 // BTS))
    out = []
    for t0 in range(0, T, step):
        R = min(step, T - t0)
        p = torch.zeros(B, Hkv, R, Tc, device=q.device, dtype=torch.float32)
        lse = torch.empty(B * H, R, device=q.device, dtype=torch.float32)
        if Tc:
            cmp_group_probs[(triton.cdiv(R, SEL_ROWS), B * Hkv)](
                q, kc, lse, p, T, t0, R, Tc, LOG2E / math.sqrt(D), config.cmp_block, config.cmp_stride, G=G, D=D,
                BD=max(16, triton.next_power_of_2(D)), BQ=SEL_ROWS, BC=SEL_KEYS,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
        x = p if identity else block_importance(p, n_sel, config).contiguous()
        ids = torch.empty(B, Hkv, R, N, device=q.device, dtype=torch.int32)
        top_blocks[(triton.cdiv(R, BR), B * Hkv)](x, ids, t0, R, x.shape[-1], config.select_block, BR=BR, BTS=BTS, N=N)
        out.append(ids)
    return torch.cat(out, dim=2)


@triton_selection.register_fake
def _(q, kc, cmp_block, cmp_stride, select_block, select_count):
    B, _, T, _ = q.shape
    return q.new_empty(B, kc.shape[1], T, min(select_count, -(-T // select_block)), dtype=torch.int32)


FLA_STATUS = {}  # None (runs) or the reason it cannot, probed once per process


@functools.cache
def fla_parallel_nsa():
    from fla.ops.nsa.parallel import parallel_nsa
    return parallel_nsa


@torch.compiler.disable
def fla_status():
    """None if FLA's parallel_nsa runs forward and backward on this GPU, else the reason."""
    if "status" not in FLA_STATUS:
        try:
            q = torch.randn(1, 128, 16, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            k, v = (torch.randn(1, 128, 1, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
            g = torch.rand(1, 128, 16, device="cuda", dtype=torch.bfloat16)
            fla_parallel_nsa()(q, k, v, g, g, None, block_counts=4, block_size=32).float().sum().backward()
            FLA_STATUS["status"] = None
        except Exception as e:  # ImportError, a Triton error
            FLA_STATUS["status"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"flash-linear-attention's NSA cannot run here ({FLA_STATUS['status']}); "
                          "using the FlexAttention path instead (same function)", stacklevel=2)
    return FLA_STATUS["status"]


@torch.compiler.disable  # FLA's autograd functions and Triton launches stay out of the compiled graph
def fla_cmp_and_slc(q, k, v, gates, config):
    """FLA's compressed and selected branches, gated: [B, H, T, D] in, [B, H, T, D] out."""
    q_, k_, v_ = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    g = gates.transpose(1, 2).to(q.dtype)
    o = fla_parallel_nsa()(q_, k_, v_, g_cmp=g[..., 0].contiguous(), g_slc=g[..., 1].contiguous(), g_swa=None,
                           block_counts=config.select_count, block_size=config.select_block, window_size=0)
    return o.transpose(1, 2)


def window_attention(q, k, v, config):
    """The window branch alone, in FlexAttention with model_sparse's sliding-window BlockMask (T whole tiles)."""
    mask = model_sparse.block_mask("sliding_window", config.window, 0, 0, 0, q.shape[2], str(q.device))
    if REPEAT_KV_WIN:
        k, v = per_query_head(k, q.shape[1]), per_query_head(v, q.shape[1])
    return model_sparse.compiled_flex_attention(q, k, v, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


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
        # constants of the model, not state of the sequence (the leading _ keeps them out of state_bytes), built
        # once: each step of each layer would otherwise compute them again, a few small kernels apiece.
        # The selection's gather; where each compressed block ends (visible from there on); and for each
        # position p, the first of the l keys that a block ending at p pools and the slot that block goes to
        # (the spare slot where p ends no block: one shape for every step).
        L, size, d = config.block_size, config.cmp_block, config.cmp_stride
        self._importance = importance_tables(self.n_blocks, config.n_select_blocks(L), config, device)
        self._ends = block_ends(self.n_blocks, config, device)
        start = torch.arange(L, device=device) + 1 - size
        self._first, self._offsets = start.clamp(min=0), torch.arange(size, device=device)
        self._slot = torch.where((start >= 0) & (start % d == 0), start.div(d, rounding_mode="floor"), self.n_blocks)
        # a selected block's keys from its first, and the window's from the newest (pos + 1 - w .. pos)
        self._in_block = torch.arange(config.select_block, device=device)
        self._back = torch.arange(1 - config.window, 1, device=device)

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
        if c.use_fla and c.fla_layout() is None and (FLA_STATUS["status"] if FLA_STATUS else fla_status()) is None:
            return "fla+flex"
        return ("flex+triton" if c.use_triton else "flex") if c.use_flex else "pytorch"

    def forward_flops_per_token(self, T):
        c = self.config
        t = torch.arange(T, dtype=torch.float64)
        cmp = ((t + 1 - c.cmp_block).clamp(min=-1).div(c.cmp_stride, rounding_mode="floor") + 1).mean()
        keys = cmp + (t + 1).clamp(max=c.select_count * c.select_block).mean() + (t + 1).clamp(max=c.window).mean()
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
                y = fla_cmp_and_slc(q, k, v, gates, c)
                if c.window:
                    y = y + window_attention(q, k, v, c) * gates[..., 2, None].to(y.dtype)
            else:
                y = self._flex(q, k, v, kc, vc, gates)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_dropout(self.c_proj(y)), att

    def _flex(self, q, k, v, kc, vc, gates):
        c, T = self.config, q.shape[2]
        cmp_mask = compressed_block_mask(T, c.cmp_block, c.cmp_stride, str(q.device))
        kc_, vc_ = (per_query_head(kc, self.n_head), per_query_head(vc, self.n_head)) if REPEAT_KV_CMP else (kc, vc)
        o_cmp = model_sparse.compiled_flex_attention(q, kc_, vc_, block_mask=cmp_mask, enable_gqa=kc_.shape[1] != self.n_head)
        if c.use_triton:
            o_slc = selected_attention(q, k, v, selection_triton(q, kc, c), c.select_block)
        else:
            o_slc = self._selected_flex(q, k, v, kc)
        o_win = window_attention(q, k, v, c) if c.window else torch.zeros_like(o_slc)
        return combine((o_cmp, o_slc, o_win), gates)

    # Run as its own eager call of compiled pieces: inlined into a compiled model, the selection's
    # BlockMask (its mask_mod closing over this forward's choice) gave wrong outputs and gradients
    # on an H100 (torch 2.11), while the same pieces called this way match the reference.
    @torch.compiler.disable
    def _selected_flex(self, q, k, v, kc):
        c = self.config
        sel = blocks_as_mask(selection_for_flex(q, kc, c), c.n_select_blocks(q.shape[2]))
        return selected_flex(q, k, v, sel, tile_mask_from_selection(sel, c), c.select_block)

    def _compress_step(self, cache, pos):
        """After the key at pos is written: if it completes compressed block i (pos + 1 - l = i·d),
        compress that block into slot i; otherwise into the spare slot. No host synchronisation."""
        idx = cache._first.index_select(0, pos) + cache._offsets
        kb, vb = (t.index_select(2, idx).unsqueeze(2) for t in (cache.k, cache.v))  # [B, Hkv, 1, l, D]
        kc, vc = pool(kb, self.k_compress), pool(vb, self.v_compress)
        cache.write_compressed(kc, vc, cache._slot.index_select(0, pos))


class GPT(model.GPT):
    attention_class = NSAAttention
