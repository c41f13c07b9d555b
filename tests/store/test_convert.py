"""HF safetensors <-> lladax params: exact round trips and clear errors on bad checkpoints."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import store_fixtures

from lladax.store import convert, params_checkpoint, safetensors_io

ckpt_copy = store_fixtures.ckpt_copy  # the shared fixture


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 60_000])
def test_round_trip_is_bit_identical(tiny_llada_dir, tmp_path, max_shard_bytes):
    cfg, params = convert.load_hf(tiny_llada_dir)
    convert.save_hf(tmp_path, cfg, params, max_shard_bytes=max_shard_bytes)
    sharded = (tmp_path / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_bytes < 2**20)
    cfg2, params2 = convert.load_hf(tmp_path)
    assert cfg2 == cfg and _same(params, params2)
    # The re-exported tensors equal the original file's, name for name.
    names, read = convert._tensor_reader(tiny_llada_dir / "model.safetensors")
    for name, arr in convert.hf_tensors(cfg, params):
        np.testing.assert_array_equal(arr, read(name))
    assert len(names) == len(list(convert.hf_tensors(cfg, params)))


def test_bf16_round_trip(tiny_llada_dir, tmp_path):
    cfg, params = convert.load_hf(tiny_llada_dir, jnp.bfloat16)
    convert.save_hf(tmp_path, cfg, params)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    _, params2 = convert.load_hf(tmp_path, jnp.bfloat16)
    assert _same(params, params2)


def test_missing_safetensors(ckpt_copy):
    (ckpt_copy / "model.safetensors").unlink()
    with pytest.raises(safetensors_io.CheckpointFormatError, match="no model.safetensors"):
        convert.load_hf(ckpt_copy)


@pytest.mark.parametrize("cut", [4, 2000, -100])
def test_corrupt_safetensors(ckpt_copy, cut):
    path = ckpt_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(safetensors_io.CheckpointFormatError, match="corrupt|truncated"):
        convert.load_hf(ckpt_copy)


def test_block_diffusion_round_trip_keeps_kind_and_block_size(tiny_llada, tmp_path, cli_error):
    """save_hf / load_hf and `lladax convert` both ways carry a block-diffusion model (its
    config.json adds lladax_kind and block_size); the autoregressive baseline is refused in one
    line naming its kind, by save_hf and by orbax-to-hf."""
    cfg, params = tiny_llada
    bd = cfg.replace(kind="block_diffusion", block_size=8)
    convert.save_hf(tmp_path / "hf", bd, params)
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (written["lladax_kind"], written["block_size"]) == ("block_diffusion", 8)
    back, params2 = convert.load_hf(tmp_path / "hf")
    assert back == bd and _same(params, params2)
    orb, hf2 = tmp_path / "orbax", tmp_path / "hf2"
    assert (
        cli_main(["convert", "hf-to-orbax", str(tmp_path / "hf"), str(orb), "--no-progress"]) == 0
    )
    assert params_checkpoint.load_params(orb)[0] == bd
    assert cli_main(["convert", "orbax-to-hf", str(orb), str(hf2), "--no-progress"]) == 0
    assert convert.load_hf(hf2)[0] == bd
    ar = cfg.replace(kind="autoregressive")
    with pytest.raises(ValueError, match="this one is kind='autoregressive'") as e:
        convert.save_hf(tmp_path / "ar_hf", ar, params)
    assert "\n" not in str(e.value) and not (tmp_path / "ar_hf").exists()
    params_checkpoint.save_params(tmp_path / "ar", ar, params)
    line = cli_error(["convert", "orbax-to-hf", tmp_path / "ar", tmp_path / "out"])
    assert "is a kind='autoregressive' model: only LLaDA (diffusion) and block-diffusion" in line


# --- streaming conversion, meshes, the CLI, and the errors a real download can hit --------------
from lladax.cli import main as cli_main  # noqa: E402
from lladax.model import sharding, transformer  # noqa: E402
from lladax.store.safetensors_io import parse_size  # noqa: E402


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MB") == 5 * 10**8 and parse_size(1234) == 1234
    with pytest.raises(ValueError, match="5GB"):
        parse_size("5 parsecs")


def test_sharded_max_shard_size_string(tiny_llada, tmp_path):
    cfg, params = tiny_llada
    convert.save_hf(tmp_path, cfg, params, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all((tmp_path / f).stat().st_size <= 100_000 for f in files)
    assert not list(tmp_path.glob("*.tmp"))
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["architectures"] == ["LLaDAModelLM"] and "AutoModel" in hf["auto_map"]
    cfg2, params2 = convert.load_hf(tmp_path)
    assert cfg2 == cfg and _same(params, params2)
    # dtype=None keeps the stored dtype; a bf16 export loads back as bf16.
    convert.save_hf(tmp_path / "bf16", cfg, params, dtype=jnp.bfloat16)
    _, p16 = convert.load_hf(tmp_path / "bf16", None)
    assert jax.tree.leaves(p16)[0].dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(2, 4, 1), (1, 2, 4)])
def test_load_onto_mesh_gives_golden_logits(tiny_llada_dir, golden, shape):
    mesh = sharding.make_mesh(*shape)
    cfg, params = convert.load_hf(tiny_llada_dir, jnp.float32, mesh)
    want = sharding.tree_shardings(mesh, transformer.param_logical_axes(cfg))
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        assert p.sharding.is_equivalent_to(s, p.ndim)
    case = golden("forward_plain")
    logits = transformer.forward(params, cfg, case["input_ids"])
    np.testing.assert_allclose(np.asarray(logits), case["logits"], atol=5e-5, rtol=0)


def test_cli_hf_to_orbax_to_hf_is_bit_identical(tiny_llada_dir, tmp_path):
    orb, hf = tmp_path / "orbax", tmp_path / "hf"
    assert (
        cli_main(["convert", "hf-to-orbax", str(tiny_llada_dir), str(orb), "--mesh", "2,4,1"]) == 0
    )
    cfg, params = params_checkpoint.load_params(orb)
    ref_cfg, ref = convert.load_hf(tiny_llada_dir)
    assert cfg == ref_cfg and _same(params, ref)
    assert cli_main(["convert", "orbax-to-hf", str(orb), str(hf), "--max-shard-size", "60KB"]) == 0
    assert (hf / "model.safetensors.index.json").exists()
    names, read = convert._tensor_reader(tiny_llada_dir / "model.safetensors")
    back = safetensors_io.scan_dir(hf)
    assert sorted(back) == sorted(names)
    for name in names:
        got = safetensors_io.read_tensor(back[name])
        assert got.dtype == read(name).dtype and np.array_equal(got, read(name))
    # Converting into a directory that already holds checkpoints is refused.
    assert cli_main(["convert", "hf-to-orbax", str(tiny_llada_dir), str(orb)]) == 2


@pytest.fixture
def sharded_copy(tiny_llada, tmp_path):
    cfg, params = tiny_llada
    convert.save_hf(tmp_path / "sharded", cfg, params, max_shard_size="60KB")
    return tmp_path / "sharded"


def _shards(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def test_missing_shard_names_file_and_fix(sharded_copy):
    gone = _shards(sharded_copy)[1]
    (sharded_copy / gone).unlink()
    with pytest.raises(safetensors_io.CheckpointFormatError) as e:
        convert.load_hf(sharded_copy)
    msg = str(e.value)
    assert gone in msg and "missing" in msg
    assert "model.safetensors.index.json" in msg and "re-download" in msg


def test_truncated_shard_names_file_and_fix(sharded_copy):
    shard = sharded_copy / _shards(sharded_copy)[-1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(safetensors_io.CheckpointFormatError, match="truncated") as e:
        convert.load_hf(sharded_copy)
    assert str(shard) in str(e.value) and "re-download" in str(e.value)


# --- issue 21: refused conversions change nothing; outputs are marked and written atomically ---
import os  # noqa: E402
import signal  # noqa: E402

from lladax.cli import convert_cmd  # noqa: E402


@pytest.fixture
def places(ckpt_copy, tmp_path):
    """SRC (a HF copy), a training-run-like directory, and an earlier convert output."""
    run = tmp_path / "run"
    (run / "checkpoints" / "4").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 4}\n')
    (run / "tokenizer.model").write_bytes(b"trained")
    old = tmp_path / "old"
    assert cli_main(["convert", str(ckpt_copy), str(old), "--no-progress"]) == 0
    (tmp_path / "file.txt").write_text("x")
    return {"src": ckpt_copy, "run": run, "old": old, "tmp": tmp_path}


CONVERT_REFUSALS = [
    (["{src}", "{src}"], "is SRC {src} or lies inside it"),  # item 2
    (["{src}", "{src}/out"], "lies inside it"),
    (["{run}/checkpoints/4", "{run}"], "lies inside it"),
    (["{src}", "{run}"], "DST {run} is not empty and is not a converted model"),  # item 3
    (["{src}", "{run}", "--overwrite"], "is not empty and is not a converted model"),
    (["{src}", "{old}"], "already holds a converted model: pass a new directory, or --overwrite"),
    (["{src}", "{tmp}/file.txt"], "is a file, not a directory"),
    (["{src}", "{tmp}/new", "--max-shard-size", "5 parsecs"], "--max-shard-size: cannot read"),
    (["{src}", "{tmp}/new", "--max-shard-size", "0.1B"], "must be at least one byte"),
    (["hf-to-orbax", "{src}", "{tmp}/new", "--max-shard-size", "1GB"], "drop it"),
    (["{src}", "{tmp}/new", "--mesh", "1,x"], "--mesh '1,x': write three sizes"),
    (["{src}", "{tmp}/new", "--mesh", "0,1,1"], "each >= 1"),
    (["{src}", "{tmp}/new", "--mesh", "3,1,1"], "needs 3 devices, but 8 are available"),
    (["{tmp}/absent", "{tmp}/new"], "SRC {tmp}/absent does not exist"),
    (["{tmp}/file.txt", "{tmp}/new"], "SRC {tmp}/file.txt is a file"),
    (["orbax-to-hf", "{src}", "{tmp}/new"], "has no checkpoints/"),
    (["{run}", "{tmp}/new"], "is a `lladax train` workdir"),
    (["hf-to-orbax", "{src}"], "takes SRC and DST"),
]


@pytest.mark.parametrize("argv, words", CONVERT_REFUSALS)
def test_convert_refusals_change_nothing(places, cli_error, argv, words):
    fill = {k: str(v) for k, v in places.items()}
    argv = [a.format(**fill) for a in argv]
    line = cli_error(["convert", *argv], untouched=[places["tmp"]])
    assert words.format(**fill) in line
    assert not (places["tmp"] / "new").exists()


@pytest.mark.parametrize(
    "entry, words",
    [
        ("../outside.safetensors", "lies outside"),  # item 10
        ("{tmp}/outside.safetensors", "lies outside"),
        ("link.safetensors", "lies outside"),  # a link leading out of the directory
        (7, "is not a file name"),
    ],
)
def test_index_naming_a_shard_outside_the_directory_is_refused(
    sharded_copy, cli_error, entry, words
):
    tmp = sharded_copy.parent
    first = _shards(sharded_copy)[0]
    shutil.copyfile(sharded_copy / first, tmp / "outside.safetensors")
    (sharded_copy / "link.safetensors").symlink_to(tmp / "outside.safetensors")
    index_file = sharded_copy / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    entry = entry.format(tmp=tmp) if isinstance(entry, str) else entry
    index["weight_map"] = {n: (entry if f == first else f) for n, f in index["weight_map"].items()}
    index_file.write_text(json.dumps(index))
    line = cli_error(["convert", sharded_copy, tmp / "out"], untouched=[tmp])
    assert words in line and "model.safetensors.index.json" in line


def test_hf_cache_snapshot_links_are_followed(tiny_llada_dir, tmp_path):
    """The Hugging Face cache keeps snapshots/<rev>/model.safetensors -> ../../blobs/<sha>."""
    snap = tmp_path / "models--x" / "snapshots" / "abc"
    blobs = tmp_path / "models--x" / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    shutil.copyfile(tiny_llada_dir / "model.safetensors", blobs / "sha")
    (snap / "model.safetensors").symlink_to("../../blobs/sha")
    for name in ("config.json", "special_tokens.json"):
        shutil.copyfile(tiny_llada_dir / name, snap / name)
    assert sorted(safetensors_io.scan_dir(snap)) == sorted(safetensors_io.scan_dir(tiny_llada_dir))


def test_convert_output_is_marked_replaced_only_with_overwrite(places, capsys):
    src, old = places["src"], places["old"]
    marker = json.loads((old / convert.EXPORT_MARKER).read_text())
    assert marker["direction"] == "hf-to-hf" and marker["source"] == str(src.resolve())
    assert convert.load_hf(old)[0] == convert.load_hf(src)[0]  # the marker is ignored
    # --overwrite replaces an earlier output, even with another format (HF -> Orbax).
    assert cli_main(["convert", "hf-to-orbax", str(src), str(old), "--overwrite"]) == 0
    assert (old / "checkpoints").is_dir() and not (old / "config.json").exists()
    assert json.loads((old / convert.EXPORT_MARKER).read_text())["direction"] == "hf-to-orbax"
    assert params_checkpoint.load_params(old)[0] == convert.load_hf(src)[0]
    assert sorted(p.name for p in places["tmp"].iterdir()) == ["ckpt", "file.txt", "old", "run"]


@pytest.mark.parametrize("how", ["error", "sigterm"])
def test_interrupted_convert_keeps_the_old_output(places, monkeypatch, how):
    """A failure or SIGTERM while writing leaves DST exactly as it was and no staging dir;
    a staging dir left by a killed (kill -9) conversion is removed by the next one."""
    src, old, tmp = places["src"], places["old"], places["tmp"]
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    stale = tmp / ".old.lladax-convert-99999999.tmp"  # no such pid
    stale.mkdir()

    def interrupt(path, info):
        assert (path / "model.safetensors").exists() and path != old  # written into staging
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        raise RuntimeError("disk full")

    monkeypatch.setattr(convert, "write_export_marker", interrupt)
    with pytest.raises(SystemExit if how == "sigterm" else RuntimeError):
        cli_main(["convert", str(src), str(old), "--overwrite"])
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp.iterdir()) == ["ckpt", "file.txt", "old", "run"]
    assert signal.getsignal(signal.SIGTERM) is not convert_cmd._raise_exit
    if how == "error":  # parent directories made for a new DST go too
        with pytest.raises(RuntimeError):
            cli_main(["convert", str(src), str(tmp / "a" / "b" / "new")])
        assert not (tmp / "a").exists()


def _word_tokenizer(path, size: int) -> None:
    """A tokenizer.json with `size` ids and LLaDA's special tokens at the tiny model's ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    special = {
        "<unk>": 0,
        "<|startoftext|>": 1,
        "<|endoftext|>": 2,
        "<|eot_id|>": 3,
        "<|mdm_mask|>": 310,
    }
    vocab = {f"w{i}": i for i in range(size) if i not in special.values()} | special
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def test_tokenizer_flag_for_hf_dir_without_one(ckpt_copy, tmp_path, cli_error):
    """Item 12: the error names --tokenizer, the flag reaches the loader, and a directory holding
    a tokenizer.json works (checked without sampling: the mismatch below proves the file used)."""
    from lladax.store.loading import load_model

    _word_tokenizer(tmp_path / "tokenizer.json", 311)
    _word_tokenizer(tmp_path / "big.json", 400)
    argv = ["sample", "--checkpoint", ckpt_copy, "--prompt", "w5 w6"]
    assert (
        "has no tokenizer (tokenizer.json or tokenizer.model): pass --tokenizer PATH"
        in cli_error(argv, untouched=[tmp_path])
    )
    assert f"the tokenizer ({tmp_path / 'big.json'}) has 400 ids" in cli_error(
        [*argv, "--tokenizer", tmp_path / "big.json"], untouched=[tmp_path]
    )
    cfg, _, tok = load_model(str(ckpt_copy), tokenizer=str(tmp_path))
    assert tok.name == str(tmp_path / "tokenizer.json") and tok.mask_id == cfg.mask_token_id
