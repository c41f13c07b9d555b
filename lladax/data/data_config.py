"""The `data` section of a run config: where the text comes from and how it becomes batches.

`DataConfig` is a typed section (`lladax.config_sections`): its defaults, types and ranges are
written once, here; `lladax.train.run_config` composes it into the whole run config, and the
pipeline (`pipeline.options_from_config`) and the SFT batches read its fields (`options`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from lladax.config import ConfigError
from lladax.config_sections import Section, setting
from lladax.data.sources import FORMATS


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Source, tokenizer and batch layout of a training run (docs/data.md)."""

    section: ClassVar[str] = "data"

    # "embedded" (Python's own docs), a .txt/.jsonl file or directory, a `lladax data prepare`
    # directory (or "arrayrecord:GLOB"), or "tfds:NAME[:SPLIT]" (docs/data.md)
    source: str = setting(
        "embedded",
        "non-empty",
        " (embedded, a .txt/.jsonl file or directory, prepared data, tfds:NAME)",
    )
    # "text" pretraining rows, "chat" SFT batches, "preference" pairs (lladax.data.preference)
    format: str = setting("text", FORMATS)
    tokenizer: str = ""  # "" = sentencepiece trained on the embedded text (vocab_size)
    seq_len: int = setting(128, ">= 2")
    seed: int = 0
    field: str = setting("text", "non-empty")  # the text field of .jsonl lines / TFDS records
    pack: bool = False  # True: one document per segment (segment_ids, positions), padded
    min_answer_len: int = setting(0, ">= 0")  # chat: EOS-pad every answer to >= this (gen_length)
    random_offset: bool = False  # chat: start rows with random EOS runs (vary the answer region)
    workers: int = setting(0, ">= 0")  # grain worker processes (0 = in-process); fixed on resume

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_answer_len >= self.seq_len:
            raise ConfigError(
                f"data.min_answer_len={self.min_answer_len!r} leaves no room for a prompt in "
                f"data.seq_len={self.seq_len}: set it below {self.seq_len}"
            )
        if self.random_offset and self.format != "chat":
            raise ConfigError(
                f"data.random_offset=True is for data.format='chat' (SFT rows), not "
                f"{self.format!r}: set --config.data.random_offset=False"
            )

    @property
    def tokenizer_spec(self) -> str:
        """What `load_tokenizer` takes: `tokenizer`, or "embedded" for ""."""
        return self.tokenizer or "embedded"

    def options(self, *names: str) -> dict[str, Any]:
        """{name: value} of the named fields: the keyword arguments a reader takes from them."""
        return {name: getattr(self, name) for name in names}
