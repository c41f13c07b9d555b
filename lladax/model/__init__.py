"""The model wing: the mask predictor (`transformer`, built from the blocks of `layers`), its
attention kernels (`attention`) and the logical-axis sharding rules (`sharding`).

Its face is the public API of design.md: ``model.forward(params, cfg, tokens)`` and the functions
that build or describe a params pytree. The library itself imports `lladax.model.transformer`.
"""

from lladax.model.transformer import (
    Params,
    abstract_params,
    forward,
    init_params,
    param_logical_axes,
)

__all__ = ["Params", "abstract_params", "forward", "init_params", "param_logical_axes"]
