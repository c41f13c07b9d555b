"""colab/*.ipynb run end to end (papermill, a fresh CPU kernel, a temp dir) with small parameters.

Any cell error fails the test. The quickstart trains `tiny` for a few steps, so its outputs must
hold the live loss plot (a PNG) and the canvas filling in; llada_8b and eval run on the tiny
HF fixture, given a byte-level `tokenizer.json` with LLaDA's special tokens at the fixture's ids
(the fixture ships no tokenizer). The committed notebooks must carry no outputs.

Cost (2-core VM, measured as CPU time because the machine was shared): quickstart ~50 s with
the tokenizer already cached, llada_8b ~25 s, eval ~30 s — kernel start, imports and XLA
compiles; the tiny models' compute is negligible.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill", reason="the `notebooks` extra runs the notebooks")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = ("quickstart", "llada_8b", "eval")
BUDGET_S = 600  # per cell: a hang guard only; wall time on a shared machine says little


def _tokenizer_json(path: Path, vocab_size: int, specials: dict[str, int]) -> None:
    """A byte-level BPE `tokenizer.json` (no merges) with `specials` at the given ids and
    reserved filler tokens, exactly `vocab_size` ids: every text round-trips."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = dict(specials.items())
    free = (i for i in range(vocab_size) if i not in specials.values())
    for ch in byte_chars:
        vocab[ch] = next(free)
    for i in free:
        vocab[f"<|reserved_{i}|>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    tok.save(str(path / "tokenizer.json"))


@pytest.fixture(scope="module")
def tiny_hf_dir(tiny_llada_dir, tmp_path_factory) -> Path:
    """The tiny fixture plus a tokenizer.json whose special ids match its config."""
    import json

    d = tmp_path_factory.mktemp("tiny_hf") / "tiny_llada"
    shutil.copytree(tiny_llada_dir, d, ignore=shutil.ignore_patterns("golden"))
    for p in d.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    d.chmod(0o755)
    config = json.loads((d / "config.json").read_text())
    ids = json.loads((d / "special_tokens.json").read_text())
    _tokenizer_json(
        d,
        config["vocab_size"],
        {
            "<|startoftext|>": ids["bos_token_id"],
            "<|endoftext|>": ids["eos_token_id"],
            "<|eot_id|>": ids["eot_token_id"],
            "<|mdm_mask|>": ids["mask_token_id"],
            "<|start_header_id|>": 5,
            "<|end_header_id|>": 6,
        },
    )
    return d


@pytest.fixture(autouse=True)
def _kernel_env(monkeypatch):
    """The kernel inherits this process's environment (LLADAX_CACHE is set by conftest)."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")


def _run(name: str, tmp_path: Path, **parameters) -> tuple[nbformat.NotebookNode, float]:
    out = tmp_path / f"{name}.out.ipynb"
    t0 = time.perf_counter()
    papermill.execute_notebook(
        str(COLAB / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=BUDGET_S,
    )
    return nbformat.read(out, as_version=4), time.perf_counter() - t0


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append(o["text"])
            elif "data" in o and "text/plain" in o["data"]:
                parts.append(o["data"]["text/plain"])
    return "".join(parts)


BASE = dict(install=False, repo_dir=str(ROOT))


def test_quickstart(tmp_path):
    nb, _ = _run(
        "quickstart",
        tmp_path,
        **BASE,
        config="tiny",
        steps=10,
        more_steps=0,
        gen_length=16,
        block_length=8,
        plot_every_s=0.5,
    )
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "no loss plot in the outputs"
    text = _text(nb)
    masks = [int(m) for m in re.findall(r"masks left:\s+(\d+)", text)]
    assert masks[0] > 0 and masks[-1] == 0 and masks == sorted(masks, reverse=True), masks
    generated = re.search(r"generated: '(.*)'", text)
    assert generated and generated.group(1).startswith("The list type"), text[-500:]
    assert "the restored params give the identical sample" in text
    assert "resumed" not in text  # more_steps=0: resuming is test_train's (and CPU time's)
    assert (tmp_path / "runs" / "quickstart" / "checkpoints").is_dir()


def test_llada_8b_on_the_tiny_fixture(tmp_path, tiny_hf_dir):
    nb, _ = _run(
        "llada_8b",
        tmp_path,
        **BASE,
        extras="",
        model_dir=str(tiny_hf_dir),
        orbax_dir=str(tmp_path / "orbax"),
        dtype="float32",
        gen_length=8,
        steps=8,
        block_length=4,
        mc_num=4,
        mc_batch=4,
        mc_choices=["a", "bc", "d"],
    )
    text = _text(nb)
    assert "converted to" in text and "restored" in text
    assert text.count("assistant> ") == 2
    assert len(re.findall(r"log-likelihood +-?\d+\.\d+ ± \d+\.\d+", text)) == 3
    assert re.search(r"early exit: +\d+ evaluations", text)
    assert re.search(r"dual cache \+ threshold 0.9: +\d+ evaluations", text)
    assert (tmp_path / "orbax" / "checkpoints").is_dir()
    assert (tmp_path / "orbax" / "tokenizer.json").is_file()


def test_eval_on_the_tiny_fixture(tmp_path, tiny_hf_dir):
    pytest.importorskip("lm_eval")
    nb, _ = _run(
        "eval",
        tmp_path,
        **BASE,
        extras="",
        checkpoint=str(tiny_hf_dir),
        tasks="",
        model_args="dtype=float32,mc_num=4,batch_size=4,gen_length=8,steps=8,block_length=8",
    )
    text = _text(nb)
    assert "my_mc" in text and "my_gen" in text and "acc" in text


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_clean_and_parameterised(name):
    nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "install = True" in tagged[0].source
