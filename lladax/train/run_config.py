"""The run configuration: its typed sections, the ConfigDict that config files edit, its check.

A run config has eight sections, each a frozen dataclass that owns its defaults, types and
ranges (`lladax.config_sections`): `model` (`ModelConfig`), `train` (`TrainConfig`, the train
step's static knobs), `data` (`lladax.data.data_config.DataConfig`), `eval`, `log`,
`checkpoint`, `mesh` and `preference` (`PreferenceConfig`, read when `data.format` is
"preference"). `RunConfig` holds one of each and checks what must agree across them.

`run_config(preset)` generates, from those defaults, the ml-collections ConfigDict that
`configs/*.py` start from and `--config.section.key=value` overrides edit (its keys are the
complete set of valid keys; the ConfigDict keeps every value's type on assignment).
`check_run_config` turns such a ConfigDict into a `RunConfig` before any device work, or raises a
one-line ConfigError naming `section.key=value` (or the flag) and the fix.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from lladax.config import MASK_EPS_DEFAULT, ConfigError, ModelConfig, preset
from lladax.config_sections import Section, section_values, setting
from lladax.data.data_config import DataConfig
from lladax.train import curriculum


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """The static knobs of the train step (hashable: a static argument of `jax.jit`)."""

    section: ClassVar[str] = "train"

    steps: int = setting(1000, ">= 0", " (0 saves the initial params without training)")
    batch_size: int = setting(16, ">= 1")
    grad_accum: int = setting(1, ">= 1")
    lr: float = setting(4e-4, ">= 0")
    warmup_steps: int = setting(100, ">= 0")
    decay_fraction: float = setting(0.2, "[0, 1]")
    final_lr_ratio: float = setting(0.1, ">= 0")
    weight_decay: float = setting(0.1, ">= 0")
    b1: float = setting(0.9, "[0, 1)")
    b2: float = setting(0.95, "[0, 1)")
    eps: float = setting(1e-8, "> 0")
    clip_norm: float = setting(1.0, "> 0")
    truncate_prob: float = setting(0.01, "[0, 1]")
    mask_eps: float = setting(MASK_EPS_DEFAULT, "(0, 1)")
    stratified_t: bool = False  # low-discrepancy noise levels across the batch (see diffusion.py)
    seed: int = 0
    # Robustness (train.py): a step with a non-finite loss or gradient is skipped (counted).
    nan_lr_drop_after: int = 0  # after this many consecutive skips scale the LR (0 = never)
    nan_lr_drop_factor: float = 0.25  # ... by this (the paper resumed its NaN crash at LR/4)
    spike_factor: float = 4.0  # log a spike when loss > this × its running mean (0 = off)
    ema_decay: float = 0.0  # EMA of params kept in the state and checkpoint (0 = off)
    # Block diffusion: "SIZE:STEPS,...,SIZE" block sizes over training, "" = model.block_size
    # throughout (parsed and checked by `lladax.train.curriculum.stages`).
    block_curriculum: str = setting("")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by "
                f"train.grad_accum={self.grad_accum}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(
                f"train.ema_decay={self.ema_decay} must be in [0, 1) (0 = off; "
                "0.999 averages over ~1000 steps)"
            )
        if self.nan_lr_drop_after < 0 or not 0.0 < self.nan_lr_drop_factor <= 1.0:
            raise ConfigError(
                f"train.nan_lr_drop_after={self.nan_lr_drop_after} must be >= 0 "
                f"and train.nan_lr_drop_factor={self.nan_lr_drop_factor} in (0, 1]"
            )
        if self.spike_factor != 0 and self.spike_factor <= 1.0:
            raise ConfigError(f"train.spike_factor={self.spike_factor} must be > 1 (or 0 = off)")
        curriculum.stages(self.block_curriculum)  # its syntax (the model is checked in RunConfig)


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """The held-out loss: every `every` steps (0 = never), over `batches` fixed batches."""

    section: ClassVar[str] = "eval"

    every: int = setting(100, ">= 0")
    batches: int = setting(8, ">= 0")
    batch_size: int = setting(16, ">= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.every and self.batches)


@dataclasses.dataclass(frozen=True)
class LogConfig(Section):
    """Metrics lines every `every` steps into `workdir` (the run directory), and the bar."""

    section: ClassVar[str] = "log"

    every: int = setting(10, ">= 1")
    workdir: str = setting("runs/default", "non-empty", " (or pass --workdir)")
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
    """When checkpoints are saved and how many are kept; where a new run starts from."""

    section: ClassVar[str] = "checkpoint"

    every: int = setting(0, ">= 0")  # async save every N steps (0 = only at the end / preemption)
    keep: int = setting(2, ">= 1")  # newest N kept; >= 2 lets a damaged latest fall back
    init_from: str = ""  # start a NEW run from these params (a run dir, Orbax params or HF dir)


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    """Device mesh sizes within one slice (-1 = fill); dcn_* = slices along data/fsdp
    (multislice TPU). The keyword arguments of `lladax.model.sharding.make_mesh`."""

    section: ClassVar[str] = "mesh"

    data: int = setting(-1, "-1 or >= 1")
    fsdp: int = setting(1, "-1 or >= 1")
    tensor: int = setting(1, "-1 or >= 1")
    dcn_data: int = setting(1, ">= 1")
    dcn_fsdp: int = setting(1, ">= 1")

    def __post_init__(self) -> None:
        super().__post_init__()
        if [self.data, self.fsdp, self.tensor].count(-1) > 1:
            raise ConfigError(
                f"mesh.data={self.data}, mesh.fsdp={self.fsdp}, mesh.tensor={self.tensor}: at "
                "most one of them may be -1 (fill): give the others explicit sizes"
            )


@dataclasses.dataclass(frozen=True)
class PreferenceConfig(Section):
    """Preference optimisation (`data.format="preference"`, `lladax.diffusion.preference`): DPO
    against a frozen reference (a copy of the starting params), VRPO's ELBO estimates for a
    diffusion model. The defaults are LLaDA 1.5's: n = n_t·n_yt = 8 with n_t = 8, n_yt = 1, and
    antithetic sampling; n_t = n_yt = 1 without antithetic sampling is naive DPO with ELBOs."""

    section: ClassVar[str] = "preference"

    beta: float = setting(0.1, "> 0")  # DPO's β: the scale of the implicit reward
    n_t: int = setting(8, ">= 1")  # noise levels per ELBO estimate (ignored by the AR baseline)
    n_yt: int = setting(1, ">= 1")  # masks per noise level
    antithetic: bool = True  # policy and reference share noise levels and masks
    # + this × the chosen answer's NLL per token (RPO's SFT term against DPO lowering both
    # likelihoods; 0 = plain DPO, as LLaDA 1.5)
    nll_weight: float = setting(0.0, ">= 0")
    # The frozen reference's params dtype: "bfloat16" halves its memory (`lladax plan` shows it).
    reference_dtype: str = setting("float32", ("float32", "bfloat16"))

    @property
    def budget(self) -> int:
        """n: noisy copies per ELBO estimate."""
        return self.n_t * self.n_yt


SECTIONS: dict[str, type[Section]] = {  # every section but model, in the order they are checked
    "train": TrainConfig,
    "data": DataConfig,
    "eval": EvalConfig,
    "log": LogConfig,
    "checkpoint": CheckpointConfig,
    "mesh": MeshConfig,
    "preference": PreferenceConfig,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole, checked run config: one typed object per section."""

    model: ModelConfig
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    preference: PreferenceConfig = dataclasses.field(default_factory=PreferenceConfig)

    def __post_init__(self) -> None:  # the keys that must agree (each alone was valid)
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len!r} is longer than model.max_seq_len="
                f"{self.model.max_seq_len} (the context the model is built for): set "
                f"--config.data.seq_len <= {self.model.max_seq_len}, or raise "
                "--config.model.max_seq_len"
            )
        curriculum.stages(self.train.block_curriculum, self.model)

    @property
    def objective(self) -> PreferenceConfig | None:
        """The preference section when the run optimises preferences (`data.format=
        "preference"`), else None (pretraining / SFT): what the train step is built with."""
        return self.preference if self.data.format == "preference" else None

    @classmethod
    def from_config_dict(cls, config: Any) -> RunConfig:
        """The typed run config of a ConfigDict (`run_config`, edited by a config file and
        overrides). A section or key it lacks keeps its default; an unknown one, a wrong type or
        a value out of range is a one-line ConfigError."""
        names = sorted(["model", *SECTIONS])
        for name in sorted(set(config.keys()) - set(names)):
            raise ConfigError(f"unknown config section {name!r}: the sections are {names}")
        if "model" not in config:
            raise ConfigError(
                "the run config has no model section: start the config file from "
                "lladax.train.run_config.run_config(preset)"
            )
        sections = {
            name: kind.from_config(config.get(name) or {}) for name, kind in SECTIONS.items()
        }
        return cls(model=model_config_from(config["model"]), **sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{section: {key: value}}, as the ConfigDict it came from (checkpoint metadata)."""
        return dataclasses.asdict(self)


def run_config(model_preset: str, **model_overrides: Any):
    """The ConfigDict of a training run with every default: model preset `model_preset` (with
    `model_overrides`) and each section's defaults (`SECTIONS`), generated from the dataclasses.

    `configs/*.py` start from this and change what differs; its keys are the complete set of
    valid keys (unknown keys are errors). `check_run_config` validates one.
    """
    import ml_collections

    model = dataclasses.asdict(preset(model_preset, **model_overrides))
    defaults = {name: dataclasses.asdict(kind()) for name, kind in SECTIONS.items()}
    return ml_collections.ConfigDict({"model": model, **defaults})


def check_run_config(config: Any, stop_after: int | None = None) -> RunConfig:
    """Validate a whole run ConfigDict (`run_config`) before anything starts and return it typed:
    every key's type and range, the keys that must agree (seq_len vs model.max_seq_len, ...), and
    the run's `--stop-after` step. Pure: reads no files and touches no device. Raises a one-line
    ConfigError naming `section.key=value` (or the flag) and the fix."""
    if stop_after is not None and stop_after <= 0:
        raise ConfigError(
            f"--stop-after {stop_after} must be a step >= 1: pass the step to "
            "checkpoint and stop at"
        )
    return RunConfig.from_config_dict(config)


def model_config_from(config_dict: Any) -> ModelConfig:
    """ModelConfig from the `model` section of a run ConfigDict (or a checkpoint's dict)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    values = section_values("model", config_dict)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown model config key(s) {unknown}; valid: {sorted(fields)}")
    return ModelConfig(**values)
