"""The local tasks' data: held-out examples of the synthetic instruction set
(`lladax.data.instructions`, the five short tasks), written to jsonl from a fixed seed.

  synth_gen.jsonl  {"task", "prompt", "answer"}            (lladax_synth_gen: exact match)
  synth_mc.jsonl   {"task", "prompt", "choices", "label"}  (lladax_synth_mc: the answer among
                   `CHOICES`: other orders of its words, or other answers of the task)

Rows go round-robin over the tasks, so a `--limit` of n documents covers every task. The YAMLs
read the files through `load_gen` / `load_mc` (the `datasets` json builder on a path next to this
file: no download, wherever the package is installed). Regenerate (deterministic, byte for byte):

  python -m lladax.eval.tasks.synth
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from lladax.data import instructions

TASK_DIR = Path(__file__).resolve().parent
GEN_FILE, MC_FILE = "synth_gen.jsonl", "synth_mc.jsonl"
SEED = 0  # instructions.examples(..., seed=SEED) and the choices' shuffles
PER_TASK = 20  # held-out prompts per task: 100 documents per file
CHOICES = 4


def gen_rows(seed: int = SEED, per_task: int = PER_TASK) -> list[dict[str, str]]:
    """Held-out (task, prompt, answer) rows, round-robin over `instructions.TASKS`."""
    by_task = [
        instructions.examples([t], "eval", seed=seed, per_task=per_task) for t in instructions.TASKS
    ]
    return [
        {"task": ex.task, "prompt": ex.prompt, "answer": ex.answer}
        for group in zip(*by_task, strict=True)
        for ex in group
    ]


def _distractors(row: dict[str, str], rows: list[dict[str, str]]) -> set[str]:
    """Wrong answers for a row: for word lists (copy, reverse, sort) the other orders of its
    words (the model must get the order right), else the answers of the task's other rows."""
    words = row["answer"].split()
    if len(words) > 1:
        return {" ".join(p) for p in itertools.permutations(words)}
    return {r["answer"] for r in rows if r["task"] == row["task"]}


def mc_rows(seed: int = SEED, per_task: int = PER_TASK) -> list[dict[str, Any]]:
    """`gen_rows` as multiple choice: the answer and `CHOICES` - 1 distinct wrong ones
    (`_distractors`), in a shuffled order (`label`: the answer's index)."""
    rows = gen_rows(seed, per_task)
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        others = sorted(_distractors(row, rows) - {row["answer"]})
        picked = [others[i] for i in rng.choice(len(others), CHOICES - 1, replace=False)]
        choices = [row["answer"], *picked]
        order = rng.permutation(CHOICES)
        out.append(
            {
                "task": row["task"],
                "prompt": row["prompt"],
                "choices": [choices[i] for i in order],
                "label": int(np.argmin(order)),
            }
        )
    return out


def write_tasks(directory: Path = TASK_DIR) -> list[Path]:
    """Write GEN_FILE and MC_FILE into `directory` (one JSON object per line, sorted keys)."""
    paths = []
    for name, rows in ((GEN_FILE, gen_rows()), (MC_FILE, mc_rows())):
        path = Path(directory) / name
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        paths.append(path)
    return paths


def _load(name: str) -> Any:
    """{"test": the jsonl next to this file} through the `datasets` json builder (local)."""
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(TASK_DIR / name)})


def load_gen(**_: Any) -> Any:
    """The generate_until task's documents (the harness passes metadata keywords: ignored)."""
    return _load(GEN_FILE)


def load_mc(**_: Any) -> Any:
    """The multiple-choice task's documents."""
    return _load(MC_FILE)


if __name__ == "__main__":
    for p in write_tasks():
        print(p)
