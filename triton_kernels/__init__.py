"""fastsn's Triton kernels, installed as ``fastsn.triton_kernels`` (one module per op).

Importing ``fastsn.triton_kernels.<op>`` registers its kernel as the CUDA (and, for Triton's interpreter,
CPU) implementation of ``fastsn::<op>_triton``; :mod:`fastsn._backend` imports them on first use.
"""
