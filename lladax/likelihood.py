"""Public face of the ELBO likelihood (design.md): ``batch_elbo`` and ``log_likelihood``.

They live in `lladax.diffusion.likelihood`; outside tools and notebooks import them from here.
"""

from lladax.diffusion.likelihood import batch_elbo, log_likelihood

__all__ = ["batch_elbo", "log_likelihood"]
