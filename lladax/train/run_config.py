"""The run configuration: one ml-collections ConfigDict per training run, its defaults and checks.

Sections: `model` (every `ModelConfig` field), `train` (every `TrainConfig` field), `data`, `eval`,
`log`, `checkpoint`, `mesh`. `run_config(preset)` builds the defaults that `configs/*.py` start
from (its keys are the complete set of valid keys); `check_run_config` validates a whole config
before any device work (type and range of every key, cross-section agreement) with one-line
errors naming `section.key=value` and the fix; `model_config_from` builds the `ModelConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lladax.config import ConfigError, ModelConfig, TrainConfig, preset
from lladax.data.sources import FORMATS

DATA_FORMATS = FORMATS  # defined with the sources that read them (no second copy)
RUN_SECTIONS: dict[str, dict[str, Any]] = {  # the defaults of every section but model and train
    "data": dict(
        # "embedded" (Python's own docs), a .txt/.jsonl file or directory, a `lladax data
        # prepare` directory (or "arrayrecord:GLOB"), or "tfds:NAME[:SPLIT]" (docs/data.md)
        source="embedded",
        format="text",  # one of DATA_FORMATS
        tokenizer="",  # "" = sentencepiece trained on the embedded text (vocab_size)
        seq_len=128,
        seed=0,
        field="text",  # the text field of .jsonl lines / TFDS records
        pack=False,  # True: one document per segment (segment_ids, positions), padded
        min_answer_len=0,  # chat: EOS-pad every answer to >= this (the gen_length to sample)
        random_offset=False,  # chat: start rows with random EOS runs (vary the answer region)
        workers=0,  # grain worker processes (0 = in-process); keep it fixed on resume
    ),
    "eval": dict(every=100, batches=8, batch_size=16),
    "log": dict(every=10, workdir="runs/default", progress=True),
    "checkpoint": dict(
        every=0,  # async save every N steps (0 = only at the end / on preemption)
        keep=2,  # newest N kept; >= 2 lets a damaged latest fall back to the one before
        init_from="",  # start a NEW run from these params (a run dir, Orbax params or HF dir)
    ),
    # Sizes within one slice (-1 = fill); dcn_* = slices along data/fsdp (multislice TPU).
    "mesh": dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1),
}


def run_config(model_preset: str, **model_overrides: Any):
    """The full ConfigDict of a training run: model fields, data, train, eval, mesh, checkpoint.

    `configs/*.py` start from this and change what differs; every key that exists here is the
    complete set of valid keys (unknown keys are errors). `check_run_config` validates one.
    """
    import ml_collections

    model_cfg = preset(model_preset, **model_overrides)
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(ModelConfig)}
    )
    c.train = ml_collections.ConfigDict(dataclasses.asdict(TrainConfig()))
    for name, defaults in RUN_SECTIONS.items():
        c[name] = ml_collections.ConfigDict(dict(defaults))
    return c


# The type and range of every key (ModelConfig and TrainConfig check the rest themselves).
_RULES: dict[str, dict[str, tuple[str, str]]] = {
    "train": dict(
        steps=("int", ">= 0"),
        batch_size=("int", ">= 1"),
        grad_accum=("int", ">= 1"),
        lr=("number", ">= 0"),
        warmup_steps=("int", ">= 0"),
        decay_fraction=("number", "[0, 1]"),
        final_lr_ratio=("number", ">= 0"),
        weight_decay=("number", ">= 0"),
        b1=("number", "[0, 1)"),
        b2=("number", "[0, 1)"),
        eps=("number", "> 0"),
        clip_norm=("number", "> 0"),
        truncate_prob=("number", "[0, 1]"),
        mask_eps=("number", "(0, 1)"),
        stratified_t=("bool", ""),
        seed=("int", ""),
        nan_lr_drop_after=("int", ""),
        nan_lr_drop_factor=("number", ""),
        spike_factor=("number", ""),
        ema_decay=("number", ""),
    ),
    "data": dict(
        source=("str", "non-empty"),
        format=("str", "choice"),
        tokenizer=("str", ""),
        seq_len=("int", ">= 2"),
        seed=("int", ""),
        field=("str", "non-empty"),
        pack=("bool", ""),
        min_answer_len=("int", ">= 0"),
        random_offset=("bool", ""),
        workers=("int", ">= 0"),
    ),
    "eval": dict(every=("int", ">= 0"), batches=("int", ">= 0"), batch_size=("int", ">= 1")),
    "log": dict(every=("int", ">= 1"), workdir=("str", "non-empty"), progress=("bool", "")),
    "checkpoint": dict(every=("int", ">= 0"), keep=("int", ">= 1"), init_from=("str", "")),
    "mesh": dict(
        data=("int", "-1 or >= 1"),
        fsdp=("int", "-1 or >= 1"),
        tensor=("int", "-1 or >= 1"),
        dcn_data=("int", ">= 1"),
        dcn_fsdp=("int", ">= 1"),
    ),
}
_HINTS = {
    "train.steps": " (0 saves the initial params without training)",
    "data.source": " (embedded, a .txt/.jsonl file or directory, prepared data, tfds:NAME)",
    "log.workdir": " (or pass --workdir)",
}
_MISSING = object()
_TYPES = {"int": (int,), "number": (int, float), "bool": (bool,), "str": (str,)}
_KIND = {"int": "an int", "number": "a number", "bool": "true or false", "str": "a string"}


def _holds(value: Any, rule: str) -> bool:
    """Whether `value` meets `rule`: "", ">= a", "> a", "[a, b]" (any brackets), "-1 or ..."."""
    if rule.startswith("-1 or "):
        return value == -1 or _holds(value, rule[6:])
    if rule[:1] and rule[0] in "[(":
        lo, hi = (float(x) for x in rule[1:-1].split(","))
        return (lo <= value if rule[0] == "[" else lo < value) and (
            value <= hi if rule[-1] == "]" else value < hi
        )
    if rule.startswith(">"):
        bound = float(rule.lstrip(">= "))
        return value >= bound if rule.startswith(">=") else value > bound
    return {"non-empty": lambda: value.strip() != "", "choice": lambda: value in DATA_FORMATS}.get(
        rule, lambda: True
    )()


def _bad(key: str, value: Any, problem: str, fix: str | None = None) -> ConfigError:
    return ConfigError(f"{key}={value!r} {problem}: " + (fix or f"pass a valid --config.{key}"))


def check_run_config(config: Any, stop_after: int | None = None) -> None:
    """Validate a whole run ConfigDict (`run_config`) before anything starts: every key's type
    and range, and the keys that must agree (seq_len vs model.max_seq_len, ...), and the run's
    `--stop-after` step. Pure: reads no files and touches no device. Raises a one-line
    ConfigError naming `section.key=value` (or the flag) and the fix."""
    if stop_after is not None and stop_after <= 0:
        raise ConfigError(
            f"--stop-after {stop_after} must be a step >= 1: pass the step to "
            "checkpoint and stop at"
        )
    sections = set(_RULES) | {"model"}
    for name in sorted(set(config.keys()) - sections):
        raise ConfigError(f"unknown config section {name!r}: the sections are {sorted(sections)}")
    for section, rules in _RULES.items():
        values = dict(config.get(section) or {})
        for key in sorted(set(values) - set(rules)):
            raise ConfigError(
                f"unknown config key {section}.{key}: the keys of {section} are {sorted(rules)}"
            )
        for key, (kind, rule) in rules.items():
            value = values.get(key, _MISSING)  # missing (an older config): the loop's default
            if value is _MISSING:
                continue
            if not isinstance(value, _TYPES[kind]) or (kind != "bool" and isinstance(value, bool)):
                raise _bad(f"{section}.{key}", value, f"must be {_KIND[kind]}")
            if not _holds(value, rule):
                what = {
                    "choice": f"one of {DATA_FORMATS}",
                    "non-empty": "a non-empty string",
                    "-1 or >= 1": "-1 (fill) or an int >= 1",
                }.get(rule, f"{_KIND[kind]} {'in ' if rule[0] in '[(' else ''}{rule}")
                raise _bad(
                    f"{section}.{key}",
                    value,
                    f"must be {what}",
                    f"set --config.{section}.{key} to {what}" + _HINTS.get(f"{section}.{key}", ""),
                )
    cfg = model_config_from(config.model)  # ModelConfig's own checks (one line each)
    TrainConfig.from_config(config.train)  # ... and TrainConfig's
    _check_agreement(config, cfg)


def _check_agreement(config: Any, cfg: ModelConfig) -> None:
    """The keys that must agree with each other (each alone was valid)."""
    d, m = config.data, dict(config.mesh)
    if d.seq_len > cfg.max_seq_len:
        raise _bad(
            "data.seq_len",
            d.seq_len,
            f"is longer than model.max_seq_len="
            f"{cfg.max_seq_len} (the context the model is built for)",
            f"set --config.data.seq_len <= {cfg.max_seq_len}, or raise --config.model.max_seq_len",
        )
    if d.get("min_answer_len", 0) >= d.seq_len:
        raise _bad(
            "data.min_answer_len",
            d.min_answer_len,
            f"leaves no room for a prompt in data.seq_len={d.seq_len}",
            f"set it below {d.seq_len}",
        )
    if [m.get(k, 1) for k in ("data", "fsdp", "tensor")].count(-1) > 1:
        raise ConfigError(
            f"mesh.data={m.get('data')}, mesh.fsdp={m.get('fsdp')}, mesh.tensor="
            f"{m.get('tensor')}: at most one of them may be -1 (fill): give the "
            "others explicit sizes"
        )


def model_config_from(config_dict: Any) -> ModelConfig:
    """ModelConfig from the `model` section of a run ConfigDict."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    values = dict(config_dict)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown model config key(s) {unknown}; valid: {sorted(fields)}")
    return ModelConfig(**values)
