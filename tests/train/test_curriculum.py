"""Block diffusion training: the block-size curriculum (`train.block_curriculum`: parse, checks,
the stage of a step) and adapting an autoregressive run into a block-diffusion one through
`checkpoint.init_from`, end to end in one tiny smoke (AR run -> BD run with a curriculum,
stopped and resumed)."""

import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest

from lladax.cli import main
from lladax.config import ConfigError, preset
from lladax.store import checkpoint, layout, params_checkpoint
from lladax.train import curriculum, loop, trainer
from lladax.train.config_files import apply_overrides, load_config_file
from lladax.train.run_config import RunConfig, TrainConfig, model_config_from

ROOT = Path(__file__).resolve().parents[2]
BD = preset("tiny", kind="block_diffusion", block_size=8)


def test_stages_parse_in_order():
    assert curriculum.stages("1:200,4:200,2048:400,32") == (
        (1, 200),
        (4, 400),
        (2048, 800),
        (32, None),
    )
    assert curriculum.stages("") == () and curriculum.stages(" 8 ") == ((8, None),)
    assert curriculum.stages(" 1 : 5 , 8", BD) == ((1, 5), (8, None))


REFUSED = [  # (curriculum, model, words of the one-line ConfigError)
    ("1:200,4:100", None, "the last stage '4:100' runs to the end of training: write it as a bare"),
    ("1,8", None, "stage '1' needs its steps (SIZE:STEPS); only the last stage is a bare"),
    ("0:10,8", None, "stage '0:10' is not SIZE:STEPS with positive integers"),
    ("4:0,8", None, "stage '4:0' is not SIZE:STEPS with positive integers"),
    ("a:10,8", None, "stage 'a:10' is not SIZE:STEPS"),
    ("1:-5,8", None, "stage '1:-5' is not SIZE:STEPS"),
    ("1:10,8,", None, "stage '8' needs its steps"),
    ("1:10,8", preset("tiny"), "only applies to model.kind='block_diffusion', not 'diffusion'"),
    ("1:10,16", BD, "ends at block size 16 but model.block_size=8: end it with the block size"),
]


@pytest.mark.parametrize("text, cfg, words", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_curriculum_is_one_line_error(text, cfg, words):
    with pytest.raises(ConfigError) as e:
        if cfg is None:  # the syntax: TrainConfig alone
            TrainConfig(block_curriculum=text)
        else:  # against the model: the run config
            RunConfig(model=cfg, train=TrainConfig(block_curriculum=text))
    line = str(e.value)
    assert words in line and f"train.block_curriculum={text!r}" in line and "\n" not in line, line


def test_stage_of_each_step():
    """Sizes >= seq_len are one block: they share one branch of the switch."""
    plan = curriculum.stages("1:2,128:2,64:1,8", BD)
    assert curriculum.branch_sizes(plan, 64) == (1, 64, 8)
    steps = range(7)
    assert [int(curriculum.branch_index(plan, 64, s)) for s in steps] == [0, 0, 1, 1, 1, 2, 2]
    sizes = [1, 1, 128, 128, 64, 8, 8]
    assert [int(curriculum.size_of_step(plan, s)) for s in steps] == sizes
    assert curriculum.last_stage_start(plan) == 5 and curriculum.last_stage_start(plan[-1:]) == 0


def test_a_run_that_ends_before_the_last_stage_is_warned(caplog):
    from lladax.train.run_setup import _report_curriculum

    tc = TrainConfig(steps=4, block_curriculum="1:2,64:2,8")
    with caplog.at_level(logging.INFO, logger="lladax"):
        _report_curriculum(tc, BD, 3)
    assert [r.getMessage() for r in caplog.records] == [
        "block-size curriculum 1:2,64:2,8: step 3 trains block size 64 (model.block_size=8 "
        "from step 4)",
        "train.block_curriculum='1:2,64:2,8' reaches its last stage (block size 8) at step 4, "
        "not before train.steps=4: the run never trains the block size it saves",
    ]


def test_bd_small_adapt_variant():
    from lladax.train.run_config import check_run_config

    run = check_run_config(load_config_file(str(ROOT / "configs" / "bd_small.py:adapt")))
    assert (run.model.kind, run.model.block_size, run.data.seq_len) == ("block_diffusion", 16, 64)
    assert run.train.block_curriculum == "1:50,4:50,64:100,16"
    assert run.checkpoint.init_from == "runs/small_ar"


# --- the smoke: a tiny AR run, adapted into block diffusion with a curriculum --------------------
STEPS, STOP_AT, CURRICULUM = 6, 4, "1:2,64:2,8"  # seq_len 32: 64 is one block (LLaDA's loss)


def _common(workdir) -> list[str]:
    return [
        f"--config.log.workdir={workdir}",
        "--config.log.progress=false",
        "--config.log.every=1",
        "--config.eval.every=0",
        "--config.data.seq_len=32",
    ]


def _bd_config(workdir, init_from, **model):
    """configs/tiny.py as block diffusion, block 8, with the curriculum, from `init_from`."""
    config = load_config_file(str(ROOT / "configs" / "tiny.py"))
    apply_overrides(
        config,
        [
            *_common(workdir),
            f"--config.train.steps={STEPS}",
            f"--config.train.block_curriculum={CURRICULUM}",
            f"--config.checkpoint.init_from={init_from}",
        ],
    )
    config.model.update(**{"kind": "block_diffusion", "block_size": 8, **model})
    return config


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """(AR run dir, BD run dir, the BD run's batches, its first params, its log lines)."""
    root = tmp_path_factory.mktemp("adapt")
    ar, bd = root / "ar", root / "bd"
    argv = ["train", "--config", str(ROOT / "configs" / "tiny.py"), *_common(ar)]
    assert main([*argv, "--config.train.steps=2", "--config.model.kind=autoregressive"]) == 0
    batches, first, lines = [], [], _Lines()
    mp = pytest.MonkeyPatch()
    make_batches, start_state = loop.train_batches, loop.start_state

    class Recording:
        def __init__(self, *args):
            self.it = make_batches(*args)

        def __next__(self):
            batch = next(self.it)
            batches.append({k: np.asarray(v).copy() for k, v in batch.items()})
            return batch

        def get_state(self):
            return self.it.get_state()

        def set_state(self, state):
            self.it.set_state(state)

    def starting(*args):
        state, data = start_state(*args)
        first.append(jax.tree.map(lambda x: np.asarray(x).copy(), state.params))
        return state, data

    logger = logging.getLogger("lladax")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        mp.setattr(loop, "train_batches", Recording)
        mp.setattr(loop, "start_state", starting)
        assert loop.run(_bd_config(bd, ar), stop_after=STOP_AT)["stopped"] == "stop_after"
        assert loop.run(_bd_config(bd, ar))["stopped"] is None
    finally:
        mp.undo()
        logger.removeHandler(lines)
        logger.setLevel(level)
    return ar, bd, batches, first, lines.lines


def _restored(run_dir, step):
    _, meta = params_checkpoint.read_meta(run_dir, step)
    cfg = model_config_from(meta["run"]["model"])
    tc = TrainConfig.from_config(meta["run"]["train"])
    like = trainer.abstract_state(cfg, tc, trainer.make_optimizer(tc))
    mgr = layout.manager(run_dir, read_only=True)
    return cfg, tc, checkpoint.restore(mgr, like, step, quarantine=False).state


def test_adapted_run_starts_from_the_ar_params_and_saves_the_target_model(adapted):
    ar, bd, _, first, lines = adapted
    ar_cfg, ar_params = params_checkpoint.load_params(ar)
    assert ar_cfg.kind == "autoregressive"
    for a, b in zip(jax.tree.leaves(first[0]), jax.tree.leaves(ar_params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert (
        f"starting from the params of {ar}: a kind='autoregressive' model adapted into a "
        "kind='block_diffusion', block_size=8 one" in "\n".join(lines)
    )
    step, meta = params_checkpoint.read_meta(bd)
    assert step == STEPS and meta["model"]["kind"] == "block_diffusion"
    assert meta["model"]["block_size"] == 8 and meta["run"]["train"]["block_curriculum"]
    cfg, params = params_checkpoint.load_params(bd)
    assert (cfg.kind, cfg.block_size) == ("block_diffusion", 8)
    assert not np.array_equal(np.asarray(params["wte"]), np.asarray(ar_params["wte"]))


def test_curriculum_follows_the_step_across_a_resume(adapted):
    _, bd, batches, first, lines = adapted
    records = [json.loads(x) for x in (bd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1)) and len(batches) == STEPS
    assert [r["block_size"] for r in records] == [1, 1, 64, 64, 8, 8]
    assert all(np.isfinite(r["loss"]) for r in records) and len(first) == 2
    text = "\n".join(lines)
    assert f"block-size curriculum {CURRICULUM}: step 0 trains block size 1 (model." in text
    assert f"curriculum {CURRICULUM}: step {STOP_AT} trains block size 8" in text


@pytest.mark.parametrize("step, size", [(0, 1), (STOP_AT, 8)])
def test_each_step_trains_its_stage_block_size(adapted, step, size):
    """The logged loss of a step is `loss_fn` with its stage's block size, on the params it
    started from: the first step (block 1, from the AR params), the first after the resume
    (block 8, from the checkpoint)."""
    _, bd, batches, first, _ = adapted
    cfg, tc, state = _restored(bd, STOP_AT)
    params = first[0] if step == 0 else state.params
    key = jax.random.fold_in(jax.random.fold_in(state.rng, step), 0)  # grad_accum 1
    loss_fn = jax.jit(trainer.loss_fn, static_argnums=(1, 2))
    want = loss_fn(params, cfg.replace(block_size=size), tc, batches[step], key)
    records = [json.loads(x) for x in (bd / "metrics.jsonl").read_text().splitlines()]
    assert records[step]["loss"] == pytest.approx(float(want), rel=1e-5)


def test_resume_as_another_model_is_refused(adapted, cli_error):
    """The BD run resumed as kind='diffusion' (the restore's kind check) or with another
    block_size (other model numerics): one line each, nothing written."""
    _, bd, *_ = adapted
    argv = ["train", "--config", str(ROOT / "configs" / "tiny.py"), *_common(bd)]
    line = cli_error([*argv, f"--config.train.steps={STEPS}"], untouched=[bd])
    assert "is a kind='block_diffusion' model but this run is kind='diffusion'" in line, line
    config = _bd_config(bd, "", block_size=16)
    config.train.block_curriculum = "1:2,16"
    with pytest.raises(checkpoint.CheckpointMismatchError, match="block_size=8 there, 16 now"):
        loop.run(config)
