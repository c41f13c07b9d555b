"""lm-eval tasks shipped with lladax, offline: YAMLs and their jsonl data in this folder.

  lladax_synth_gen   generate_until, exact match: the synthetic instruction set's held-out prompts
  lladax_synth_mc    multiple_choice (loglikelihood): the right answer among 4 of the same task

Pass this folder as the include path (`TASK_DIR`); `synth` writes the jsonl and loads it.
"""

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
