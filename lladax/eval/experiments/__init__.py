"""Small-scale checks of the paper's claims, one command each (`lladax experiment NAME`).

  reversal   forward vs reverse completion of a synthetic knowledge set learned in one direction
  scaling    diffusion vs autoregressive at several sizes on the default data, equal tokens
  sampler    the paper's sampler ablations (steps, block length, remasking) on a trained model
  blocks     AR vs diffusion vs block diffusion at equal tokens, and AR -> block diffusion
  vrpo       preference optimisation (DPO -> VRPO ablation, AR DPO) of the SFT demo model

Each writes `<name>.json` (settings, per-seed numbers, summary) and `<name>.png` into the output
directory (docs/experiments by default); docs/experiments.md reads them.
"""

EXPERIMENTS = ("reversal", "scaling", "sampler", "blocks", "vrpo")
