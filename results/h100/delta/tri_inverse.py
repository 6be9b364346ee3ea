"""(I + A)⁻¹ for the chunks' strictly lower-triangular A (the WY form's one solve), two ways, forward +
backward on the GPU at the Gated DeltaProduct baby config's shape (batch 64, 4 heads, 8 chunks of 64
sub-tokens, keys of 64), float32 with TF32 as training runs it:
  solve     torch.linalg.solve_triangular (what chunked_delta_rule calls)
  product   A is nilpotent (A^C = 0), so (I + A)⁻¹ = (I - A)(I + A²)(I + A⁴)···(I + A^(C/2)): log₂ C
            squarings and products, plain batched matmuls
    python results/h100/delta/tri_inverse.py
"""
import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = True
B, H, N, C, K = 64, 4, 8, 64, 64
k = F.normalize(torch.randn(B, H, N, C, K, device="cuda"), dim=-1)
beta = torch.rand(B, H, N, C, device="cuda") * 2
strict = torch.ones(C, C, device="cuda").tril(-1).bool()
eye = torch.eye(C, device="cuda")


def solve(A):
    return torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)


def product(A):
    inv, P = eye - A, A
    for _ in range(C.bit_length() - 2):  # A², A⁴, ..., A^(C/2)
        P = P @ P
        inv = inv + inv @ P
    return inv


def timed(fn, reps=50):
    A = ((beta[..., None] * (k @ k.transpose(-1, -2))) * strict).requires_grad_()
    g = torch.randn_like(A)
    for _ in range(5):
        fn(A).backward(g)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn(A).backward(g)
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / reps


A = (beta[..., None] * (k @ k.transpose(-1, -2))) * strict
torch.backends.cuda.matmul.allow_tf32 = False
exact = solve(A.double()).float()
for tf32 in (False, True):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    for name, fn in (("solve", solve), ("product", product)):
        err = ((fn(A) - exact).norm() / exact.norm()).item()
        print(f"tf32={tf32} {name:8s} rel err vs float64 {err:.2e}")
torch.backends.cuda.matmul.allow_tf32 = True
for name, fn in (("solve", solve), ("product", product), ("product compiled", torch.compile(product))):
    print(f"{name:17s} fwd+bwd {timed(fn):.3f} ms")
