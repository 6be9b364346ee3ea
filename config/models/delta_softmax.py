"""DeltaNet with a softmax layer (RoPE) after every two, as in the hybrids of Gated DeltaNet (Yang et al. 2025)."""
layers = "delta,delta,rope" if n_layer % 3 == 0 else "delta,rope"  # the CPU profile's 4 layers: every other
