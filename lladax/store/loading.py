"""Loading a model for inference: a `lladax train` run (Orbax) or a Hugging Face LLaDA directory
-> (ModelConfig, params, tokenizer), for `lladax sample / chat / eval`, the lm-eval adapter and
the benchmarks. Paths are checked first (`check_model_path`: no JAX, no weights read), each
error naming the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lladax.data.tokenizer import check_compatible, load_tokenizer
from lladax.store import convert, params_checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # looked up in this order


def _tokenizer_in(directory: Path) -> Path | None:
    return next((directory / n for n in TOKENIZER_FILES if (directory / n).is_file()), None)


def check_model_path(
    path: str, tokenizer: str | None = None, *, flag: str = "--tokenizer"
) -> tuple[Path, bool, Path]:
    """Check --checkpoint / --tokenizer without loading anything (no JAX): returns
    (checkpoint dir, is_hf, tokenizer file). `flag` is how the caller's user sets the tokenizer
    (named in the error when the checkpoint has none)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"checkpoint {p} does not exist: pass a `lladax train` workdir "
            "or a Hugging Face LLaDA directory"
        )
    if not p.is_dir():
        raise ValueError(
            f"checkpoint {p} is a file, not a directory: pass the `lladax train` "
            "workdir or the Hugging Face directory (the one holding config.json)"
        )
    is_hf, is_run = (p / "config.json").is_file(), (p / "checkpoints").is_dir()
    if is_hf and is_run:
        # Loading either would be a guess: the other may be what the user trained or converted.
        raise ValueError(
            f"checkpoint {p} holds both config.json (a Hugging Face model) and "
            "checkpoints/ (a `lladax train` run): refusing to guess; move the HF "
            "files (config.json, *.safetensors) into a directory of their own"
        )
    if not (is_hf or is_run):
        raise ValueError(
            f"checkpoint {p} holds neither config.json (a Hugging Face LLaDA model) "
            "nor checkpoints/ (a `lladax train` run): pass one of those directories"
        )
    if tokenizer is None:
        tok = _tokenizer_in(p)
        if tok is None:
            raise FileNotFoundError(
                f"checkpoint {p} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): pass "
                f"{flag} PATH (the model's tokenizer.json / tokenizer.model, or a directory "
                "holding one)"
            )
        return p, is_hf, tok
    t = Path(tokenizer).expanduser()
    if not t.exists():
        raise FileNotFoundError(
            f"{flag} {t} does not exist: pass a tokenizer.json / "
            "tokenizer.model file or a directory holding one"
        )
    if t.is_dir():
        tok = _tokenizer_in(t)
        if tok is None:
            raise FileNotFoundError(
                f"{flag} {t} holds neither tokenizer.json nor "
                "tokenizer.model: pass the tokenizer file or its directory"
            )
        return p, is_hf, tok
    if t.suffix not in (".json", ".model"):
        raise ValueError(
            f"{flag} {t} is neither a .json (Hugging Face) nor a .model "
            "(sentencepiece) tokenizer file: pass tokenizer.json or tokenizer.model"
        )
    return p, is_hf, t


def load_model(
    path: str, dtype: str | None = None, tokenizer: str | None = None, *, flag: str = "--tokenizer"
) -> tuple[Any, Any, Any]:
    """(cfg, params, tokenizer) from a run directory (Orbax) or a Hugging Face LLaDA directory.

    Paths are checked (`check_model_path`) and the tokenizer loaded before any weight is read.
    """
    import jax.numpy as jnp

    p, is_hf, tok_path = check_model_path(path, tokenizer, flag=flag)
    tok = load_tokenizer(tok_path)
    if is_hf:
        cfg, params = convert.load_hf(p, jnp.dtype(dtype or "float32"))
    else:
        cfg, params = params_checkpoint.load_params(p, dtype=dtype)
    check_compatible(tok, cfg)
    return cfg, params, tok
