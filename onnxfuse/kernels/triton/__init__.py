"""The Triton side of the kernels: the op's torch reference (:mod:`.reference`), the Triton
kernels and their launcher (:mod:`.gated_mlp`), tile configurations (:mod:`.configs`), the
autotuner (:mod:`.tuning`) and ahead-of-time builds (:mod:`.aot`).

Importing this package imports neither torch nor Triton; its modules use absolute imports,
so ``import triton`` in them is the real Triton.
"""
