"""The measured fast paths: compiled loops and direct kernel calls that stand in for library work where they
apply. Each has a library equivalent with the same results; the ``CPU_KERNELS`` setting chooses between them."""
