"""On-policy preference pairs: the model's own wrong answers as the rejected side.

For training-split prompts of the synthetic instruction tasks (`lladax.data.instructions`) the
model answers greedily (any kind: LLaDA, block diffusion, the autoregressive baseline); each
prompt becomes one pair (`lladax.data.preference` jsonl)::

    {"prompt": the task prompt, "chosen": the correct answer,
     "rejected": the model's reply when it is wrong, else a near miss of the answer}

A reply that is right, or empty (a pair cannot hold an empty answer), gets
`preference.near_miss` of the answer instead, drawn from ``default_rng([seed, i])``, so the set
is deterministic in (model, tasks, per_task, seed). `PairCounts` says how many rejected answers
are the model's own errors: the on-policy part that preference optimisation learns most from.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lladax.data import instructions
from lladax.data.instructions import Example
from lladax.data.preference import near_miss
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.eval import instruction_eval
from lladax.files import atomic_write

__all__ = ["PairCounts", "build_pairs", "greedy_replies", "on_policy_pairs", "write_pairs"]


@dataclasses.dataclass(frozen=True)
class PairCounts:
    """How the rejected answers of a pair set were made (`per_task`: the same per task)."""

    pairs: int
    own_errors: int  # rejected = the model's own wrong reply
    near_misses: int  # the model was right (or replied nothing): rejected = a near miss
    empty_replies: int  # of the near misses: the model's reply was empty
    per_task: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def greedy_replies(
    params: Any,
    cfg: Any,
    tokenizer: Any,
    items: Sequence[Example],
    sampler: SamplerConfig,
    *,
    batch_size: int = 64,
) -> list[str]:
    """The model's reply to each example's prompt (chat template applied) under `sampler`,
    any kind (`instruction_eval.generate_replies`)."""
    return instruction_eval.generate_replies(
        params, cfg, tokenizer, items, sampler, batch_size=batch_size
    )


def on_policy_pairs(
    items: Sequence[Example], replies: Sequence[str], seed: int
) -> tuple[list[dict[str, str]], PairCounts]:
    """(pair rows {"prompt", "chosen", "rejected"}, counts) of aligned examples and replies:
    rejected = the reply when it is wrong and non-empty, else `near_miss(answer,
    default_rng([seed, i]))`."""
    if len(items) != len(replies):
        raise ValueError(f"{len(items)} examples but {len(replies)} replies: pass one per example")
    rows, own, empty = [], 0, 0
    per_task: dict[str, dict[str, int]] = {}
    for i, (ex, reply) in enumerate(zip(items, replies, strict=True)):
        counts = per_task.setdefault(ex.task, {"pairs": 0, "own_errors": 0})
        counts["pairs"] += 1
        wrong = reply.strip() and not instructions.exact_match(reply, ex.answer)
        if wrong:
            rejected = reply
            own += 1
            counts["own_errors"] += 1
        else:
            rejected = near_miss(ex.answer, np.random.default_rng([seed, i]))
            empty += not reply.strip()
        rows.append({"prompt": ex.prompt, "chosen": ex.answer, "rejected": rejected})
    return rows, PairCounts(len(rows), own, len(rows) - own, empty, per_task)


def build_pairs(
    params: Any,
    cfg: Any,
    tokenizer: Any,
    path: str | Path,
    *,
    tasks: Sequence[str],
    per_task: int,
    seed: int,
    sampler: SamplerConfig,
    batch_size: int = 64,
) -> PairCounts:
    """Write the on-policy pair jsonl of `per_task` training-split prompts of each task (drawn
    with `seed`) to `path` (atomically) and return its `PairCounts`."""
    items = instructions.examples(tasks, "train", seed=seed, per_task=per_task)
    replies = greedy_replies(params, cfg, tokenizer, items, sampler, batch_size=batch_size)
    rows, counts = on_policy_pairs(items, replies, seed)
    write_pairs(path, rows)
    return counts


def write_pairs(path: str | Path, rows: Sequence[dict[str, str]]) -> Path:
    """Write pair rows as a `lladax.data.preference` jsonl (one object per line, atomically)."""
    atomic_write(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return Path(path)
