"""The checks of `integrity`: damaged-array errors in one short line, and checksums that see one
flipped bit and moved data but not the sharding."""

import jax
import jax.numpy as jnp

from lladax.model import sharding
from lladax.store import integrity


def test_tensorstore_errors_are_one_short_line():
    spec = ' [tensorstore_spec=\'{"driver":"zarr"}\']'
    inner = ValueError(
        'DATA_LOSS: Error opening "zarr" driver: Error reading "wte/.zarray" in '
        'OCDBT database at local file "/r/params/": Error decoding b-tree node: '
        "Expected to start with 0cdb20de but received: 0x91; at byte 4" + spec
    )
    assert integrity.describe_error(inner) == (
        "ValueError: DATA_LOSS reading wte: Error decoding b-tree node: Expected to start with "
        "0cdb20de but received: 0x91; at byte 4"
    )
    try:  # Orbax wraps it: the wrapper's spec suffix goes, its cause is kept
        raise Exception(
            "Encountered error while reading array index: (0,). See full "
            "TensorStore details: <bound method PyCapsule.spec of <Array>>."
        ) from inner
    except Exception as e:
        text = integrity.describe_error(e)
    assert text.startswith(
        "Exception: Encountered error while reading array index: (0,) ("
        "ValueError: DATA_LOSS reading wte: Error decoding"
    ), text
    assert "bound method" not in text and "tensorstore_spec" not in text


def test_checksum_sees_one_bit_and_moves_but_not_sharding():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    base = integrity.checksums({"x": x})["x"]
    flipped = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(x, jnp.uint32).at[3, 7].add(1), jnp.float32
    )
    assert integrity.checksums({"x": flipped})["x"] != base
    assert integrity.checksums({"x": x[::-1]})["x"] != base
    assert integrity.checksums({"x": x.T.reshape(8, 16)})["x"] != base
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    spread = jax.device_put(
        x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "tensor"))
    )
    assert integrity.checksums({"x": spread})["x"] == base
