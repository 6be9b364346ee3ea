"""
Delta-rule attention: a linear-attention state that is corrected, not just accumulated.

DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length"), with the state S ∈ R^{K×V} per head:

    S_t = S_{t-1} + β_t k_t (v_t - S_{t-1}ᵀ k_t)ᵀ = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
    o_t = S_tᵀ q_t

Gated DeltaNet (Yang et al., ICLR 2025) decays the state first: S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1}
+ β_t k_t v_tᵀ, with log α_t = -exp(A_log) · softplus(a_t + dt_bias) per head (Mamba-2's gate).
Gated DeltaProduct (Siems et al. 2025) takes `num_householder` = n keys, values and βs per token
and applies n such steps per token (a product of n Householder-like transitions), the decay on
the first: exactly the gated delta rule over a sequence of T·n sub-tokens, read after each n-th.

Keys and queries are L2-normalised per head (so I - β k kᵀ is a contraction for β ∈ (0, 2)),
β = sigmoid(b_t) (× 2 with `allow_neg_eigval`, letting transitions have negative eigenvalues,
Grazzi et al. 2025), q/k/v pass a short causal depthwise convolution and SiLU, and the output is
RMS-normalised per head (× SiLU(g_t) of an output gate in the gated variants, and in DeltaNet with
`use_gate`), as in flash-linear-attention's DeltaNet / GatedDeltaNet / GatedDeltaProduct layers.
At initialisation SiLU(g) ≈ g/2 is small and of either sign, which slows learning to recall; a
sigmoid gate (`gate_fn`) starts at 1/2 everywhere (results/cpu-mqar-gates).

Training form (chunks of C tokens, the WY / UT representation): within a chunk with state S
entering, cumulative decays Γ_i = Π_{j≤i} α_j, and

    A[i, j] = β_i (Γ_i/Γ_j) k_i·k_j  (j < i),       T = (I + A)⁻¹        (lower unitriangular)
    U = T diag(β) V - T diag(βΓ) K S                (the corrected values u_t, all at once)
    O = diag(Γ) Q S + (QKᵀ ⊙ Γ_i/Γ_j, j ≤ i) U
    S' = Γ_C S + (K ⊙ Γ_C/Γ)ᵀ U

so everything but the S recurrence across chunks is batched matrix work: O(T·C·d + T·d²), never
T×T. That recurrence is affine in S, S' = M S + D with M = Γ_C I - (K ⊙ Γ_C/Γ)ᵀ W, so at long T
it is solved as a scan over chunks (pairs composed, log₂ of the chunk count levels) instead of one
small step per chunk. On CUDA the same function runs in flash-linear-attention's chunk kernels
(bf16), wrapped as PyTorch operators, so torch.compile and CUDA graphs take them in whole. The layer
keeps one bf16 copy of its input and its projections for the backward and recomputes the convolutions
and the output norm there. FLA's gated kernels refuse some setups (Triton >= 3.4, < 3.7.1 on Hopper),
and on that setup FLA's delta rule faults when keys and values differ in width; the layer then falls
back to the PyTorch form with one warning, and kernel_path says 'pytorch-fallback'.

Decoding carries S (and the last conv_size-1 projections for the convolutions): constant memory
and time per token. With learned positions the context is capped at block_size like softmax's;
otherwise the state carries on.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import model
from attn_kernels import fla_delta

VARIANTS = ("deltanet", "gated_deltanet", "gated_deltaproduct")
GATE_FNS = {"silu": F.silu, "sigmoid": torch.sigmoid}


@dataclass
class GPTConfig(model.BackboneConfig):
    pos_embs = ("learned", "sinusoidal", "none")  # its short convolution carries order too
    variant: str = "deltanet"
    num_householder: int = 2  # gated_deltaproduct: delta steps per token
    allow_neg_eigval: bool = False  # β in (0, 2) instead of (0, 1)
    use_gate: bool = False  # deltanet: the output gate the gated variants always have (FLA's DeltaNet use_gate)
    gate_fn: str = "silu"  # the output gate's activation, silu or sigmoid (FLA's output_gate_activation)
    # the gated variants' decay init: dt log-uniform in [dt_min, dt_max] (Mamba-2's); a smaller dt starts a longer memory
    dt_min: float = 1e-3
    dt_max: float = 0.1
    use_short_conv: bool = True
    conv_size: int = 4
    head_k_dim: int = 0  # 0: n_embd // n_head
    head_v_dim: int = 0  # 0: = the key head dim
    chunk_size: int = 64
    scan_from: int = 16  # chunks per sequence from which the state recurrence is a scan, not a loop; 0: never
    use_fla: bool = True  # flash-linear-attention's kernels on CUDA; False: the PyTorch path everywhere

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got '{self.variant}'")
        for name in ("num_householder", "conv_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.scan_from < 0:
            raise ValueError(f"scan_from must be >= 0 (0: the loop over chunks always), got {self.scan_from}")
        if self.head_k_dim < 0 or self.head_v_dim < 0:
            raise ValueError("head_k_dim and head_v_dim must be >= 0 (0: the default)")
        if self.n_kv_head != self.n_head:
            raise ValueError("the delta family has no grouped K/V heads; leave n_kv_head unset")
        if self.gate_fn not in GATE_FNS:
            raise ValueError(f"gate_fn must be one of {', '.join(GATE_FNS)}; got '{self.gate_fn}'")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")

    @property
    def k_dim(self):
        return self.head_k_dim or self.n_embd // self.n_head

    @property
    def v_dim(self):
        return self.head_v_dim or self.k_dim

    @property
    def gated(self):  # a decaying state
        return self.variant != "deltanet"

    @property
    def output_gate(self):
        return self.gated or self.use_gate

    @property
    def steps(self):  # delta steps per token
        return self.num_householder if self.variant == "gated_deltaproduct" else 1


# -----------------------------------------------------------------------------
# the reference: pure PyTorch, float32 or float64, any device

def recurrent_delta_rule(q, k, v, beta, log_alpha=None, state=None):
    """The definition, one token at a time. q, k [B, H, T, K], v [B, H, T, V], beta and log_alpha
    [B, H, T]; q is used as given (scale it first). Returns (o [B, H, T, V], final state [B, H, K, V])."""
    B, H, T, K = k.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=q.dtype, device=q.device) if state is None else state
    out = []
    for t in range(T):
        if log_alpha is not None:
            S = S * log_alpha[:, :, t, None, None].exp()
        kt = k[:, :, t]
        u = beta[:, :, t, None] * (v[:, :, t] - (S * kt[..., None]).sum(-2))
        S = S + kt[..., None] * u[..., None, :]
        out.append((q[:, :, t, :, None] * S).sum(-2))
    return torch.stack(out, dim=2), S


def chunked_delta_rule(q, k, v, beta, log_alpha=None, chunk_size=64, state=None, scan_from=16, read_every=1):
    """The same function in chunks (WY representation; module docstring). Same arguments; the states
    between chunks come from a loop over the chunks or, from `scan_from` chunks on (0: never), from
    chunk_state_scan in O(log chunks) batched steps (the default 16 is where the scan caught up with the
    loop on a 2-core CPU, results/cpu-delta; on the H100, at Gated DeltaProduct's 8 chunks, the loop
    is the faster: results/h100-delta). Either way only the state's two small products a
    chunk are sequential; the chunks' outputs follow from their entering states in one batched step.
    read_every = n: the state is read only after every n-th step (Gated DeltaProduct's n Householder
    steps per token): q holds those T / n queries and o their T / n outputs, and the rows that
    would read after the other steps are never computed."""
    B, H, T, K = k.shape
    V, C, n = v.shape[-1], chunk_size, read_every
    if T % n or C % n:
        raise ValueError(f"read_every ({n}) must divide the steps ({T}) and the chunk size ({C})")
    pad = (-T) % C
    if log_alpha is None:
        log_alpha = torch.zeros_like(beta)
    if pad:  # β = 0 and α = 1 on padding: those steps leave the state alone
        k, v = (F.pad(x, (0, 0, 0, pad)) for x in (k, v))
        q = F.pad(q, (0, 0, 0, pad // n))
        beta, log_alpha = F.pad(beta, (0, pad)), F.pad(log_alpha, (0, pad))
    N = (T + pad) // C
    k, v = (x.reshape(B, H, N, C, x.shape[-1]) for x in (k, v))
    q = q.reshape(B, H, N, C // n, K)
    beta, gamma = beta.reshape(B, H, N, C), log_alpha.reshape(B, H, N, C).cumsum(-1)

    i = torch.arange(C, device=q.device)
    strict, incl = i[:, None] > i[None, :], i[:, None] >= i[None, :]
    ratio = (gamma[..., :, None] - gamma[..., None, :])  # log Γ_i/Γ_j
    decay_strict = ratio.masked_fill(~strict, float("-inf")).exp()
    read = slice(n - 1, None, n)  # the steps after which the state is read (a view: no copy when n = 1)
    decay_incl = ratio[..., read, :].masked_fill(~incl[read], float("-inf")).exp()
    A = beta[..., None] * (k @ k.transpose(-1, -2)) * decay_strict
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    Tinv = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    u_free = Tinv @ (beta[..., None] * v)  # U = u_free - W S
    W = Tinv @ ((beta * gamma.exp())[..., None] * k)
    P = (q @ k.transpose(-1, -2)) * decay_incl
    q_decayed = q * gamma[..., read].exp()[..., None]
    k_to_end = k * (gamma[..., -1:] - gamma).exp()[..., None]
    chunk_decay = gamma[..., -1].exp()[..., None, None]

    S = torch.zeros(B, H, K, V, dtype=q.dtype, device=q.device) if state is None else state
    if 0 < scan_from <= N:
        # S' = Γ_C S + (K ⊙ Γ_C/Γ)ᵀ (u_free - W S) is affine in S: S' = M S + D with, per chunk,
        k_end_t = k_to_end.transpose(-1, -2)
        M = chunk_decay * torch.eye(K, dtype=q.dtype, device=q.device) - k_end_t @ W
        states, S = chunk_state_scan(M, k_end_t @ u_free, S)  # the state entering each chunk, and the last
        U = u_free - W @ states
    else:
        states, U = [], []
        for c in range(N):  # the only sequential part: the state from chunk to chunk
            states.append(S)
            U.append(u_free[:, :, c] - W[:, :, c] @ S)
            S = chunk_decay[:, :, c] * S + k_to_end[:, :, c].transpose(-1, -2) @ U[-1]
        states, U = torch.stack(states, 2), torch.stack(U, 2)
    out = q_decayed @ states + P @ U  # O = Q_Γ S + P U, for all chunks at once
    return out.reshape(B, H, N * C // n, V)[:, :, :T // n], S


def chunk_state_scan(M, D, S):
    """States of the recurrence S_{n+1} = M_n S_n + D_n: M [..., N, K, K], D [..., N, K, V], S_0 [..., K, V].
    Returns (S_0..S_{N-1} as [..., N, K, V], S_N). Pairs of chunks are composed into one step
    (M₂M₁, M₂D₁ + D₂), the half-length recurrence is solved the same way, and the states between
    pairs follow in one batched step: log₂ N levels, 2N matrices in all (work-efficient)."""
    N = M.shape[-3]
    if N == 1:
        return S[..., None, :, :], M[..., 0, :, :] @ S + D[..., 0, :, :]
    if N % 2:  # an identity step at the end makes the pairs come out even
        M = torch.cat([M, torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand_as(M[..., :1, :, :])], -3)
        D = torch.cat([D, torch.zeros_like(D[..., :1, :, :])], -3)
    M1, M2, D1, D2 = M[..., 0::2, :, :], M[..., 1::2, :, :], D[..., 0::2, :, :], D[..., 1::2, :, :]
    even, last = chunk_state_scan(M2 @ M1, M2 @ D1 + D2, S)  # the states entering chunks 0, 2, 4, ...
    odd = M1 @ even + D1  # and entering chunks 1, 3, 5, ...
    return torch.stack([even, odd], -3).flatten(-4, -3)[..., :N, :, :], last


def implied_attention(q, k, beta, log_alpha=None, read_every=1):
    """The [B, H, T / read_every, T] matrix M with o = M v for a zero initial state: the chunked form
    with one chunk, O = (QKᵀ ⊙ Γ_i/Γ_j) (I + A)⁻¹ diag(β) V. Only for visualisation."""
    T = k.shape[2]
    eye = torch.eye(T, dtype=q.dtype, device=q.device).expand(*k.shape[:2], T, T)
    M, _ = chunked_delta_rule(q, k, eye, beta, log_alpha, chunk_size=T, read_every=read_every)
    return M


# -----------------------------------------------------------------------------
# the attention module

class DeltaState:
    """One layer's decoding state: S [B, H, K, V] in float32 and the convolutions' last inputs."""

    def __init__(self, batch_size, config, device, dtype):
        H, K, V, n = config.n_head, config.k_dim, config.v_dim, config.steps
        wide = model.wide_dtype(dtype)
        self.S = torch.zeros(batch_size, H, K, V, device=device, dtype=wide)
        past = config.conv_size - 1 if config.use_short_conv else 0  # nothing to remember without convolutions
        self.conv = [torch.zeros(batch_size, c, past, device=device, dtype=wide) for c in (H * K, n * H * K, n * H * V)]


class DeltaAttention(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.config = config
        H, K, V, n, C = config.n_head, config.k_dim, config.v_dim, config.steps, config.n_embd
        # q, k, v, β (and the gated variants' decay a, and the output gate g) in one projection: one matmul,
        # and one bf16 copy of x kept for its backward instead of one per projection under autocast
        self.sizes = [H * K, n * H * K, n * H * V, n * H] + [H] * config.gated + [H * V] * config.output_gate
        self.c_attn = nn.Linear(C, sum(self.sizes), bias=False)
        if config.use_short_conv:  # the backbone's convolution, with nn.Conv1d's initialisation
            self.q_conv, self.k_conv, self.v_conv = (model.ShortConv(c, config.conv_size) for c in self.sizes[:3])
            for conv in (self.q_conv, self.k_conv, self.v_conv):
                nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
        if config.gated:
            # Mamba-2's decay init: A ~ U(0, 16), dt log-uniform in [dt_min, dt_max], dt_bias = softplus⁻¹(dt)
            self.A_log = nn.Parameter(torch.empty(H).uniform_(0, 16).log())
            lo, hi = math.log(config.dt_min), math.log(config.dt_max)
            dt = torch.exp(torch.rand(H) * (hi - lo) + lo).clamp(min=min(1e-4, config.dt_min))
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.o_norm = nn.Parameter(torch.ones(V))
        self.c_proj = nn.Linear(H * V, C, bias=config.bias)  # named so the backbone's depth-scaled init finds it
        self.resid_dropout = nn.Dropout(config.dropout)

    def new_cache(self, batch_size, device, dtype):
        return DeltaState(batch_size, self.config, device, dtype)

    def kernel_path(self, device_type):
        if device_type != "cuda" or not self.config.use_fla:
            return "pytorch"
        c = self.config
        equal = c.k_dim == c.v_dim
        key = fla_delta.fla_key(c.variant, equal)  # the dict is read first so a compiled forward stays in its graph
        status = fla_delta.FLA_STATUS[key] if key in fla_delta.FLA_STATUS else fla_delta.fla_status(c.variant, equal)
        return "fla" if status is None else "pytorch-fallback"

    def forward_flops_per_token(self, T):
        c = self.config
        C, K, V = min(c.chunk_size, T), c.k_dim, c.v_dim
        # per delta step: the chunk's QKᵀ, KKᵀ, W, U and P·U products, and the state in and out
        return c.steps * 2 * c.n_head * (C * (3 * K + 2 * V) + 3 * K * V)

    def _inputs(self, x, cache, lean=False):
        """Projections, convolutions and gates, in FLA's layout: q [B, T, H, K], k [B, T·n, H, K] and
        v [B, T·n, H, V] (n sub-tokens per token, in order), beta [B, T·n, H], log_alpha [B, T, H] or None;
        and the output gate's input g [B, T, H·V] or None. q and k are not yet L2-normalised (FLA's kernels
        do it themselves, saving their float32 copies). lean: the backward recomputes the convolutions
        rather than keeping their padded inputs and outputs."""
        c = self.config
        B, T, _ = x.shape
        H, n = c.n_head, c.steps
        parts = self.c_attn(x).split(self.sizes, dim=-1)  # q, k, v, beta, then the decay's and the gate's
        q, k, v, b = parts[:4]
        a = parts[4] if c.gated else None
        g = parts[-1] if c.output_gate else None  # (indexed: a compiled forward made `*gates` a tuple)
        q, k, v = recompute(self._convolve, q, k, v, cache, enabled=lean and c.use_short_conv)
        wide = model.wide_dtype(x.dtype)
        beta = torch.sigmoid(b.to(wide)).view(B, T * n, H) * (2.0 if c.allow_neg_eigval else 1.0)
        log_alpha = -self.A_log.exp() * F.softplus(a.to(wide) + self.dt_bias) if c.gated else None
        return (q.view(B, T, H, -1), k.reshape(B, T * n, H, -1), v.reshape(B, T * n, H, -1), beta, log_alpha), g

    def _convolve(self, q, k, v, cache=None):
        """SiLU of q, k and v, each after its short convolution; with a cache, each convolution reads and
        updates its last inputs."""
        if not self.config.use_short_conv:
            return F.silu(q), F.silu(k), F.silu(v)
        convs, pasts = (self.q_conv, self.k_conv, self.v_conv), cache.conv if cache is not None else (None,) * 3
        return tuple(F.silu(conv(t, past)) for conv, t, past in zip(convs, (q, k, v), pasts))

    def _reference_inputs(self, q, k, v, beta, log_alpha):
        """The same, L2-normalised and q scaled by 1/√K, in at least float32, as [B, H, T(·n), d]."""
        wide = model.wide_dtype(q.dtype)
        q = F.normalize(q.to(wide), dim=-1) / math.sqrt(self.config.k_dim)
        k = F.normalize(k.to(wide), dim=-1)
        q, k, v, beta = (t.transpose(1, 2) for t in (q, k, v.to(wide), beta))
        return q, k, v, beta, (log_alpha.transpose(1, 2) if log_alpha is not None else None)

    def _per_step(self, log_alpha):
        """Gated DeltaProduct as the gated delta rule over T·n steps: the decay on each token's first step
        (the query is read after its last: chunked_delta_rule's read_every)."""
        n = self.config.steps
        if n == 1 or log_alpha is None:
            return log_alpha
        la = log_alpha.new_zeros(*log_alpha.shape, n)
        la[..., 0] = log_alpha
        return la.flatten(-2)

    def forward(self, x, pos, cache=None, return_attn=False):
        c = self.config
        B, T, _ = x.shape
        n = c.steps
        step = cache is not None and T == 1
        fla = not step and not return_attn and self.kernel_path(x.device.type) == "fla"
        # On FLA's path the convolutions and the output norm are most of what the layer would keep for its backward
        # (results/cpu-delta), so they are recomputed there; the PyTorch form keeps far more of its own, and
        # recomputing would make its CPU step 10-20% slower.
        lean = fla and cache is None
        inputs, g = self._inputs(x, cache, lean)
        att = None
        if step:
            o = self._step(*self._reference_inputs(*inputs), cache)
        elif fla:
            o, S = self._fla(*inputs, cache is not None)
            if cache is not None:
                cache.S.copy_(S)
        else:
            q, k, v, beta, log_alpha = self._reference_inputs(*inputs)
            la = self._per_step(log_alpha)
            chunk = max(n, c.chunk_size // n * n)  # whole tokens in a chunk
            with torch.autocast(x.device.type, enabled=False):  # the reference runs in (at least) float32
                o, S = chunked_delta_rule(q, k, v, beta, la, chunk, scan_from=c.scan_from, read_every=n)
            if cache is not None:
                cache.S.copy_(S)
            if return_attn:
                M = implied_attention(q, k, beta, la, read_every=n)
                att = M.reshape(B, c.n_head, T, T, n).sum(-1)  # weight of each token's n values, summed
        y = recompute(self._output, o, g, x.dtype, enabled=lean)
        return self.resid_dropout(self.c_proj(y)), att

    def _fla(self, q, k, v, beta, log_alpha, want_state):
        variant, n = self.config.variant, self.config.steps
        lp = torch.bfloat16 if q.dtype == torch.float32 else q.dtype  # FLA's chunk kernels refuse float32
        q, k, v, beta = (t.to(lp).contiguous() for t in (q, k, v, beta))
        kwargs = dict(scale=self.config.k_dim ** -0.5, output_final_state=want_state, use_qk_l2norm_in_kernel=True)
        if variant == "deltanet" and not want_state:  # training: the operators above, no graph break
            o, S = fla_delta.fla_delta_rule(q, k, v, beta, kwargs["scale"])[0], None
        elif not want_state:
            o, S = fla_delta.fla_gated_delta_product(q, k, v, log_alpha.float(), beta, kwargs["scale"], n)[0], None
        elif variant == "deltanet":
            o, S = fla_delta.fla_kernel(variant)(q, k, v, beta, **kwargs)
        elif variant == "gated_deltanet":
            o, S = fla_delta.fla_kernel(variant)(q, k, v, log_alpha.float().contiguous(), beta, **kwargs)
        else:
            o, S = fla_delta.fla_kernel(variant)(q, k, v, log_alpha.float().contiguous(), beta, num_householder=n, **kwargs)
        return o.transpose(1, 2), S

    def _step(self, q, k, v, beta, log_alpha, cache):
        S = cache.S
        for j in range(self.config.steps):
            if j == 0 and log_alpha is not None:
                S.mul_(log_alpha[:, :, 0, None, None].exp())
            kt = k[:, :, j]
            u = beta[:, :, j, None] * (v[:, :, j] - (S * kt[..., None]).sum(-2))
            S.add_(kt[..., None] * u[..., None, :])
        return (q[:, :, 0, :, None] * S).sum(-2)[:, :, None]

    def _output(self, o, g, dtype):
        """RMS-normalise each head (× SiLU of the output gate g, if any); [B, H, T, V] -> [B, T, H·V].
        Elementwise and recomputed in the backward: only o and g are kept for it, not float32 copies."""
        B, H, T, V = o.shape
        o = o.transpose(1, 2)
        o = F.rms_norm(o if o.dtype == torch.float64 else o.float(), (V,), eps=1e-5)
        o = o * self.o_norm.to(o.dtype)
        if g is not None:
            o = o * GATE_FNS[self.config.gate_fn](g.view(B, T, H, V).to(o.dtype))
        return o.reshape(B, T, H * V).to(dtype)


def recompute(fn, *args, enabled=True):
    """fn(*args), with its intermediates recomputed in the backward instead of kept (activation
    checkpointing); plainly when not enabled or no gradient is being taken."""
    if not (enabled and torch.is_grad_enabled()):
        return fn(*args)
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


class GPT(model.GPT):
    attention_class = DeltaAttention

    @property
    def streams(self):  # learned positions cap the context; otherwise the state carries on
        return self.config.pos_emb != "learned"
