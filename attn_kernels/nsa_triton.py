"""
Native Sparse Attention's selected branch and its block selection in Triton, for model_nsa.py's
flex+triton path (use_triton), each kernel a torch.library custom operator (so a compiled model stays
one graph and CUDA graphs can replay it).

    selected_attention   q [B, H, T, D] attends, per GQA group, only the n blocks idx [B, Hkv, T, n] of
                         k, v [B, Hkv, T, D] that the group chose, keys after the query masked. Forward and
                         dQ: one program per (token, K/V head) runs over its n blocks with an online softmax,
                         the group's query heads together (the paper's kernel). dK/dV: the selection inverted
                         (selection_work: for each block, the tokens that chose it), one program per segment
                         of SLC_SEGMENT tokens of a block, segments adding their dK/dV atomically, so a block
                         every query reads (the first) is spread over many programs. No T×T anything.
                         Reference: SDPA with the selection as a boolean mask, model_nsa.nsa_branches'
                         selected branch.
    nsa_group_probs      a GQA group's summed compressed-attention probabilities [B, Hkv, R, Tc], without
                         each head's [R, Tc] scores in memory: per tile of queries a first pass over the
                         visible compressed keys finds each head's softmax normaliser, a second sums the
                         heads' exp2(s - lse). Reference: model_nsa.cmp_probs summed over the group.
    nsa_top_blocks       the n best blocks of each row by n rounds of max, the forced blocks (first,
                         previous, current) at +inf and the future at -inf. Reference: model_nsa.chosen_blocks.

model_nsa.selection_triton runs the last two with model_nsa.block_importance between them. The tests
(tests/test_nsa.py) run every kernel under Triton's interpreter (TRITON_INTERPRET=1) on the CPU against
those references, and compile each for an H100.
"""

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton here (torch's CUDA builds bring it): model_nsa's use_triton is unavailable
    triton = None


def triton_takes(select_block):
    """Whether the kernels run selectable blocks of this size: a power of two >= 16 (tl.dot's minimum)."""
    return select_block >= 16 and select_block & (select_block - 1) == 0


# -----------------------------------------------------------------------------
# the selected branch

SLC_SEGMENT = 256  # tokens per dK/dV program
SLC_ROWS = 64  # query rows (tokens × heads) per step of a dK/dV program: at 128 ptxas spills on sm_90 (results/h100-nsa)
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


# custom operators, opaque to torch.compile but inside its graph: a graph break at each layer would leave its glue
# eager, almost 3x a baby NSA training step's GPU time (results/h100-bakeoff)
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


# -----------------------------------------------------------------------------
# the selection

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


@torch.library.custom_op("attention_lab::nsa_group_probs", mutates_args=())
def nsa_group_probs(q: torch.Tensor, kc: torch.Tensor, t0: int, rows: int, cmp_block: int,
                    cmp_stride: int) -> torch.Tensor:
    """[B, Hkv, rows, Tc] float32: for the queries at positions t0 .. t0 + rows - 1 of q [B, H, T, D], the
    softmax weights over the compressed keys kc [B, Hkv, Tc, D] complete by then (block i ends at
    i·cmp_stride + cmp_block - 1), summed over each K/V head's group of query heads."""
    B, H, T, D = q.shape
    Hkv, Tc = kc.shape[1], kc.shape[2]
    q, kc = q.contiguous(), kc.to(q.dtype).contiguous()  # one dtype for tl.dot
    p = torch.zeros(B, Hkv, rows, Tc, device=q.device, dtype=torch.float32)
    lse = torch.empty(B * H, rows, device=q.device, dtype=torch.float32)
    if Tc:
        cmp_group_probs[(triton.cdiv(rows, SEL_ROWS), B * Hkv)](
            q, kc, lse, p, T, t0, rows, Tc, LOG2E / math.sqrt(D), cmp_block, cmp_stride, G=H // Hkv, D=D,
            BD=max(16, triton.next_power_of_2(D)), BQ=SEL_ROWS, BC=SEL_KEYS,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    return p


@nsa_group_probs.register_fake
def _(q, kc, t0, rows, cmp_block, cmp_stride):
    return q.new_empty(q.shape[0], kc.shape[1], rows, kc.shape[2], dtype=torch.float32)


@torch.library.custom_op("attention_lab::nsa_top_blocks", mutates_args=())
def nsa_top_blocks(x: torch.Tensor, t0: int, n_sel: int, select_block: int, select_count: int) -> torch.Tensor:
    """[B, Hkv, R, min(select_count, n_sel)] int32 block ids, -1 in a slot left empty: for the queries at
    positions t0 .. t0 + R - 1, the best-scored of the n_sel blocks by x [B, Hkv, R, Tx] (blocks from Tx
    on score 0), the first, previous and current ones always and none after the query's."""
    B, Hkv, R, Tx = x.shape
    N, BTS = min(select_count, n_sel), triton.next_power_of_2(n_sel)
    BR = max(1, min(16, 8192 // BTS))
    ids = torch.empty(B, Hkv, R, N, device=x.device, dtype=torch.int32)
    top_blocks[(triton.cdiv(R, BR), B * Hkv)](x.contiguous(), ids, t0, R, Tx, select_block, BR=BR, BTS=BTS, N=N)
    return ids


@nsa_top_blocks.register_fake
def _(x, t0, n_sel, select_block, select_count):
    return x.new_empty(*x.shape[:3], min(select_count, n_sel), dtype=torch.int32)
