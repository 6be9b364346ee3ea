"""
Fast-path kernels the attention families call: Triton, FlexAttention and flash-linear-attention code
too long to sit in a family file. Each module's docstring names the pure-PyTorch reference function
(in a model file) that its tests hold it to.

    flex        FlexAttention plumbing shared by model_sparse.py and model_nsa.py: compiled
                flex_attention and create_block_mask, BlockMasks built once per setting, a
                sliding-window BlockMask, and NSA's compressed and selected-block masks
    nsa_triton  model_nsa.py's Triton kernels as torch.library custom operators: the selected
                branch's forward and backward, and the two halves of the block selection
    fla_delta   model_delta.py's flash-linear-attention plumbing: imported on first use, probed
                once per variant, and FLA's DeltaNet / Gated DeltaProduct functions as custom operators
    fla_nsa     model_nsa.py's flash-linear-attention plumbing: parallel_nsa, where its layout fits

Imports run one way: model files import attn_kernels/, and nothing here imports a model file (a kernel
that needs a model's step takes plain values, or the model file composes the kernel's pieces around it).
Not named `kernels`: that is Hugging Face's package, which transformers (and so FLA) imports.
"""
