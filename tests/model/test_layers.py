"""The remat policies of `layers.CHECKPOINT_POLICIES` as the scanned model applies them: one for
every `remat_policy` name, the same gradients as no remat, and exactly the residuals each policy
names kept (on device or host)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import config
from lladax.config import preset
from lladax.model import layers, transformer


def test_every_remat_policy_name_has_a_checkpoint_policy():
    assert {"none", *layers.CHECKPOINT_POLICIES} == set(config.REMAT_POLICIES)


@pytest.mark.parametrize(
    "policy", ["full", "dots", "dots_no_batch", "save_attn_out", "save_qkv_proj", "offload"]
)
def test_remat_policies_same_gradients(policy):
    cfg = preset("tiny", remat_policy=policy)
    params = transformer.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    loss = lambda p, c: jnp.mean(transformer.apply(p, c, tokens) ** 2)
    ref = jax.grad(loss)(params, preset("tiny", remat_policy="none"))
    got = jax.jit(jax.grad(loss), static_argnums=1)(params, cfg)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "policy, on_device, on_host",
    [("full", 0, 0), ("save_attn_out", 1, 0), ("save_qkv_proj", 3, 0), ("offload", 0, 4)],
)
def test_remat_policies_keep_what_they_name(policy, on_device, on_host, capsys):
    """Stacked per-head residuals [layers, batch, len, heads, head_dim] the backward pass keeps:
    q, k, v (and attn_out) on the device, or in pinned host memory for `offload`."""
    cfg = preset("tiny", remat_policy=policy)
    params = transformer.init_params(cfg, jax.random.key(0))
    tokens = jnp.zeros((2, 16), jnp.int32)
    jax.ad_checkpoint.print_saved_residuals(
        lambda p: jnp.mean(transformer.apply(p, cfg, tokens) ** 2), params
    )
    shape = f"[{cfg.n_layers},2,16,{cfg.n_heads},{cfg.head_dim}]"
    lines = capsys.readouterr().out.splitlines()
    assert sum(f"f32{shape}" in line for line in lines) == on_device
    assert sum(f"f32<host>{shape}" in line for line in lines) == on_host
