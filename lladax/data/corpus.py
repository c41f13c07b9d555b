"""The embedded default corpus: text that ships with Python itself.

`pydoc_data.topics` plus the docstrings of a fixed list of pure-Python standard-library modules,
read from their source with `ast` (nothing is imported, so the text cannot depend on live state
such as pytest's patches). Deterministic for a given Python build; a few MB of English technical
prose and code examples, so `lladax train` works offline on a fresh machine.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import json
import re
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import Any

CORPUS_VERSION = 1  # bump when the extraction below changes (invalidates caches)

# Pure-Python standard-library modules whose import has no side effects (no `this`, `antigravity`,
# tkinter, idlelib, turtle, webbrowser, rlcompleter, deprecated modules). Order is fixed; modules
# missing from a Python build are skipped.
_STDLIB_MODULE_NAMES = """
builtins abc argparse array ast asyncio.base_events asyncio.events asyncio.exceptions
asyncio.futures asyncio.locks asyncio.protocols asyncio.queues asyncio.runners
asyncio.selector_events asyncio.streams asyncio.taskgroups asyncio.tasks asyncio.timeouts
asyncio.transports asyncio.unix_events atexit base64 bdb binascii bisect bz2 calendar cmath cmd
code codecs codeop collections colorsys compileall concurrent.futures._base
concurrent.futures.process concurrent.futures.thread configparser contextlib copy copyreg
cProfile csv ctypes dataclasses _pydatetime dbm dbm.dumb _collections_abc difflib dis doctest
email.charset email.errors email.feedparser email.generator email.header email.headerregistry
email.iterators email.message email.mime.base email.mime.multipart email.mime.text email.parser
email.policy email.utils enum faulthandler filecmp fileinput fnmatch fractions ftplib functools
gc genericpath getopt gettext glob graphlib gzip hashlib heapq hmac html html.parser
http.client http.cookiejar http.cookies http.server imaplib importlib importlib.abc
importlib.metadata importlib.resources importlib.resources.abc importlib.util inspect _pyio
ipaddress itertools json json.decoder json.encoder keyword linecache locale logging
logging.config logging.handlers lzma mailbox marshal math mimetypes mmap modulefinder
multiprocessing.connection multiprocessing.managers multiprocessing.pool
multiprocessing.process multiprocessing.shared_memory netrc ntpath numbers operator optparse os
pathlib pdb pickle pickletools pkgutil platform plistlib poplib posixpath pprint profile pstats
py_compile pyclbr pydoc _pydecimal queue quopri random re reprlib runpy sched secrets select
selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl statistics string
stringprep struct subprocess symtable sys sysconfig tabnanny tarfile tempfile textwrap
threading _threading_local time timeit token tokenize trace traceback tracemalloc types typing
unicodedata unittest.case unittest.loader unittest.mock unittest.result unittest.runner
unittest.suite urllib.error urllib.parse urllib.request urllib.robotparser uuid warnings wave
weakref wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.util wsgiref.validate
xml.dom.expatbuilder xml.dom.minidom xml.etree.ElementTree xml.sax.handler xml.sax.saxutils
xml.sax.xmlreader xmlrpc.client xmlrpc.server zipapp zipfile zlib zoneinfo
"""
STDLIB_MODULES: tuple[str, ...] = tuple(_STDLIB_MODULE_NAMES.split())
_MIN_DOC_CHARS = 40
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class _Elided:
    __repr__ = lambda self: "..."


def _stable_default(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_stable_default(v) for v in value)
    return isinstance(value, type(None) | bool | int | float | complex | str | bytes)


def _signature(obj: Any) -> str:
    """``str(inspect.signature(obj))`` with non-literal defaults shown as ``...`` (their reprs
    can depend on process state, e.g. a list of logging handlers)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    params = [
        p if p.default is p.empty or _stable_default(p.default) else p.replace(default=_Elided())
        for p in sig.parameters.values()
    ]
    try:
        return _ADDRESS.sub("", str(sig.replace(parameters=params)))
    except (TypeError, ValueError):
        return ""


def _clean(doc: Any) -> str:
    if not isinstance(doc, str):
        return ""
    return _ADDRESS.sub("", inspect.cleandoc(doc)).strip()


def _source_file(name: str) -> Path | None:
    """The ``.py`` file of a pure-Python stdlib module (found without importing it)."""
    base = Path(sysconfig.get_paths()["stdlib"]).joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _ast_documents(name: str, path: Path) -> list[str]:
    """Docstrings read from the module's source with `ast` (no import, so no runtime state)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []

    def signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
        return f"({ast.unparse(node.args)}){returns}"

    docs = []
    if len(doc := _clean(ast.get_docstring(tree))) >= _MIN_DOC_CHARS:
        docs.append(f"Module {name}\n\n{doc}")
    for node in tree.body:
        text = ""
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            parts = []
            if doc := _clean(ast.get_docstring(node)):
                parts.append(
                    f"class {node.name}({bases})\n{doc}" if bases else f"class {node.name}\n{doc}"
                )
            for item in node.body:
                if (
                    isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and (not item.name.startswith("_") or item.name == "__init__")
                    and (doc := _clean(ast.get_docstring(item)))
                ):
                    parts.append(f"{node.name}.{item.name}{signature(item)}\n{doc}")
            text = "\n\n".join(parts)
        elif (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and not node.name.startswith("_")
            and (doc := _clean(ast.get_docstring(node)))
        ):
            text = f"{node.name}{signature(node)}\n{doc}"
        if len(text) >= _MIN_DOC_CHARS:
            docs.append(text)
    return docs


def _builtin_documents(name: str) -> list[str]:
    """Docstrings of a C module: its builtin functions and classes (Python functions that a host
    program may have patched in, e.g. a test runner's ``sys.unraisablehook``, are skipped)."""
    try:
        module = importlib.import_module(name)
    except Exception:  # a module missing from this Python build
        return []
    docs = []
    if len(doc := _clean(module.__doc__)) >= _MIN_DOC_CHARS:
        docs.append(f"Module {name}\n\n{doc}")
    for attr, obj in sorted(vars(module).items()):
        obj = getattr(module, f"__{attr}__", obj)  # sys.__excepthook__ etc.: the originals
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            parts = []
            if doc := _clean(obj.__doc__):
                parts.append(f"class {attr}{_signature(obj)}\n{doc}")
            for meth_name, meth in vars(obj).items():  # definition order
                if meth_name.startswith("_") and meth_name != "__init__":
                    continue
                if (
                    inspect.isroutine(meth)
                    and not inspect.isfunction(meth)
                    and (doc := _clean(getattr(meth, "__doc__", None)))
                ):
                    parts.append(f"{attr}.{meth_name}{_signature(meth)}\n{doc}")
            text = "\n\n".join(parts)
        elif inspect.isbuiltin(obj):
            doc = _clean(obj.__doc__)
            text = f"{attr}{_signature(obj)}\n{doc}" if doc else ""
        else:
            continue
        if len(text) >= _MIN_DOC_CHARS:
            docs.append(text)
    return docs


def _module_documents(name: str) -> list[str]:
    """Docstring documents of one module: the module, each function, each class (+ methods)."""
    path = _source_file(name)
    return _ast_documents(name, path) if path else _builtin_documents(name)


@functools.cache
def _embedded_documents() -> tuple[str, ...]:
    import pydoc_data.topics

    docs: list[str] = []
    for key in sorted(pydoc_data.topics.topics):
        docs.append(pydoc_data.topics.topics[key].strip())
    with warnings.catch_warnings():  # e.g. DeprecationWarnings of C-module attribute access
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            docs.extend(_module_documents(name))
    seen: set[str] = set()
    unique = []
    for doc in docs:
        if doc and doc not in seen:
            seen.add(doc)
            unique.append(doc)
    return tuple(unique)


def embedded_fingerprint() -> str:
    """Identifies the embedded corpus without building it (~2 s): the extraction version, the
    exact Python build and the module list. Used in cache keys."""
    key = [CORPUS_VERSION, sys.version, sys.platform, STDLIB_MODULES]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def embedded_documents() -> list[str]:
    """The embedded corpus: pydoc topics + stdlib docstrings, deduplicated, fixed order.

    Deterministic across runs and machines with the same Python build (memory addresses are
    stripped from reprs). A few MB of English technical prose and code examples.
    """
    return list(_embedded_documents())
