"""DeltaNet with a Native Sparse Attention layer after every two, NSA made as config/models/nsa.py makes it."""
layers = "delta,delta," if n_layer % 3 == 0 else "delta,"  # the CPU profile's 4 layers: every other
layers += (f"nsa:n_head=16:n_kv_head=1:head_size={44 if profile == 'gpu' else 14}:cmp_block={block_size // 8}"
           f":cmp_stride={block_size // 8}:select_block={block_size // 8}:window_size={block_size // 4}:use_fla=False")
