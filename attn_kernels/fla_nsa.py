"""
flash-linear-attention's Native Sparse Attention kernel (fla.ops.nsa.parallel_nsa) for model_nsa.py's
fla+flex path: the compressed and selected branches where FLA's layout fits (mean compression,
l = d = l', a GQA group a power of two >= 16), imported on first use and probed once per process.
Reference: model_nsa.nsa_branches (tests/test_nsa.py::test_gpu_fla_kernels_compute_the_reference_branches,
and the whole layer in test_gpu_fast_path_equals_reference).
"""

import functools
import warnings

import torch


def layout_refusal(cmp_block, cmp_stride, select_block, group, select_count, head_dim):
    """None if parallel_nsa computes NSA's compressed and selected branches (mean-pooled) for these sizes
    (group: query heads per K/V head), else why not."""
    if not cmp_block == cmp_stride == select_block:
        return "cmp_block, cmp_stride and select_block differ"
    if group < 16 or group & (group - 1):
        return f"n_head / n_kv_head = {group} is not a power of two >= 16"
    if select_count & (select_count - 1) or select_block < 2 * select_count:
        return f"select_count {select_count} is not a power of two <= select_block / 2"
    if head_dim > 256:
        return f"head dim {head_dim} > 256"
    return None


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
def fla_cmp_and_slc(q, k, v, gates, select_count, select_block):
    """FLA's compressed and selected branches (l = d = l' = select_block, n = select_count), gated by
    gates [B, H, T, (cmp, slc, ...)]: q [B, H, T, D], k, v [B, Hkv, T, D] in, [B, H, T, D] out."""
    q_, k_, v_ = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    g = gates.transpose(1, 2).to(q.dtype)
    o = fla_parallel_nsa()(q_, k_, v_, g_cmp=g[..., 0].contiguous(), g_slc=g[..., 1].contiguous(), g_swa=None,
                           block_counts=select_count, block_size=select_block, window_size=0)
    return o.transpose(1, 2)
