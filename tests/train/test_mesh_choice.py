"""The mesh chooser: every candidate divides the batch and the slice, the best fits, uses tensor
parallelism only as needed and is the fastest by the stated model (or equal to it and simpler);
`lladax plan --mesh` and its refusals; the hardware table."""

import pytest

from lladax.cli import main
from lladax.train import mesh_choice, plan
from lladax.train.config_files import load_config_file
from lladax.train.hardware import CHIPS, GiB

CASES = [  # (config, hardware, overrides): a table of slices, batches and models
    ("configs/llada_8b.py", "v5p-1024", {}),  # 512 chips, batch 1280 = 2^8·5: needs tensor
    ("configs/llada_8b.py", "v5p-128", {"train.batch_size": 640}),
    ("configs/llada_8b.py", "v6e-256", {}),
    ("configs/llada_8b.py", "2xv5p-128", {}),  # multislice
    ("configs/llada_8b.py", "v5e-256", {}),
    ("configs/llada_8b.py", "8xh200", {}),
    ("configs/llada_8b_bd.py", "v5p-256", {}),
    ("configs/llada_8b_vrpo.py", "v6e-256", {}),
    ("configs/llada_8b_sft.py", "v5p-64", {}),
    ("configs/llada_1b.py", "4x8xh100", {"data.seq_len": 2048}),
]


def _config(name, overrides):
    config = load_config_file(name)
    for key, value in overrides.items():
        section, field = key.split(".")
        setattr(config[section], field, value)
    return config


@pytest.mark.parametrize("name, hw_name, overrides", CASES, ids=[c[1] for c in CASES])
def test_every_candidate_divides_and_the_best_fits(name, hw_name, overrides):
    config, hw = _config(name, overrides), plan.hardware(hw_name)
    choices = mesh_choice.choose(config, hw)
    batch = config.train.batch_size
    for c in choices:
        lay = c.layout
        assert lay.data * lay.fsdp * lay.tensor == hw.chips_per_slice
        assert lay.dcn_data * lay.dcn_fsdp == hw.slices
        shards = lay.data * lay.fsdp * hw.slices
        assert batch == lay.grad_accum * shards * c.plan.micro_batch_per_device
    best = choices[0]
    assert best.fits and best.plan.total_bytes <= mesh_choice.HEADROOM * hw.hbm_bytes
    fitting = [c for c in choices if c.fits]
    assert best.layout.tensor == min(c.layout.tensor for c in fitting)  # only as much as needed
    fastest = min(c.seconds["step"] for c in fitting if c.layout.tensor == best.layout.tensor)
    assert best.seconds["step"] <= fastest * (1 + mesh_choice.EQUAL)
    if hw.slices > 1:  # only data-parallel traffic crosses the slow links
        assert best.layout.dcn_data == hw.slices


def test_512_chips_with_batch_1280_gets_a_tensor_axis():
    config = load_config_file("configs/llada_8b.py")
    best = mesh_choice.choose(config, plan.hardware("v5p-1024"))[0]
    assert best.layout.tensor >= 2  # 1280 splits over at most 256 data·fsdp shards
    assert best.layout.data * best.layout.fsdp <= 256


def test_the_model_charges_fsdp_gathers_per_micro_batch():
    config = load_config_file("configs/llada_8b.py:v5p-128")
    hw = plan.hardware("v5p-128")
    a = mesh_choice.Layout(1, 64, 1, grad_accum=20)
    b = mesh_choice.Layout(1, 64, 1, grad_accum=10)
    sa, sb = (
        mesh_choice.step_seconds(plan.estimate(x.applied(config), hw), x, hw, config)
        for x in (a, b)
    )
    assert sa["compute"] == pytest.approx(sb["compute"])
    assert sa["fsdp"] == pytest.approx(2 * sb["fsdp"]) and sa["tensor"] == sa["data"] == 0
    p = 8_015_581_184 * 4
    assert sa["fsdp"] == pytest.approx(20 * 3 * p * 63 / 64 / hw.fast_bw)


def test_plan_cli_chooses_for_a_slice_the_config_does_not_fit(capsys):
    assert main(["plan", "--config", "configs/llada_8b.py", "--hardware", "v5p-1024"]) == 0
    out = capsys.readouterr().out
    assert "mesh choice       best: data=1 fsdp=256 tensor=2" in out
    assert "runner-up:" in out and "--config.mesh.tensor=2" in out
    assert "the config's mesh does not plan on v5p-1024" in out
    assert "mesh              data=1 fsdp=256 tensor=2" in out


def test_plan_cli_keeps_a_preset_layout_and_takes_overrides(capsys):
    argv = ["plan", "--config", "configs/llada_8b.py:v5p-128"]
    assert main(argv) == 0
    assert "mesh              data=1 fsdp=64 tensor=1" in capsys.readouterr().out
    assert main([*argv, "--mesh", "data=2,fsdp=16,tensor=2,grad_accum=8"]) == 0
    out = capsys.readouterr().out
    assert "mesh              data=2 fsdp=16 tensor=2; micro-batch 5 seq/device" in out
    assert main([*argv, "--config.train.batch_size=640", "--mesh", "auto"]) == 0
    assert "grad_accum" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--mesh", "data=1,fsdp=64"], "lacks ['tensor']"),
        (["--mesh", "data=1,fsdp=x,tensor=1"], "write KEY=N pairs"),
        (["--mesh", "data=1,fsdp=32,tensor=1"], "does not use the 64 devices"),
        (["--config.train.nope=3"], "unknown config key 'train.nope'"),
        (["--config.train.batch_size=7", "--mesh", "auto"], "no layout of v5p-128"),
        (["--config.data.seq_len=65536", "--mesh", "auto"], "no layout of v5p-128 fits"),
    ],
)
def test_plan_mesh_refusals_one_line(cli_error, extra, words):
    line = cli_error(["plan", "--config", "configs/llada_8b.py:v5p-128", *extra])
    assert words in line


@pytest.mark.parametrize(
    "name, chips, slices, hbm",
    [
        ("v6e-256", 256, 1, 32),
        ("v5p-1024", 512, 1, 95),
        ("2xv5p-128", 128, 2, 95),
        ("8xb200", 8, 1, 180),
        ("8xh200", 8, 1, 141),
        ("4x8xh100", 32, 4, 80),
    ],
)
def test_hardware_table(name, chips, slices, hbm):
    hw = plan.hardware(name)
    assert (hw.chips, hw.slices, hw.hbm_bytes / GiB) == (chips, slices, hbm)
    assert hw.fast_bw > hw.slow_bw > 0
    assert set(CHIPS) >= {"v4", "v5e", "v5p", "v6e", "h100", "h200", "b200"}
