"""The diffusion wing: the paper's method and its baseline.

  losses          the forward masking process and the pretraining / SFT losses
  sampler_config  every sampler option: defaults, resolution, checks, static / traced split
  denoise         one reverse step: transfer schedule, remasking, CFG, Gumbel-max
  sampling        the exact sampler: `generate` as one jitted program
  fast_sampling   cached / confidence-threshold decoding
  block_sampling  block diffusion: exact K/V-cached, variable-length decoding block by block
  likelihood      Monte-Carlo ELBO and the batch ELBO on fixed masks (block_likelihood: the
                  block-diffusion ELBO)
  autoregressive  the left-to-right baseline sharing the same transformer

Its face is the public API of design.md (``diffusion.pretrain_loss`` and friends); the library
itself imports `lladax.diffusion.losses`.
"""

from lladax.diffusion.losses import mask_tokens, pretrain_loss, sft_loss

__all__ = ["mask_tokens", "pretrain_loss", "sft_loss"]
