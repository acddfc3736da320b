"""numba's JIT, set up once for the modules that compile a hot loop (:mod:`.idtable`, :mod:`.event_parser`).

A function with a signature is compiled when its module is imported; one without, with the
first function that calls it. Both are cached on disk where numba finds a writable place
(beside the module, in ``NUMBA_CACHE_DIR``, or in the user's cache directory); where none is,
they compile at every start (about a second).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba


def compiled(
    signature: Any = None, error_model: str = "python", fastmath: set[str] | bool = False
) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` (for ``signature``, or a list of them, if given), cached on disk where it can be.

    ``error_model="numpy"``: a float division by zero gives inf or NaN, as in numpy and torch,
    instead of raising; without that check in every division, loops of them vectorize.
    ``fastmath``: LLVM's flags, e.g. ``{"reassoc"}`` lets a sum vectorize (in another order);
    never ``nnan``/``ninf`` where NaN or inf must come through.
    """

    def compile_(function: Callable[..., Any]) -> Any:
        args = (signature,) if signature is not None else ()
        options = {"error_model": error_model, "fastmath": fastmath}
        try:
            return numba.njit(*args, cache=True, **options)(function)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return numba.njit(*args, **options)(function)

    return compile_
