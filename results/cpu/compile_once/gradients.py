"""Does stamping one compiled block out for every layer (torch.compiler.nested_compile_region) give the same
loss and gradients as eager? A tiny model (3 layers, 64 wide, 4 heads, context 32, no dropout) on the CPU:
    python results/cpu/compile_once/gradients.py MODEL_TYPE BACKEND [whole]      (BACKEND: inductor, aot_eager)
"""
import sys

import torch

sys.path.insert(0, ".")
import model  # noqa: E402
import train_runner  # noqa: E402

model_type, backend = sys.argv[1], sys.argv[2]
if sys.argv[3:] != ["whole"]:
    block_forward = model.Block.forward

    @torch.compiler.nested_compile_region
    def block_once(block, x, pos):
        return block_forward(block, x, pos)[0]

    def forward(self, x, pos, cache=None, return_attn=False):
        if cache is None and not return_attn and torch.compiler.is_compiling():
            return block_once(self, x, pos), None
        return block_forward(self, x, pos, cache, return_attn)
    model.Block.forward = forward
cfg = train_runner.configure(train_runner.DEFAULTS, overrides=dict(
    model_type=model_type, n_layer=3, n_embd=64, n_head=4, block_size=32, dropout=0.0, device="cpu"))
torch.manual_seed(0)
m = train_runner.build(cfg, 65)
x, y = torch.randint(0, 65, (2, 32)), torch.randint(0, 65, (2, 32))
_, loss = torch.compile(m, backend=backend, dynamic=False)(x, y)
loss.backward()
compiled = [p.grad.clone() for p in m.parameters()]
m.zero_grad()
_, expected = m(x, y)
expected.backward()
worst = max((c - p.grad).abs().max().item() for c, p in zip(compiled, m.parameters()))
print(f"{model_type}, {backend}, {sys.argv[3:] or 'region'}: loss off by {(loss - expected).abs().item():.1e}, "
      f"largest gradient difference {worst:.1e}")
