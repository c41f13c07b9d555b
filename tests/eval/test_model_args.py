"""lm-eval model args (`lladax.eval.model_args`): the adapter's own, and the sampler's from
`SamplerConfig`; parsed without importing the harness."""

from pathlib import Path

import pytest

from lladax.diffusion.sampler_config import SamplerConfig
from lladax.eval import model_args

ROOT = Path(__file__).resolve().parents[2]


def test_sampler_model_args_come_from_the_sampler_config():
    for name in model_args.SAMPLER_ARGS:
        assert model_args.MODEL_ARGS[name][0] is SamplerConfig.options()[name]
    assert set(SamplerConfig.FAST_OPTIONS) <= set(model_args.MODEL_ARGS)  # fast decoding too
    assert model_args.MODEL_ARGS["gen_length"] == (int, 1024)  # lm-eval's explicit overrides
    assert model_args.MODEL_ARGS["early_exit"] == (bool, True)
    opts, sampler = model_args.parse_model_args(
        {"checkpoint": "x", "mc_num": "32", "steps": "512", "remasking": "random", "cfg": "0.5"}
    )
    assert sampler == SamplerConfig(
        gen_length=1024, steps=512, remasking="random", cfg_scale=0.5, early_exit=True
    )
    assert opts["mc_num"] == 32 and "steps" not in opts
    recorded = model_args.recorded(opts, sampler)
    assert (recorded["block_length"], recorded["seed"]) == (1024, 1234)
    with pytest.raises(ValueError, match="model arg steps=0 must be >= 1"):
        model_args.parse_model_args({"checkpoint": "x", "steps": "0"})
    with pytest.raises(ValueError, match="model arg early_exit='maybe' must be true or false"):
        model_args.check_model_args({"early_exit": "maybe"})
    _, plain = model_args.check_model_args({"early_exit": "false"})
    assert plain.early_exit is False


def test_fast_decoding_model_args():
    """cache / threshold / factor as model args, typed and checked by `SamplerConfig`; 'none' is
    unset for every arg but cache, whose mode "none" is fast decoding with exact forwards."""
    _, fast = model_args.check_model_args({"cache": "dual", "threshold": "0.9"})
    assert (fast.cache, fast.threshold, fast.fast) == ("dual", 0.9, True)
    _, exact_forwards = model_args.check_model_args({"cache": "none", "factor": 1})
    assert (exact_forwards.cache, exact_forwards.factor) == ("none", 1.0)
    _, unset = model_args.check_model_args({"cache": None, "threshold": "None"})
    assert unset.cache is None and unset.threshold is None and not unset.fast
    with pytest.raises(ValueError, match="unknown cache mode 'fast'"):
        model_args.check_model_args({"cache": "fast"})
    with pytest.raises(ValueError, match="pass one of them, not both"):
        model_args.check_model_args({"cache": "dual", "threshold": 0.9, "factor": 1.0})


def test_eval_configs_are_checked_when_loaded(tmp_path):
    """An eval config's model args (the sampler's included) are checked by get_config."""
    from lladax.train.config_files import load_config_file

    path = tmp_path / "bad.py"
    path.write_text(
        "import ml_collections\n"
        "from lladax.eval.model_args import check_model_args\n\n"
        "def get_config(task='x'):\n"
        "    args = dict(gen_length=8, block_length=3)\n"
        "    check_model_args(args)\n"
        "    return ml_collections.ConfigDict(dict(tasks=task, model_args=args))\n"
    )
    with pytest.raises(ValueError, match="not a multiple of block_length") as e:
        load_config_file(f"{path}:x")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown model arg 'remask'"):
        model_args.check_model_args({"remask": "random"})


def test_eval_configs_carry_the_reference_settings():
    from lladax.cli.eval_cmd import _eval_config

    mmlu = _eval_config(str(ROOT / "configs/eval/base.py") + ":mmlu")
    assert (mmlu["tasks"], mmlu["num_fewshot"]) == ("mmlu", 5)
    assert mmlu["model_args"] == {"mc_num": 1, "batch_size": 1, "cfg_scale": 0.0}
    arc = _eval_config(str(ROOT / "configs/eval/base.py") + ":arc_challenge")
    assert arc["model_args"]["cfg_scale"] == 0.5 and arc["model_args"]["mc_num"] == 128
    gsm = _eval_config(str(ROOT / "configs/eval/instruct.py") + ":gsm8k")
    assert gsm["model_args"]["gen_length"] == 512 and gsm["model_args"]["confidence_eos_eot_inf"]
    with pytest.raises(ValueError, match="unknown base eval task 'nope'"):
        _eval_config(str(ROOT / "configs/eval/base.py") + ":nope")
