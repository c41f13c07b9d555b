"""`lladax plan`: hardware names, the parameter/FLOP arithmetic, and the HBM estimate against
the compiler's own memory analysis of the same train step on the 8 CPU devices."""

import jax
import pytest

from lladax.cli import main
from lladax.train import plan
from lladax.train.config_files import load_config_file
from lladax.train.run_config import run_config


@pytest.mark.parametrize(
    "name, chips, topology",
    [
        ("v5p-128", 64, "v5p:4x4x4"),
        ("v5p-64", 32, "v5p:2x4x4"),
        ("v5e-256", 256, "v5e:16x16"),
        ("v4-128", 64, "v4:4x4x4"),
        ("v6e-8", 8, "v6e:2x4"),
        ("8xh100", 8, None),
    ],
)
def test_hardware_names(name, chips, topology):
    hw = plan.hardware(name)
    assert (hw.chips, hw.topology) == (chips, topology)


def test_multislice_plan():
    hw = plan.hardware("2xv5p-128")
    assert (hw.chips, hw.slices, hw.topology) == (128, 2, "v5p:4x4x4")
    config = load_config_file("configs/llada_8b.py:v5p-128")
    with pytest.raises(plan.PlanError, match="slice count"):
        plan.estimate(config, hw)
    config.mesh.dcn_data = 2
    config.train.grad_accum = 10
    p = plan.estimate(config, hw)
    assert p.mesh == {"data": 2, "fsdp": 64, "tensor": 1}
    assert p.micro_batch_per_device == 1


@pytest.mark.parametrize("name", ["v5p-24", "tpu-8", "8xv100", "v5p"])
def test_unknown_hardware_is_a_clear_error(name):
    with pytest.raises(plan.PlanError, match="v5p-128|power of two"):
        plan.hardware(name)


def test_llada_8b_numbers():
    config = load_config_file("configs/llada_8b.py:v5p-128")
    p = plan.estimate(config, plan.hardware("v5p-128"), mfu=0.5)
    assert p.params == 8_015_581_184  # LLaDA-8B's published 8.02B
    # 6·(matmul params incl. head) + bidirectional attention 12·layers·seq·d, done by hand:
    d, layers, seq, vocab = 4096, 32, 4096, 126464
    matmul = p.params - vocab * d  # embedding is a gather
    assert abs(p.flops_per_token / (6 * matmul + 12 * layers * seq * d) - 1) < 0.02
    assert abs(p.flops_per_token / 51.5e9 - 1) < 0.02  # the 51.5 GFLOP/token
    assert p.mesh == {"data": 1, "fsdp": 64, "tensor": 1}
    assert p.memory["params"] == pytest.approx(p.params * 4 / 64)
    assert p.total_bytes < p.hardware.hbm_bytes
    assert p.tokens_per_s_per_chip == pytest.approx(0.5 * 459e12 / p.flops_per_token)


@pytest.mark.parametrize("hardware", ["v4-128", "v5p-64", "v5p-128", "v5e-256", "8xh100"])
def test_every_llada_8b_layout_fits(hardware):
    p = plan.estimate(load_config_file(f"configs/llada_8b.py:{hardware}"), plan.hardware(hardware))
    assert p.micro_batch_per_device == 1
    assert p.total_bytes < 0.8 * p.hardware.hbm_bytes  # headroom for XLA's own buffers


@pytest.mark.parametrize("hardware", ["v4-128", "v5p-64", "v5p-128", "v5e-256", "8xh100"])
def test_every_llada_8b_bd_layout_fits(hardware):
    config = load_config_file(f"configs/llada_8b_bd.py:{hardware}")
    p = plan.estimate(config, plan.hardware(hardware))
    assert p.micro_batch_per_device == 1 and "8192 rows per sequence" in p.objective
    assert p.total_bytes < 0.8 * p.hardware.hbm_bytes  # headroom for XLA's own buffers
    assert p.params == 8_015_581_184 and config.model.block_size == 32


def test_block_diffusion_doubles_the_rows_of_every_layer():
    """The [noisy | clean] forward: twice the residual stream, four times one attention matrix,
    the logits of one copy; a block as long as the sequence is LLaDA's forward, unless a
    curriculum stage is shorter."""
    llada = plan.model_config_from(run_config("llada_1b", remat_policy="full").model)
    bd = llada.replace(kind="block_diffusion", block_size=32)
    a, b = plan.activation_bytes(llada, 1, 2048), plan.activation_bytes(bd, 1, 2048)
    residual, logits = "residual stream (all layers)", "logits (f32, + grad)"
    assert b[residual] == 2 * a[residual] and b[logits] == a[logits]
    assert 2 * a["one layer recomputed"] < b["one layer recomputed"]
    assert b["one layer recomputed"] < 4 * a["one layer recomputed"]
    whole = bd.replace(block_size=2048)
    assert plan.activation_bytes(whole, 1, 2048) == a
    assert not plan.twin_forward(whole, 2048) and plan.twin_forward(bd, 2048)
    assert plan.twin_forward(whole, 2048, "32:10,2048")


@pytest.mark.parametrize("hardware", ["v5p-64", "v5p-128", "v5e-256", "8xh100"])
def test_every_llada_8b_vrpo_layout_fits(hardware):
    """Policy + frozen bf16 reference + optimizer state + 16 rows of activations per pair."""
    config = load_config_file(f"configs/llada_8b_vrpo.py:{hardware}")
    p = plan.estimate(config, plan.hardware(hardware))
    assert p.micro_batch_per_device == 1 and p.unit == "pair"
    assert "n=8 (n_t=8 × n_yt=1, antithetic)" in p.objective and "16 rows per pair" in p.objective
    shards = p.mesh["fsdp"] * p.mesh["tensor"]
    assert p.memory["reference params (bfloat16, frozen)"] == pytest.approx(p.params * 2 / shards)
    assert p.total_bytes < p.hardware.hbm_bytes


def test_a_preference_pair_is_2n_rows_and_21x_the_flops():
    config = load_config_file("configs/vrpo_small.py")
    config.mesh.update(data=8, fsdp=1, tensor=1)
    hw = plan.Hardware("8 cpu", 8, 2**34, 1e11)
    p = plan.estimate(config, hw)
    sft = load_config_file("configs/vrpo_small.py")
    sft.data.format = "chat"
    sft.mesh.update(data=8, fsdp=1, tensor=1)
    q = plan.estimate(sft, hw)
    cfg = plan.model_config_from(config.model)
    rows = plan.activation_bytes(cfg, p.micro_batch_per_device * 16, 64)
    assert {k: p.memory[k] for k in rows} == rows
    assert p.step_seconds == pytest.approx(q.step_seconds * 16 * 4 / 3)
    assert "reference params (float32, frozen)" in p.memory and q.unit == "seq"
    config.model.kind = "autoregressive"  # exact log-probs: the two answers only
    assert "2 rows per pair" in plan.estimate(config, hw).objective


def test_remat_policies_order_activation_memory():
    cfg = run_config("llada_1b")
    totals = {}
    for policy in (
        "none",
        "dots",
        "dots_no_batch",
        "save_qkv_proj",
        "save_attn_out",
        "full",
        "offload",
    ):
        cfg.model.remat_policy = policy
        totals[policy] = sum(
            plan.activation_bytes(plan.model_config_from(cfg.model), 1, 2048).values()
        )
    assert totals["full"] < totals["save_attn_out"] < totals["dots_no_batch"] < totals["none"]
    assert totals["save_attn_out"] < totals["save_qkv_proj"] < totals["dots_no_batch"]
    assert totals["offload"] == totals["full"]  # offloaded activations live in host memory


def test_estimate_tracks_the_compiler():
    """The arithmetic estimate is within 2× of XLA's memory analysis of the real step."""
    config = load_config_file("configs/small.py")
    config.train.batch_size = 64
    config.data.seq_len = 128
    config.mesh.update(data=2, fsdp=4, tensor=1)
    estimate = plan.estimate(config, plan.Hardware("8 cpu", 8, 2**34, 1e11))
    compiled = plan.compile_train_step(config, jax.devices())
    assert 0.5 < estimate.total_bytes / compiled["peak"] < 2.0, (estimate.memory, compiled)


@pytest.mark.slow  # ~13 s; the preference step compiles and runs in test_preference_run
def test_preference_estimate_tracks_the_compiler():
    """The real preference step (policy + reference, pairs) compiles over the 8 CPU devices and
    its memory is within 2× of the estimate."""
    config = load_config_file("configs/vrpo_small.py")
    config.train.batch_size = 8
    config.data.seq_len = 32
    config.preference.n_t = 2
    config.mesh.update(data=4, fsdp=2, tensor=1)
    estimate = plan.estimate(config, plan.Hardware("8 cpu", 8, 2**34, 1e11))
    compiled = plan.compile_train_step(config, jax.devices())
    assert 0.5 < estimate.total_bytes / compiled["peak"] < 2.0, (estimate.memory, compiled)


@pytest.mark.parametrize(
    "hw_name, mesh",
    [("v5e-8", (1, 4, 2)), ("v5p-128", (2, 16, 2)), ("2xv5p-16", (1, 4, 2)), ("v4-16", (1, 8, 1))],
)
def test_tiny_aot_compile_for_tpu_slices(hw_name, mesh):
    """The real train step compiles for TPU slices from this CPU machine: a 2-D torus, a 4x4x4
    torus whose tensor=2 axis splits a physical axis, two slices over the DCN, a v4 slice (one
    device per two-core chip)."""
    pytest.importorskip("libtpu", reason="AOT for TPU needs libtpu: uv sync --extra tpu")
    config = load_config_file("configs/tiny.py")
    hw = plan.hardware(hw_name)
    config.data.seq_len = 128
    config.train.batch_size = 2 * mesh[0] * mesh[1] * hw.slices
    config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2], dcn_data=hw.slices)
    report = plan.aot_compile(config, hw)
    # (at a few MiB XLA's own buffers dominate: the estimate is checked on 8B, docs/scaling.md)
    assert 0 < report["peak"] < hw.hbm_bytes and report["compile_seconds"] < 120


def test_plan_cli(capsys):
    assert main(["plan", "--config", "configs/llada_8b.py:v5e-256", "--mfu", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "8,015,581,184" in out and "v5e-256: 256 devices" in out and "40% MFU" in out
    assert main(["plan", "--config", "configs/llada_8b.py", "--hardware", "v9-8"]) == 2
    assert "unknown hardware" in capsys.readouterr().err
    odd_batch = [
        "plan",
        "--config",
        "configs/llada_8b.py:v5p-128",
        "--config.train.batch_size=1000",
    ]
    assert main([*odd_batch, "--mesh", "config"]) == 2  # the config's own mesh, as it is
    assert "does not split" in capsys.readouterr().err
    assert main(odd_batch) == 0  # by default the planner finds a layout that divides 1000
    assert "the config's mesh does not plan on v5p-128" in capsys.readouterr().out
    assert main(["plan", "--config", "configs/llada_8b_bd.py:v5p-128"]) == 0
    out = capsys.readouterr().out
    assert "block diffusion, block 32: [noisy | clean] forward, 8192 rows per sequence" in out
    assert "block sizes 1:1000,4:1000,32:1000,4096:397000,512:8000,32" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--mfu", "0"], "--mfu 0.0 must be in (0, 1]"),
        (["--mfu", "nan"], "--mfu nan must be in (0, 1]"),
        (["--mfu", "1.5"], "--mfu 1.5 must be in (0, 1]"),
        (["--hardware", "v9-8"], "unknown hardware 'v9-8'"),
        (["--aot", "8xh100"], "--aot 8xh100: ahead-of-time compilation needs a TPU slice name"),
        (["--config.train.stepz=1"], "unknown config key 'train.stepz'"),
        (
            ["--config.train.block_curriculum=1:10,32"],
            "train.block_curriculum='1:10,32' only applies to model.kind='block_diffusion'",
        ),
    ],
)
def test_plan_refusals_one_line(cli_error, argv, words):
    assert words in cli_error(["plan", "--config", "configs/llada_8b.py:v5p-128", *argv])


def test_plan_config_argument_errors_name_the_file_line(cli_error):
    line = cli_error(["plan", "--config", "configs/llada_8b.py:v9-1", "--hardware", "v5p-128"])
    assert line.startswith("lladax plan: error: configs/llada_8b.py:")
    assert "ValueError: unknown hardware 'v9-1' for llada_8b" in line
