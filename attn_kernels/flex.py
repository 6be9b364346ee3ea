"""
FlexAttention plumbing (Dong et al. 2024, "Flex Attention") shared by model_sparse.py and model_nsa.py.

A BlockMask of FLEX_BLOCK × FLEX_BLOCK tiles lets flex_attention skip the tiles a mask leaves empty.
Every (mask_mod, length) compiles flex_attention anew, so masks are built once per setting
(built_once) and reused by every layer and step.

Tested against the pure-PyTorch references: model_sparse.blocked_sparse_attention
(tests/test_sparse.py) and model_nsa.nsa_branches' window branch (tests/test_nsa.py).
"""

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

FLEX_BLOCK = 128

# past dynamo's recompile limit flex_attention would silently run an unfused path that forms the T×T scores:
# a sweep over many lengths and masks needs more compilations than the default 8, and past 64 it fails loudly
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
torch._dynamo.config.fail_on_recompile_limit_hit = True
compiled_flex_attention = torch.compile(flex_attention, dynamic=False)  # both compile on first call
compiled_create_block_mask = torch.compile(create_block_mask)  # never forms the T×T mask (4 GiB at T=65,536)


def built_once(make):
    """make(*setting), e.g. a BlockMask, built once per setting when called eagerly, and traced into the
    graph when called inside a compiled model (a few small fused kernels a step): a cached builder there
    is a graph break in every layer, which made the baby GPT's sliding window 2.5x slower a training step
    than softmax on an H100 (results/h100-sparse)."""
    cached = functools.cache(make)

    @functools.wraps(make)
    def get(*setting):
        return make(*setting) if torch.compiler.is_compiling() else cached(*setting)
    return get


def new_block_mask(mod, Q, K, device):
    """A BlockMask of FLEX_BLOCK tiles: compiled when eager on CUDA (the T×T mask is never formed)."""
    compiled = device.startswith("cuda") and not torch.compiler.is_compiling()
    create = compiled_create_block_mask if compiled else create_block_mask
    return create(mod, None, None, Q, K, device=device, BLOCK_SIZE=FLEX_BLOCK)


@built_once
def sliding_window_block_mask(window, T, device):
    """T causal queries over the last `window` keys each: i - window < j <= i."""
    def mod(b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        return (d >= 0) & (d < window)
    return new_block_mask(mod, T, T, device)


# -----------------------------------------------------------------------------
# Native Sparse Attention's compressed and selected branches (model_nsa.py's flex path)

@built_once
def compressed_block_mask(T, size, stride, device):
    """T queries over the (T - size) // stride + 1 compressed blocks, block i visible once complete:
    i·stride + size - 1 <= t."""
    def visible(b, h, q_idx, kv_idx):
        return kv_idx * stride + size - 1 <= q_idx
    return new_block_mask(visible, T, (T - size) // stride + 1, device)


def tile_mask_from_selection(sel, select_block):
    """sel [B, Hkv, T, Ts] (query t reads block j of select_block keys) -> [B, Hkv, T/128, T/128] bool:
    the FLEX_BLOCK tiles that hold a selected key of some query of the tile (and are not wholly in its future)."""
    B, Hkv, T, Ts = sel.shape
    n = T // FLEX_BLOCK
    rows = sel.view(B, Hkv, n, FLEX_BLOCK, Ts).any(3).float()  # [B, Hkv, n, Ts]
    j0 = torch.arange(Ts, device=sel.device)[:, None] * select_block
    tile0 = torch.arange(n, device=sel.device)[None, :] * FLEX_BLOCK
    covers = (j0 < tile0 + FLEX_BLOCK) & (j0 + select_block > tile0)  # [Ts, n]: block j meets tile
    tiles = (rows @ covers.float()) > 0
    return tiles & torch.ones(n, n, dtype=torch.bool, device=sel.device).tril()


def selected_flex(q, k, v, sel, tiles, select_block):
    """q [B, H, T, D] over the keys of k, v [B, Hkv, T, D] in the blocks sel [B, Hkv, T, Ts] marks for its
    K/V head (keys after the query masked), visiting only the tiles of tile_mask_from_selection."""
    G = q.shape[1] // k.shape[1]
    num = tiles.sum(-1, dtype=torch.int32).repeat_interleave(G, dim=1)
    idx = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32).repeat_interleave(G, dim=1)

    def chosen(b, h, q_idx, kv_idx):
        return sel[b, h // G, q_idx, kv_idx // select_block] & (kv_idx <= q_idx)

    mask = BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=chosen, seq_lengths=(q.shape[2], k.shape[2]))
    return flex_attention(q, k, v, block_mask=mask, enable_gqa=G > 1)


# the mask_mod closes over this forward's selection: built inside the compiled function, so one compiled
# kernel serves every selection of a shape
compiled_selected_flex = torch.compile(selected_flex, dynamic=False)
