"""The run config: typed sections generated into the ConfigDict that config files edit, and
`check_run_config` (every key's type and range, cross-section agreement) with one-line errors."""

import dataclasses
from pathlib import Path

import ml_collections
import pytest

from lladax.config import ConfigError, preset
from lladax.data.data_config import DataConfig
from lladax.train.config_files import apply_overrides, load_config_file
from lladax.train.run_config import (
    SECTIONS,
    MeshConfig,
    RunConfig,
    TrainConfig,
    check_run_config,
    run_config,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_shipped_configs_pass_the_run_config_check(path):
    from lladax.train.config_files import load_config_file

    config = load_config_file(str(path))
    if not config.data.source:  # llada_8b_sft: the user's chat data is required
        with pytest.raises(ConfigError, match="data.source='' must be a non-empty string"):
            check_run_config(config)
        config.data.source = "chat.jsonl"
    check_run_config(config)


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("train", "steps", 1.5, "train.steps=1.5 must be an int"),
        ("train", "lr", "fast", "train.lr='fast' must be a number"),
        ("train", "stratified_t", 1, "train.stratified_t=1 must be true or false"),
        ("data", "pack", "yes", "data.pack='yes' must be true or false"),
        ("eval", "batches", True, "eval.batches=True must be an int"),
        ("train", "clip_norm", 0.0, "train.clip_norm=0.0 must be a number > 0"),
        ("data", "seq_len", 129, "data.seq_len=129 is longer than model.max_seq_len=128"),
        ("log", "workdir", " ", "log.workdir=' ' must be a non-empty string"),
    ],
)
def test_run_config_types_and_ranges(section, key, value, words):
    """Values a config file that builds its own ConfigDict can hold (overrides and run_config's
    typed fields are type-checked earlier): each is one line naming section.key=value and the
    fix."""
    import ml_collections

    values = run_config("tiny").to_dict()
    values[section][key] = value
    config = ml_collections.ConfigDict(values)
    with pytest.raises(ConfigError) as e:
        check_run_config(config)
    assert (
        words in str(e.value) and f"--config.{section}" in str(e.value) and "\n" not in str(e.value)
    )


def test_unknown_run_config_section_and_key():
    config = run_config("tiny")
    config.train.stepz = 3
    with pytest.raises(ConfigError, match=r"unknown config key train.stepz: the keys of train"):
        check_run_config(config)
    config = run_config("tiny")
    config.optim = {"lr": 1.0}
    with pytest.raises(ConfigError, match="unknown config section 'optim'"):
        check_run_config(config)


# --- every default written once: the ConfigDict is generated from the dataclasses ---------------
def test_generated_config_dict_holds_the_dataclass_defaults():
    config = run_config("tiny", remat_policy="none")
    assert config.to_dict() == {
        "model": dataclasses.asdict(preset("tiny", remat_policy="none")),
        **{name: dataclasses.asdict(kind()) for name, kind in SECTIONS.items()},
    }
    assert set(SECTIONS) == {"train", "data", "eval", "log", "checkpoint", "mesh", "preference"}
    assert SECTIONS["data"] is DataConfig  # the data wing owns its section
    run = check_run_config(config)
    assert run == RunConfig(model=preset("tiny", remat_policy="none"))
    assert run.to_dict() == config.to_dict()  # the checkpoint's "run" metadata keeps its format


def test_typed_sections_are_frozen_and_hashable():
    run = check_run_config(load_config_file(str(ROOT / "configs" / "tiny.py")))
    assert isinstance(run.train, TrainConfig) and isinstance(run.mesh, MeshConfig)
    assert (run.data.seq_len, run.train.steps, run.log.workdir) == (64, 30, "runs/tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.train.steps = 3
    assert hash(run.train) == hash(dataclasses.replace(run.train))  # a jit static argument


def test_a_key_or_section_left_out_keeps_its_default():
    """A config written before a key existed (or a hand-built one) still checks."""
    values = run_config("tiny").to_dict()
    del values["data"]["workers"], values["mesh"]
    run = check_run_config(ml_collections.ConfigDict(values))
    assert run.data.workers == DataConfig().workers and run.mesh == MeshConfig()


def test_a_section_that_is_not_a_section_is_one_line():
    values = run_config("tiny").to_dict()
    values["eval"] = 3
    with pytest.raises(ConfigError, match=r"config section eval=3 is not a section of keys"):
        check_run_config(ml_collections.ConfigDict(values))
    del values["model"], values["eval"]
    with pytest.raises(ConfigError, match="the run config has no model section"):
        check_run_config(ml_collections.ConfigDict(values))


@pytest.mark.parametrize(
    "override, words",
    [
        ("--config.data.nope=1", "unknown config key 'data.nope' (no 'nope' under data; valid: "),
        ("--config.data.seq_len=long", "--config.data.seq_len: cannot parse 'long' as int"),
        ("--config.data.pack=maybe", "--config.data.pack: expected true/false, got 'maybe'"),
        ("--config.mesh.data=1.5", "--config.mesh.data: expected int, got '1.5'"),
    ],
)
def test_overrides_of_typed_keys_are_one_line_errors(cli_error, tmp_path, override, words):
    """`--config.section.key=value` keeps the ConfigDict's own refusals (unknown key, wrong
    type), one line each, before anything is written."""
    argv = ["train", "--config", ROOT / "configs" / "tiny.py", "--workdir", tmp_path / "run"]
    line = cli_error([*argv, override], untouched=[tmp_path])
    assert words in line, line
    assert not (tmp_path / "run").exists()


def test_overrides_fill_optional_model_fields():
    """A key whose default is None (model.block_size) takes a number from the command line."""
    overrides = ["--config.model.kind=block_diffusion", "--config.model.block_size=8"]
    run = check_run_config(apply_overrides(run_config("tiny"), overrides))
    assert run.model.kind == "block_diffusion" and run.model.block_size == 8
    bad = apply_overrides(run_config("tiny"), [overrides[0], "--config.model.block_size=eight"])
    with pytest.raises(ConfigError, match="block_size='eight' must be a positive int"):
        check_run_config(bad)
