"""Public face of the exact sampler (design.md): ``sampling.generate``.

The sampler lives in `lladax.diffusion.sampling`; outside tools and notebooks import it from here.
"""

from lladax.diffusion.sampling import generate

__all__ = ["generate"]
