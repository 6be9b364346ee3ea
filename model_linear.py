"""
Linear attention: softmax's exp(q·k) replaced by a kernel φ(q)·φ(k), so the sum over the past
can be carried as a state instead of recomputed ("Transformers are RNNs", Katharopoulos et al.
2020; Based, Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff").

    y_t = φ(q_t)ᵀ S_t / (φ(q_t)ᵀ z_t + ε),    S_t = Σ_{s≤t} φ(k_s) v_sᵀ,    z_t = Σ_{s≤t} φ(k_s)

Feature maps φ (FEATURE_MAPS below; add yours there):
    elu       ELU(x) + 1                                  (Katharopoulos et al.)
    relu      ReLU(x) + 1e-6
    taylor    [1, x / d^¼, (x ⊗ x) / √(2d)], so φ(q)·φ(k) = 1 + q·k/√d + (q·k)²/2d,
              the 2nd-order Taylor expansion of exp(q·k/√d)  (Based; use n_features ≈ 16)
    identity  x: not positive, so it needs normalize=False, where the output is instead
              RMS-normalised per head (as TransNormer / RetNet normalise their outputs)
`n_features` > 0 projects queries and keys to that dimension before φ (Based's small feature dim).

Training runs the chunked form (chunks of C tokens), never a T×T matrix:
    inter-chunk:  φQ_c S_c          with S_c the state before chunk c (a prefix sum of φK_jᵀV_j)
    intra-chunk:  tril(φQ_c φK_cᵀ) V_c
O(T·C·d + T·d²) time and O(T·d + (T/C)·d²) memory. The normaliser is the same sum with a column
of ones appended to V, in float32 with ε = 1e-6 (bf16 sums of positive terms lose the small ones).
The pure-PyTorch chunked form is the default on every device: on an H100 it measured faster than
flash-linear-attention's chunk kernel at every length (one layer fwd+bwd, 16k tokens per batch:
3.0-3.5 ms from T=256 to 16,384 against FLA's 3.7-14.4, results/h100-linear), as FLA carries the state
across chunks one after another and has little parallel work when B·H is small. `linear_fla=True` runs the
numerator in FLA's kernel (fla.ops.linear_attn) on CUDA instead; a GPU test checks the two agree.

`based_window` = w > 0 adds Based's companion: softmax attention over the last w tokens (blocked,
so O(T·w) memory), and the layer outputs the mean of the two branches.

Decoding carries (S, z) per layer, plus the window's ring buffer: constant memory and time per
token. Positions: linear attention has none of its own beyond causality. With learned positions
(the baby GPT's) the context is capped at block_size and generation past it recomputes the last
block_size tokens, as softmax does; with 'sinusoidal' or 'none' the state simply carries on.
RoPE and ALiBi act on q·k scores, which φ does not preserve, so they are refused here.
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import model

EPS = 1e-6


def wide(x):
    """At least float32: sums of many positive terms lose the small ones in bf16 (float64 stays float64)."""
    return x.to(model.wide_dtype(x.dtype))


def with_ones(v):
    """[v, 1] in at least float32: one sum then carries both the numerator (v) and the normaliser (1)."""
    v = wide(v)
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)


def taylor(x):
    d = x.shape[-1]
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2 * d)
    return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, outer], dim=-1)


# name -> (φ, output dimension for input dimension d, whether φ(q)·φ(k) > 0 always)
FEATURE_MAPS = {
    "elu": (lambda x: F.elu(x) + 1, lambda d: d, True),
    "relu": (lambda x: F.relu(x) + EPS, lambda d: d, True),
    "taylor": (taylor, lambda d: 1 + d + d * d, True),
    "identity": (lambda x: x, lambda d: d, False),
}


@dataclass
class GPTConfig(model.BackboneConfig):
    pos_embs = ("learned", "sinusoidal", "none")
    feature_map: str = "elu"
    n_features: int = 0  # 0: q and k keep the head dim
    based_window: int = 0  # > 0: add a sliding-window softmax branch over this many tokens (Based); 0: off
    normalize: bool = True  # divide by φ(q)·z; False: RMS-normalise each head's output instead
    chunk_size: int = 64
    linear_fla: bool = False  # True: flash-linear-attention's kernel on CUDA (measured slower, see above)

    def __post_init__(self):
        super().__post_init__()
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {', '.join(FEATURE_MAPS)}; got '{self.feature_map}'")
        if self.n_features < 0 or self.based_window < 0 or self.chunk_size < 1:
            raise ValueError("n_features and based_window must be >= 0 and chunk_size >= 1")
        if self.normalize and not FEATURE_MAPS[self.feature_map][2]:
            raise ValueError(f"feature_map='{self.feature_map}' can make the normaliser zero or negative; "
                             "use normalize=False")
        if self.feature_dim > 1024:
            raise ValueError(f"feature_map='{self.feature_map}' expands {self.key_dim} dims to {self.feature_dim}: "
                             "set n_features (Based uses 16)")

    @property
    def key_dim(self):
        return self.n_features or self.head_dim

    @property
    def feature_dim(self):
        return FEATURE_MAPS[self.feature_map][1](self.key_dim)


# -----------------------------------------------------------------------------
# the reference: pure PyTorch, any device, any dtype

def chunked_linear_attention(q, k, v, chunk_size):
    """Σ_{s≤t} (q_t·k_s) v_s for q, k [B, H, T, F] and v [B, H, T, D], chunk by chunk.

    Returns (out [B, H, T, D], the final state Σ_s k_s v_sᵀ [B, H, F, D]).
    """
    B, H, T, Fd = q.shape
    C = chunk_size
    pad = (-T) % C
    if pad:  # zero keys add nothing to any state
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    N = (T + pad) // C
    q, k, v = (x.reshape(B, H, N, C, x.shape[-1]) for x in (q, k, v))
    kv = k.transpose(-1, -2) @ v  # each chunk's contribution [B, H, N, F, D]
    # the state entering each chunk: an exclusive prefix sum (cumsum - kv would let the chunk's own,
    # later, keys perturb its earlier positions by a rounding error)
    before = torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1].cumsum(2)], dim=2)
    out = q @ before + (q @ k.transpose(-1, -2)).tril() @ v
    return out.reshape(B, H, N * C, -1)[:, :, :T], kv.sum(2)


def local_attention(q, k, v, window):
    """Softmax attention of each position over itself and the window-1 before it.

    Queries are taken in blocks of `window`; each block sees its own keys and the previous block's,
    so memory is O(T · window), never T×T.
    """
    B, H, T, D = q.shape
    w = window
    pad = (-T) % w
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    N = (T + pad) // w
    q, k, v = (x.reshape(B, H, N, w, x.shape[-1]) for x in (q, k, v))
    k2 = torch.cat([F.pad(k, (0, 0, 0, 0, 1, 0))[:, :, :N], k], dim=3)  # [previous block, this block]
    v2 = torch.cat([F.pad(v, (0, 0, 0, 0, 1, 0))[:, :, :N], v], dim=3)
    i = torch.arange(w, device=q.device)[:, None] + w  # query's index among the 2w keys
    j = torch.arange(2 * w, device=q.device)[None, :]
    allowed = (j <= i) & (j > i - w)
    allowed = allowed.expand(N, w, 2 * w).clone()
    allowed[0, :, :w] = False  # before the first block there is nothing
    scores = wide(q @ k2.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1).to(v.dtype)
    return (weights @ v2).reshape(B, H, N * w, -1)[:, :, :T]


@functools.cache
def fla_chunk_linear_attn():
    """flash-linear-attention's chunk kernel, imported on first use (it pulls in transformers)."""
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError:
        return None
    return chunk_linear_attn


# -----------------------------------------------------------------------------
# the attention module

class LinearState:
    """Decoding state of one layer: S and z as one [B, H, F, D+1] float32 tensor, and the window ring."""

    def __init__(self, batch_size, config, device, dtype):
        H, Fd, D, w = config.n_head, config.feature_dim, config.head_dim, config.based_window
        wide_dtype = model.wide_dtype(dtype)
        self.S = torch.zeros(batch_size, H, Fd, D + 1, device=device, dtype=wide_dtype)
        if w:
            self.ring_k = torch.zeros(batch_size, H, w, config.key_dim, device=device, dtype=dtype)
            self.ring_v = torch.zeros(batch_size, H, w, D, device=device, dtype=dtype)
            self.ring_pos = torch.full((w,), -(2 ** 62), device=device)  # empty slots: far in the past


class LinearAttention(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.config = config
        H, Hkv, Dk, D = config.n_head, config.n_kv_head, config.key_dim, config.head_dim
        self.sizes = [H * Dk, Hkv * Dk, Hkv * D]
        self.c_attn = nn.Linear(config.n_embd, sum(self.sizes), bias=config.bias)
        self.c_proj = nn.Linear(H * D, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.phi = FEATURE_MAPS[config.feature_map][0]

    def new_cache(self, batch_size, device, dtype):
        return LinearState(batch_size, self.config, device, dtype)

    def kernel_path(self, device_type):
        # Taylor features fail FLA's kernel on an H100 (fla 0.6.0, triton 3.6): they stay on the PyTorch path
        ok = device_type == "cuda" and self.config.linear_fla and self.config.feature_map != "taylor"
        return "fla" if ok and fla_chunk_linear_attn() else "pytorch"

    def forward_flops_per_token(self, T):
        c = self.config
        C, Fd, D = min(c.chunk_size, T), c.feature_dim, c.head_dim
        flops = 2 * c.n_head * (C * (Fd + D) + 2 * Fd * (D + 1))  # intra-chunk scores and values; state in and out
        return flops + (2 * 2 * c.n_head * c.key_dim * min(c.based_window, T) if c.based_window else 0)

    def forward(self, x, pos, cache=None, return_attn=False):
        B, T, _ = x.shape
        c = self.config
        H, Hkv = c.n_head, c.n_kv_head
        q, k, v = self.c_attn(x).split(self.sizes, dim=2)
        q = q.view(B, T, H, -1).transpose(1, 2)
        k = k.view(B, T, Hkv, -1).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        v = v.view(B, T, Hkv, -1).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        fq, fk = self.phi(wide(q)), self.phi(wide(k))
        att = None
        if return_attn:
            y, att = self._attend_with_map(fq, fk, q, k, v)
        elif cache is not None and T == 1:
            y = self._step(fq, fk, q, k, v, pos, cache)
        else:
            y = self._linear(fq, fk, v, x.is_cuda)
            if c.based_window:
                y = 0.5 * (y + local_attention(q, k, v, c.based_window))
            if cache is not None:
                self._fill(cache, fk, k, v, pos)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.resid_dropout(self.c_proj(y)), att

    def _linear(self, fq, fk, v, on_cuda):
        c = self.config
        if on_cuda and self.kernel_path("cuda") == "fla":
            pad = fq.shape[-1] % 2  # the kernel's bf16 backward wants an even key dim; a zero feature adds nothing
            q_, k_ = F.pad(fq, (0, pad)), F.pad(fk, (0, pad))
            num, _ = fla_chunk_linear_attn()(*(t.transpose(1, 2).to(v.dtype).contiguous() for t in (q_, k_, v)),
                                             scale=1.0, normalize=False)
            num = num.transpose(1, 2).float()
            if not c.normalize:
                return self._rms(num, v.dtype)
            den = (fq * fk.cumsum(2)).sum(-1, keepdim=True)  # float32, O(T·F)
            return (num / (den + EPS)).to(v.dtype)
        if not c.normalize:
            out, _ = chunked_linear_attention(fq, fk, wide(v), c.chunk_size)
            return self._rms(out, v.dtype)
        out, _ = chunked_linear_attention(fq, fk, with_ones(v), c.chunk_size)
        return (out[..., :-1] / (out[..., -1:] + EPS)).to(v.dtype)

    def _rms(self, y, dtype):
        return F.rms_norm(y, (y.shape[-1],), eps=EPS).to(dtype)

    def _readout(self, fq, S, dtype):
        out = fq @ S  # [B, H, T, D+1]
        if not self.config.normalize:
            return self._rms(out[..., :-1], dtype)
        return (out[..., :-1] / (out[..., -1:] + EPS)).to(dtype)

    def _fill(self, cache, fk, k, v, pos):
        """A prefill: the state is the whole sum; the ring holds the last `based_window` tokens."""
        cache.S.copy_(fk.transpose(-1, -2) @ with_ones(v))
        if self.config.based_window:
            w = self.config.based_window
            last = pos[-w:]
            cache.ring_k.index_copy_(2, last % w, k[:, :, -w:].to(cache.ring_k.dtype))
            cache.ring_v.index_copy_(2, last % w, v[:, :, -w:].to(cache.ring_v.dtype))
            cache.ring_pos.index_copy_(0, last % w, last)

    def _step(self, fq, fk, q, k, v, pos, cache):
        cache.S.add_(fk.transpose(-1, -2) @ with_ones(v))
        y = self._readout(fq, cache.S, v.dtype)
        w = self.config.based_window
        if w:
            slot = pos % w
            cache.ring_k.index_copy_(2, slot, k.to(cache.ring_k.dtype))
            cache.ring_v.index_copy_(2, slot, v.to(cache.ring_v.dtype))
            cache.ring_pos.index_copy_(0, slot, pos)
            valid = (cache.ring_pos > pos - w)[None, :]
            local = F.scaled_dot_product_attention(q, cache.ring_k.to(q.dtype), cache.ring_v.to(q.dtype),
                                                   attn_mask=valid)
            y = 0.5 * (y + local)
        return y

    def _attend_with_map(self, fq, fk, q, k, v):
        """The implied T×T weights A, only when asked for. Normalised: y = A v exactly; unnormalised:
        A holds the raw φ(q)·φ(k) and y = RMSNorm(A v); with a window, A averages both branches' maps."""
        T = q.shape[2]
        i, j = torch.arange(T, device=q.device)[:, None], torch.arange(T, device=q.device)[None, :]
        A = (fq @ fk.transpose(-1, -2)).masked_fill(j > i, 0.0)
        if self.config.normalize:
            A = A / (A.sum(-1, keepdim=True) + EPS)
        y = A @ wide(v)
        y = y.to(v.dtype) if self.config.normalize else self._rms(y, v.dtype)
        if self.config.based_window:
            scores = wide(q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            A_win = scores.masked_fill((j > i) | (j <= i - self.config.based_window), float("-inf")).softmax(-1)
            y = 0.5 * (y + (A_win.to(v.dtype) @ v))
            A = 0.5 * (A + A_win)
        return y, A.to(v.dtype)


class GPT(model.GPT):
    attention_class = LinearAttention

    @property
    def streams(self):  # learned positions cap the context; otherwise the state carries on
        return self.config.pos_emb != "learned"
