"""Based (Arora et al. 2024): Taylor features of 16-dim projected queries and keys, plus a sliding-window softmax branch."""
based_window = block_size // 4
compile_mode = "default"  # its window branch breaks the graph: CUDA graphs would replay half a step
