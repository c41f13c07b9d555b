"""Loading `configs/*.py` files and applying `--config.a.b=value` overrides, strictly."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

import ml_collections


class ConfigFileError(ValueError):
    """A config file or override is invalid; the message says which and how to fix it."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/file.py` or `path/to/file.py:arg` -> the file's get_config() / get_config(arg)."""
    path_str, _, arg = spec.partition(":")
    path = Path(path_str)
    if not path.is_file():
        raise ConfigFileError(f"config file {path} does not exist: pass e.g. configs/tiny.py")
    module_spec = importlib.util.spec_from_file_location(f"lladax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"{path} defines no get_config(): see configs/tiny.py")
    return module.get_config(arg) if arg else module.get_config()


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigFileError(f"expected true/false, got {text!r}")
    if isinstance(current, str) or current is None:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigFileError(f"cannot parse {text!r} as {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if type(value) is not type(current):
        raise ConfigFileError(f"expected {type(current).__name__}, got {text!r}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]
                    ) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=value` strings; unknown keys and wrong types are errors."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ConfigFileError(f"unrecognised argument {item!r}: overrides look like "
                                  "--config.train.steps=100")
        dotted, _, text = item[len("--config."):].partition("=")
        node = config
        keys = dotted.split(".")
        for depth, key in enumerate(keys):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                where = ".".join(keys[:depth]) or "<top>"
                valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ConfigFileError(f"unknown config key {dotted!r} (no {key!r} under {where}; "
                                      f"valid: {valid})")
            if depth < len(keys) - 1:
                node = node[key]
        try:
            node[keys[-1]] = _parse_value(text, node[keys[-1]])
        except ConfigFileError as e:
            raise ConfigFileError(f"--config.{dotted}: {e}") from None
    return config
