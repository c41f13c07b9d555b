"""Loading `configs/*.py` files and applying `--config.a.b=value` overrides, strictly."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
from pathlib import Path
from typing import Any

import ml_collections


class ConfigFileError(ValueError):
    """A config file or override is invalid; the message says which and how to fix it."""


def _where(path: Path, error: BaseException) -> str:
    """`FILE:LINE` of the innermost traceback frame inside the config file (`FILE` alone when the
    error was raised outside it, e.g. a get_config() called with the wrong arguments)."""
    target = path.resolve()
    line = None
    tb = error.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == target:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{path}:{line}" if line is not None else str(path)


def _oneline(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else ""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/file.py` or `path/to/file.py:arg` -> the file's get_config() / get_config(arg).

    Every failure is one ConfigFileError line: a missing file, a syntax error
    (`FILE:LINE: syntax error: MSG`), any exception while the file or its get_config runs
    (`FILE:LINE: TypeName: msg`, LINE the innermost frame inside the file), no get_config, or a
    get_config that does not return a ConfigDict.
    """
    path_str, _, arg = spec.partition(":")
    path = Path(path_str)
    if not path.exists():
        raise ConfigFileError(f"config file {path} does not exist: pass e.g. configs/tiny.py")
    if not path.is_file():
        raise ConfigFileError(
            f"config file {path} is not a file: pass a Python file such as configs/tiny.py"
        )
    # SourceFileLoader loads any file name (spec_from_file_location gives None for a non-.py).
    loader = importlib.machinery.SourceFileLoader(f"lladax_config_{path.stem}", str(path))
    module_spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(module_spec)
    try:
        source = path.read_bytes()
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise ConfigFileError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except (OSError, ValueError) as e:  # unreadable, or NUL bytes / undecodable source
        raise ConfigFileError(
            f"{path}: cannot read it as Python ({_oneline(e)}): pass a "
            "config file such as configs/tiny.py"
        ) from None
    try:
        exec(code, module.__dict__)
    except Exception as e:
        raise ConfigFileError(f"{_where(path, e)}: {type(e).__name__}: {_oneline(e)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigFileError(f"{path} defines no get_config(): see configs/tiny.py")
    try:
        config = get_config(arg) if arg else get_config()
    except Exception as e:
        raise ConfigFileError(f"{_where(path, e)}: {type(e).__name__}: {_oneline(e)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigFileError(
            f"{path}: get_config() returned {type(config).__name__}, not an "
            "ml_collections.ConfigDict: return one (see configs/tiny.py)"
        )
    return config


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigFileError(f"expected true/false, got {text!r}")
    if isinstance(current, str):
        return text
    if current is None:  # an optional field (model.block_size, eot_token_id): a number or text
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        return value if value is None or isinstance(value, int | float) else text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigFileError(f"cannot parse {text!r} as {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if type(value) is not type(current):
        raise ConfigFileError(f"expected {type(current).__name__}, got {text!r}")
    return value


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: list[str]
) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=value` strings; unknown keys and wrong types are errors."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ConfigFileError(
                f"unrecognised argument {item!r}: overrides look like --config.train.steps=100"
            )
        dotted, _, text = item[len("--config.") :].partition("=")
        node = config
        keys = dotted.split(".")
        for depth, key in enumerate(keys):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                where = ".".join(keys[:depth]) or "<top>"
                valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ConfigFileError(
                    f"unknown config key {dotted!r} (no {key!r} under {where}; valid: {valid})"
                )
            if depth < len(keys) - 1:
                node = node[key]
        try:
            node[keys[-1]] = _parse_value(text, node[keys[-1]])
        except ConfigFileError as e:
            raise ConfigFileError(f"--config.{dotted}: {e}") from None
    return config
