"""numba's JIT, set up once for every module that compiles a hot loop.

A function with a signature is compiled when its module is imported; one without, with the
first function that calls it. Both are cached on disk where numba finds a writable place
(beside the module, in ``NUMBA_CACHE_DIR``, or in the user's cache directory); where none is,
they compile at every start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

import numba

Function = TypeVar("Function", bound=Callable[..., Any])


def compiled(
    signature: Any = None, error_model: Literal["python", "numpy"] = "python", fastmath: set[str] | bool = False
) -> Callable[[Function], Function]:
    """``numba.njit`` (for ``signature``, or a list of them, if given), cached on disk where it can be.

    The compiled function keeps the Python function's signature for type checking.
    ``error_model="numpy"``: a float division by zero gives inf or NaN, as in numpy and torch,
    instead of raising; without that check in every division, loops of them vectorize.
    ``fastmath``: LLVM's flags, e.g. ``{"reassoc"}`` lets a sum vectorize (in another order);
    never ``nnan``/``ninf`` where NaN or inf must come through.
    """

    def compile_(function: Function) -> Function:
        try:
            dispatcher = numba.njit(signature, cache=True, error_model=error_model, fastmath=fastmath)(function)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            dispatcher = numba.njit(signature, error_model=error_model, fastmath=fastmath)(function)
        return cast(Function, dispatcher)

    return compile_
