"""Public face of the diffusion sampler (design.md): ``sampling.generate``.

``generate(params, cfg, prompt, attention_mask=None, *, steps, gen_length, block_length, ...)``
takes the options as keywords; ``generate_with(params, cfg, prompt, attention_mask, sampler, rng)``
takes them as one `SamplerConfig` (what the CLI, lm-eval and the experiments build). They live in
`lladax.diffusion.sampling` and `lladax.diffusion.sampler_config`; outside tools and notebooks
import them from here.
"""

from lladax.diffusion.sampler_config import SamplerConfig
from lladax.diffusion.sampling import generate, generate_with

__all__ = ["SamplerConfig", "generate", "generate_with"]
