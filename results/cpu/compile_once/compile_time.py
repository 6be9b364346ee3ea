"""How long torch.compile takes to compile one training step (forward + backward) of the baby GPT's Gated
DeltaProduct on the CPU: each layer compiled as usual ('whole'), or one block traced once and stamped out for
every layer through torch.compiler.nested_compile_region ('region'). Then the compiled model against eager, in
evaluation (dropout off). Run from the repository's root, with inductor's caches off:
    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python results/cpu/compile_once/compile_time.py 6 region [MODEL_TYPE]
"""
import sys
import time

import torch

sys.path.insert(0, ".")
import model  # noqa: E402
import train_runner  # noqa: E402

n_layer, mode = int(sys.argv[1]), sys.argv[2]
model_type = sys.argv[3] if len(sys.argv) > 3 else "delta_product"
if mode == "region":
    block_forward = model.Block.forward

    @torch.compiler.nested_compile_region
    def block_once(block, x, pos):
        return block_forward(block, x, pos)[0]

    def forward(self, x, pos, cache=None, return_attn=False):
        if cache is None and not return_attn and torch.compiler.is_compiling():
            return block_once(self, x, pos), None
        return block_forward(self, x, pos, cache, return_attn)
    model.Block.forward = forward

baby = dict(variant="gated_deltaproduct", num_householder=2, n_head=4, head_k_dim=64, head_v_dim=48)
cfg = train_runner.configure(train_runner.DEFAULTS, overrides=dict(
    model_type=model_type, n_layer=n_layer, n_embd=384, device="cpu", dropout=0.2,
    **(baby if model_type == "delta_product" else {})))
torch.manual_seed(0)
m = train_runner.build(cfg, 65)
x = torch.randint(0, 65, (2, 256))
compiled = torch.compile(m, dynamic=False)
t = time.time()
_, loss = compiled(x, x)
loss.backward()
print(f"{model_type}, {n_layer} layers, {mode}: forward + backward compiled in {time.time() - t:.1f} s")
m.eval()
with torch.no_grad():
    print("evaluation loss, compiled - eager:", (compiled(x, x)[1] - m(x, x)[1]).abs().item())
