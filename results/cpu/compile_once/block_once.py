"""One block compiled and stamped out for every layer (torch.compiler.nested_compile_region), against every layer
compiled as the project does. Run from the repository's root, on the CPU:
    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python results/cpu/compile_once/block_once.py time N_LAYER region|whole
        the baby GPT's Gated DeltaProduct (384 wide): seconds to compile forward + backward, then the compiled
        model against eager in evaluation (dropout off)
    python results/cpu/compile_once/block_once.py gradients MODEL_TYPE inductor|aot_eager [whole]
        a tiny model (3 layers, 64 wide, 4 heads, context 32, no dropout): its loss and gradients compiled
        against eager
"""
import sys
import time

import torch

sys.path.insert(0, ".")
import model  # noqa: E402
import train_runner  # noqa: E402


def stamp_blocks_out():
    block_forward = model.Block.forward

    @torch.compiler.nested_compile_region
    def block_once(block, x, pos):
        return block_forward(block, x, pos)[0]

    def forward(self, x, pos, cache=None, return_attn=False):
        if cache is None and not return_attn and torch.compiler.is_compiling():
            return block_once(self, x, pos), None
        return block_forward(self, x, pos, cache, return_attn)
    model.Block.forward = forward


def build(**settings):
    cfg = train_runner.configure(train_runner.DEFAULTS, overrides=dict(device="cpu", **settings))
    torch.manual_seed(0)
    return train_runner.build(cfg, 65)


def compile_time(n_layer, mode):
    m = build(model_type="delta_product", variant="gated_deltaproduct", num_householder=2, n_head=4, head_k_dim=64,
              head_v_dim=48, n_layer=n_layer, n_embd=384, dropout=0.2)
    x = torch.randint(0, 65, (2, 256))
    compiled = torch.compile(m, dynamic=False)
    t = time.time()
    _, loss = compiled(x, x)
    loss.backward()
    print(f"delta_product, {n_layer} layers, {mode}: forward + backward compiled in {time.time() - t:.1f} s")
    m.eval()
    with torch.no_grad():
        print("evaluation loss, compiled - eager:", (compiled(x, x)[1] - m(x, x)[1]).abs().item())


def gradients(model_type, backend, mode):
    m = build(model_type=model_type, n_layer=3, n_embd=64, n_head=4, block_size=32, dropout=0.0)
    x, y = torch.randint(0, 65, (2, 32)), torch.randint(0, 65, (2, 32))
    _, loss = torch.compile(m, backend=backend, dynamic=False)(x, y)
    loss.backward()
    compiled = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    _, expected = m(x, y)
    expected.backward()
    for (name, p), c in zip(m.named_parameters(), compiled):
        print(f"  {name}: off by {(c - p.grad).abs().max().item():.1e}, largest {p.grad.abs().max().item():.1e}")
    worst = max((c - p.grad).abs().max().item() for c, p in zip(compiled, m.parameters()))
    print(f"{model_type}, {backend}, {mode}: loss off by {(loss - expected).abs().item():.1e}, "
          f"largest gradient difference {worst:.1e}")


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    mode = "whole" if "whole" in args else "region"
    if mode == "region":
        stamp_blocks_out()
    if what == "time":
        compile_time(int(args[0]), mode)
    else:
        gradients(args[0], args[1], mode)
