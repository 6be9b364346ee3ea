"""
flash-linear-attention's delta-rule kernels for model_delta.py (FLA 0.6.0, pinned): imported on first use,
probed once per variant on the GPU at hand, and wrapped as torch.library custom operators so that a
compiled model keeps them inside its graph.

    fla_status(variant, equal_heads)   None if FLA runs the variant here (forward and backward), else why
    fla_kernel(variant)                FLA's entry point (chunk_delta_rule, chunk_gated_delta_rule,
                                       chunk_gated_delta_product), for prefills that want the final state
    fla_delta_rule                     DeltaNet from a zero state, as an operator with its backward
    fla_gated_delta_product            Gated DeltaProduct (Gated DeltaNet at n = 1), the same way

Layout: [B, T, H, d] (FLA's), q and k L2-normalised inside the kernel. The pure-PyTorch reference they
are tested against is model_delta.chunked_delta_rule (and recurrent_delta_rule, its definition): on the
GPU each gradient of the operators (tests/test_delta.py::test_gpu_fla_operator_gradients_each_equal_the_reference),
on the CPU the plumbing, with FLA's functions stood in for by the reference.
"""

import functools
import warnings

import torch

FLA_STATUS = {}  # fla_key(...) -> None (works) or the reason it cannot run here


def fla_key(variant, equal_heads=True):
    return variant if equal_heads else f"{variant} with head_k_dim != head_v_dim"


@torch.compiler.disable
def fla_status(variant, equal_heads=True):
    """None if FLA's kernel for this variant runs forward and backward on this GPU (with keys and values of
    different widths where equal_heads is False), else the reason."""
    key = fla_key(variant, equal_heads)
    if key not in FLA_STATUS:
        try:
            if equal_heads:
                fn = fla_kernel(variant)
                with torch.inference_mode(False), torch.enable_grad():  # a backward, even when the first call decodes
                    probe_fla_kernel(fn, variant)
            else:
                refuse_unequal_heads()
            FLA_STATUS[key] = None if equal_heads else fla_status(variant)  # the variant's one probe
        except Exception as e:  # ImportError, a Triton error, FLA refusing this Triton
            FLA_STATUS[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"flash-linear-attention cannot run {key} here ({FLA_STATUS[key]}); "
                          "using the PyTorch chunked form instead (slower, same function)", stacklevel=2)
    return FLA_STATUS[key]


def refuse_unequal_heads():
    # FLA 0.6.0's chunk_delta_rule faults (illegal memory access) on Hopper with Triton < 3.7.1 whenever keys and
    # values differ in width (results/h100-delta); a fault ends the CUDA context, so it is refused before any launch
    from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_7_1
    if IS_NVIDIA_HOPPER and not TRITON_ABOVE_3_7_1:
        raise RuntimeError("its delta-rule kernels fault (illegal memory access) on Hopper with Triton < 3.7.1 when "
                           "head_k_dim != head_v_dim; set them equal to use FLA here")


def probe_fla_kernel(fn, variant):
    """One small forward and backward of FLA's kernel, called as the layer calls it."""
    q, k, v = (torch.randn(1, 64, 1, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    beta, g = torch.rand(1, 64, 1, device="cuda", dtype=torch.bfloat16), -torch.rand(1, 32, 1, device="cuda")
    kw = dict(use_qk_l2norm_in_kernel=True)  # as the layer calls it
    if variant == "deltanet":
        o, _ = fn(q, k, v, beta, **kw)
    elif variant == "gated_deltanet":
        o, _ = fn(q, k, v, torch.cat([g, g], 1), beta, **kw)
    else:
        o, _ = fn(q[:, :32], k, v, g, beta, num_householder=2, **kw)
    o.float().sum().backward()


@functools.cache
def fla_kernel(variant):
    if variant == "deltanet":
        from fla.ops.delta_rule import chunk_delta_rule
        return chunk_delta_rule
    # FLA 0.6.0 refuses its gated backward there only after minutes of autotuning in the probe; its flags say it
    # at once (and more than the one kernel it names is off there: results/h100-delta)
    from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1
    if IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1:
        raise RuntimeError("Triton >= 3.4.0 and < 3.7.1 on Hopper GPUs produces incorrect results for gated "
                           "chunk_bwd_dqkwg (flash-linear-attention's own check; Triton >= 3.7.1 runs it)")
    if variant == "gated_deltanet":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        return chunk_gated_delta_rule
    from fla.ops.gated_delta_product import chunk_gated_delta_product
    return chunk_gated_delta_product


# FLA's entry points are graph breaks under torch.compile, whose Python cost about 8 ms a DeltaNet layer's
# training step at the baby GPT's sizes (results/h100-delta). The forward and backward functions that FLA's
# autograd.Function calls (flash-linear-attention 0.6.0, pinned) are one PyTorch operator each here: they
# stay in the compiled graph, and a CUDA-graph step (compile_mode='reduce-overhead') replays their launches.

@functools.cache
def fla_delta_parts():
    """(l2norm_fwd, chunk_delta_rule_fwd, chunk_delta_rule_bwd, l2norm_bwd) from flash-linear-attention."""
    from fla.modules.norm.l2norm import l2norm_bwd, l2norm_fwd
    from fla.ops.delta_rule.chunk import chunk_delta_rule_bwd, chunk_delta_rule_fwd
    return l2norm_fwd, chunk_delta_rule_fwd, chunk_delta_rule_bwd, l2norm_bwd


@torch.library.custom_op("attention_lab::fla_delta_rule", mutates_args=())
def fla_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeltaNet from a zero state, q and k L2-normalised in the kernel, [B, T, H, d] in and out: o, and
    what the backward keeps (as FLA keeps it): the normalised q and k, their 1/norms, the chunks' (I + A)⁻¹."""
    l2norm_fwd, fwd, _, _ = fla_delta_parts()
    with torch.cuda.device_of(q):  # Triton launches on the current device (FLA's entry point sets it too)
        q, q_rstd = l2norm_fwd(q.contiguous())
        k, k_rstd = l2norm_fwd(k.contiguous())
        o, A, _ = fwd(q, k, v.contiguous(), beta.contiguous(), scale, None, False)
    return o.to(q.dtype), q, q_rstd, k, k_rstd, A


@fla_delta_rule.register_fake
def _(q, k, v, beta, scale):
    rstd = q.new_empty(q.shape[:-1], dtype=torch.float32)
    A = k.new_empty(*k.shape[:-1], 64)  # FLA's chunk: 64 tokens
    return q.new_empty(*q.shape[:-1], v.shape[-1]), dense_like(q), rstd, dense_like(k), rstd.clone(), A


@torch.library.custom_op("attention_lab::fla_delta_rule_bwd", mutates_args=())
def fla_delta_rule_bwd(do: torch.Tensor, q: torch.Tensor, q_rstd: torch.Tensor, k: torch.Tensor, k_rstd: torch.Tensor,
                       v: torch.Tensor, beta: torch.Tensor, A: torch.Tensor,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _, _, bwd, l2norm_bwd = fla_delta_parts()
    v, beta = v.contiguous(), beta.contiguous()
    with torch.cuda.device_of(q):
        dq, dk, dv, dbeta, _ = bwd(q, k, v, beta, A, scale, None, do.contiguous(), None)
        dq, dk = l2norm_bwd(q, q_rstd, dq), l2norm_bwd(k, k_rstd, dk)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbeta.to(beta.dtype)


@fla_delta_rule_bwd.register_fake
def _(do, q, q_rstd, k, k_rstd, v, beta, A, scale):
    return dense_like(q), dense_like(k), dense_like(v), dense_like(beta)


def dense_like(t):  # FLA's outputs are contiguous whatever its inputs' strides
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _keep_for_backward(ctx, inputs, output):
    _, _, v, beta, ctx.scale = inputs
    _, q, q_rstd, k, k_rstd, A = output
    ctx.save_for_backward(q, q_rstd, k, k_rstd, v, beta, A)


def _fla_delta_rule_backward(ctx, do, *unused):  # the grads of the kept tensors: none flows, they are not used
    return *fla_delta_rule_bwd(do, *ctx.saved_tensors, ctx.scale), None


fla_delta_rule.register_autograd(_fla_delta_rule_backward, setup_context=_keep_for_backward)


# The gated variants the same way: FLA's Gated DeltaProduct forward (Gated DeltaNet at n = 1) and, as its own
# autograd.Function does, the gated delta rule's backward over the T·n sub-steps.

@functools.cache
def fla_gated_parts():
    """(chunk_gated_delta_product_fwd, chunk_gated_delta_rule_bwd) from flash-linear-attention."""
    from fla.ops.gated_delta_product.chunk import chunk_gated_delta_product_fwd
    from fla.ops.gated_delta_rule.chunk import chunk_gated_delta_rule_bwd
    return chunk_gated_delta_product_fwd, chunk_gated_delta_rule_bwd


@torch.library.custom_op("attention_lab::fla_gated_delta_product", mutates_args=())
def fla_gated_delta_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                            scale: float, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                           torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gated DeltaProduct from a zero state, q and k L2-normalised in the kernel: q [B, T, H, K], k, v and beta
    over the T·n sub-steps, g [B, T, H] the float32 log decay of each token. Returns o and what the backward
    keeps: the normalised q and k, their 1/norms, the sub-steps' cumulative decays, the chunks' (I + A)⁻¹."""
    l2norm_fwd = fla_delta_parts()[0]
    fwd, _ = fla_gated_parts()
    with torch.cuda.device_of(q):
        q, q_rstd = l2norm_fwd(q.contiguous())
        k, k_rstd = l2norm_fwd(k.contiguous())
        _, g_steps, o, A, _, _ = fwd(q=q, k=k, v=v.contiguous(), g=g.contiguous(), beta=beta.contiguous(),
                                     scale=scale, num_householder=n)
    return o.to(q.dtype), q, q_rstd, k, k_rstd, g_steps, A


@fla_gated_delta_product.register_fake
def _(q, k, v, g, beta, scale, n):
    return (q.new_empty(*q.shape[:-1], v.shape[-1]), dense_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32),
            dense_like(k), k.new_empty(k.shape[:-1], dtype=torch.float32), beta.new_empty(beta.shape, dtype=torch.float32),
            k.new_empty(*k.shape[:-1], 64))


@torch.library.custom_op("attention_lab::fla_gated_delta_product_bwd", mutates_args=())
def fla_gated_delta_product_bwd(do: torch.Tensor, q: torch.Tensor, q_rstd: torch.Tensor, k: torch.Tensor,
                                k_rstd: torch.Tensor, v: torch.Tensor, g_steps: torch.Tensor, beta: torch.Tensor,
                                A: torch.Tensor, scale: float, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                                torch.Tensor, torch.Tensor]:
    l2norm_bwd = fla_delta_parts()[3]
    _, bwd = fla_gated_parts()
    B, T, H, K = q.shape
    with torch.cuda.device_of(q):
        # each token's query and output gradient at its last sub-step, zeros at the others
        q_steps, do_steps = q.new_zeros(B, T, n, H, K), do.new_zeros(B, T, n, H, do.shape[-1])
        q_steps[:, :, -1], do_steps[:, :, -1] = q, do
        dq, dk, dv, dbeta, dg, *_ = bwd(q=q_steps.flatten(1, 2), k=k, v=v.contiguous(), g=g_steps, beta=beta.contiguous(),
                                        A=A, scale=scale, initial_state=None, do=do_steps.flatten(1, 2), dht=None)
        dq = dq.reshape(B, T, n, H, K)[:, :, -1].contiguous()
        dg = dg.reshape(B, T, n, H)[:, :, 0].contiguous()  # the decay acts at each token's first sub-step
        dq, dk = l2norm_bwd(q, q_rstd, dq), l2norm_bwd(k, k_rstd, dk.contiguous())  # FLA's dk: strided
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype).contiguous(), dg.float(), dbeta.to(beta.dtype).contiguous()


@fla_gated_delta_product_bwd.register_fake
def _(do, q, q_rstd, k, k_rstd, v, g_steps, beta, A, scale, n):
    return dense_like(q), dense_like(k), dense_like(v), q.new_empty(q.shape[:-1], dtype=torch.float32), dense_like(beta)


def _keep_for_gated_backward(ctx, inputs, output):
    _, _, v, _, beta, ctx.scale, ctx.n = inputs
    _, q, q_rstd, k, k_rstd, g_steps, A = output
    ctx.save_for_backward(q, q_rstd, k, k_rstd, v, g_steps, beta, A)


def _fla_gated_delta_product_backward(ctx, do, *unused):
    dq, dk, dv, dg, dbeta = fla_gated_delta_product_bwd(do, *ctx.saved_tensors, ctx.scale, ctx.n)
    return dq, dk, dv, dg, dbeta, None, None


fla_gated_delta_product.register_autograd(_fla_gated_delta_product_backward, setup_context=_keep_for_gated_backward)
