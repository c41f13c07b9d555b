"""The diffusion samplers' options, owned in one place: `SamplerConfig`.

Every caller builds one: `sampling.generate` / `fast_sampling.generate` from their keywords, the
CLI from its flags (`lladax.cli.common.sampler_config_from_args`), lm-eval from its model args
(`lladax.eval.model_args`), the eval configs, the experiments and the instruction evals directly.
Its field defaults are THE defaults; `REMASKING` and `CACHE_MODES` are the choices every parser
offers; `check` holds every rule once, each error worded for the surface that was used
(`KEYWORDS`, `FLAGS`, `MODEL_ARG`: `steps=0`, `--steps 0`, `model arg steps=0`). For jit it
splits into `static()` (hashable, what changes the compiled program) and `traced()` (a pytree of
scalars: other values reuse the program). No JAX here: the CLI checks its flags before JAX starts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from types import NoneType
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Spelling:
    """How a surface names an option in its one-line errors.

    `number` is how a bound on a real option is worded: keyword callers may pass any object
    ("a number"), argparse reads nan and inf ("a finite number"), model args are already typed
    finite numbers (the bound alone).
    """

    name: Callable[[str], str]  # "gen_length" -> "gen_length" | "--gen-length"
    given: Callable[[str, Any], str]  # ("steps", 0) -> "steps=0" | "--steps 0"
    lead: str  # starts a sentence about one value: "" | "model arg "
    number: str


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def flag(name: str) -> str:
    """The CLI flag of a sampler option: gen_length -> --gen-length."""
    return "--" + name.replace("_", "-")


KEYWORDS = Spelling(lambda n: n, lambda n, v: f"{n}={_show(v)}", "", "a number ")
FLAGS = Spelling(flag, lambda n, v: f"{flag(n)} {_show(v)}", "", "a finite number ")
MODEL_ARG = Spelling(lambda n: n, lambda n, v: f"{n}={_show(v)}", "model arg ", "")


@dataclasses.dataclass(frozen=True)
class StaticOptions:
    """The hashable part of a `SamplerConfig` (a static jit argument): what changes the program.

    steps and block_length are resolved; `cache` is None for the exact sampler. Call options
    of `sampling`: return_history (the scan stacks every canvas) and window (False: every forward
    runs the whole canvas instead of the block window; the same tokens, for tests).
    """

    steps: int
    gen_length: int
    block_length: int
    sample: bool  # temperature > 0: Gumbel noise is drawn
    guided: bool  # cfg_scale > 0: a 2B batch
    remasking: str
    cache: str | None
    return_history: bool = False
    window: bool = True


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Every option of the diffusion samplers (upstream generate.py; reference.md §4 and §9).

    gen_length    tokens generated after the prompt: the canvas is [B, P + gen_length]
    steps         reverse steps in all, a multiple of the number of blocks (None: gen_length,
                  one token per step); for fast decoding the per-block schedule and the most
                  steps a block takes
    block_length  semi-autoregressive block size, dividing gen_length (None: gen_length, one
                  block = pure diffusion)
    temperature   0: argmax; > 0: a Gumbel-max sample of softmax(logits / T) (needs an rng)
    cfg_scale     classifier-free guidance (0: off; > 0 runs a 2B batch)
    remasking     "low_confidence" commits the most confident proposals, "random" random ones
                  (needs an rng)
    logits_eos_inf          never propose EOS
    confidence_eos_eot_inf  EOS / EoT get no confidence: committed last (upstream's flag)
    early_exit    freeze a row once its answer is final (an EOS/EoT in the generated region with
                  no mask before it: committed tokens never change) and run no forward once every
                  row is frozen. The canvas through the first EOS/EoT is the full run's; masks
                  left after it come back as EOS. None: the model kind's default
                  (`EARLY_EXIT_BY_KIND`; block diffusion stops a row at its first completed block
                  holding an EOS/EoT, `block_sampling`)
    cache         None: the exact sampler (`sampling`). Fast decoding (`fast_sampling`,
                  Fast-dLLM) with "none" (exact forwards), "prefix" or "dual": keys/values of the
                  block start's forward serve what is left of (prefix), or also right of (dual),
                  the block for its other steps (stale within a block). Block diffusion's cache
                  is exact: "none" runs its uncached reference, any other value the cache
    threshold     fast decoding and block diffusion: also commit every block mask with
                  confidence >= threshold (Fast-dLLM: 0.9; above 1 never)
    factor        Fast-dLLM's factor rule instead (rank n, 1-based, commits if
                  (n + 1)(1 - c_n) < factor)

    Building one checks it (`check`): a SamplerConfig is always valid for some model kind;
    `for_kind` resolves the kind's defaults and checks the rules that depend on it.
    """

    gen_length: int = 64
    steps: int | None = None
    block_length: int | None = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    early_exit: bool | None = None
    cache: str | None = None
    threshold: float | None = None
    factor: float | None = None

    REMASKING: typing.ClassVar[tuple[str, ...]] = ("low_confidence", "random")
    CACHE_MODES: typing.ClassVar[tuple[str, ...]] = ("none", "prefix", "dual")
    FAST_OPTIONS: typing.ClassVar[tuple[str, ...]] = ("cache", "threshold", "factor")
    # Fast-dLLM's setting, what `--fast` alone means: the dual cache and threshold 0.9
    FAST_CACHE: typing.ClassVar[str] = "dual"
    FAST_THRESHOLD: typing.ClassVar[float] = 0.9
    # early_exit=None: LLaDA keeps the reference's canvas token for token (off); block diffusion
    # generates variable lengths, a row stopping at its EOS block (on).
    EARLY_EXIT_BY_KIND: typing.ClassVar[dict[str, bool]] = {
        "diffusion": False,
        "block_diffusion": True,
    }

    def __post_init__(self) -> None:
        self.check(KEYWORDS)

    @classmethod
    def options(cls) -> dict[str, type]:
        """Option name -> the type a text parser reads (int, float, str or bool)."""
        hints = typing.get_type_hints(cls)
        return {
            f.name: next(
                t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not NoneType
            )
            for f in dataclasses.fields(cls)
        }

    @classmethod
    def parse(
        cls,
        values: Mapping[str, Any],
        spelling: Spelling = KEYWORDS,
        base: SamplerConfig | None = None,
    ) -> SamplerConfig:
        """A SamplerConfig from some options, the others from `base` (default: the defaults),
        every error in `spelling`'s words; an unknown option is one too."""
        unknown = sorted(set(values) - set(cls.options()))
        if unknown:
            raise ValueError(
                f"unknown sampler option {spelling.name(unknown[0])!r}: choose from "
                f"{', '.join(spelling.name(n) for n in cls.options())}"
            )
        merged = dataclasses.asdict(cls() if base is None else base) | dict(values)
        unchecked = object.__new__(cls)  # check() words the errors for the surface
        for name, value in merged.items():
            object.__setattr__(unchecked, name, value)
        unchecked.check(spelling)
        return cls(**merged)

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> SamplerConfig:
        """The options among a keyword face's arguments: `sampling.generate(..., steps=...)` and
        `fast_sampling.generate` pass their `locals()`, so each option is named once, in their
        signature. Other names (params, rng, ...) are ignored; options a face does not take keep
        their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in arguments.items() if name in names})

    def resolved(self) -> SamplerConfig:
        """steps and block_length filled in (None -> gen_length)."""
        steps, _, block_length = _lengths(self)
        return dataclasses.replace(self, steps=steps, block_length=block_length)

    def for_kind(self, kind: str, spelling: Spelling = KEYWORDS) -> SamplerConfig:
        """This config for a model of `kind`: early_exit None -> the kind's default
        (`EARLY_EXIT_BY_KIND`), and the rules that depend on the kind checked (LLaDA's exact
        sampler has no threshold / factor rule: only fast decoding has)."""
        if kind == "diffusion" and self.cache is None:
            _check_parallel_commits_need_cache(self, spelling)
        if self.early_exit is not None:
            return self
        return dataclasses.replace(self, early_exit=self.EARLY_EXIT_BY_KIND.get(kind, False))

    @property
    def fast(self) -> bool:
        """Fast decoding (`fast_sampling`) rather than the exact sampler (`sampling`)."""
        return self.cache is not None

    @property
    def needs_rng(self) -> bool:
        """Whether the sampler draws random numbers (temperature > 0 or random remasking)."""
        return self.temperature > 0 or self.remasking == "random"

    def rng_for(self, rng: Any) -> Any:
        """The key the program takes: `rng` when something is random, else None."""
        if rng is None and self.needs_rng:
            raise ValueError(
                "rng is required when temperature > 0 or remasking='random': pass "
                "rng=jax.random.key(seed)"
            )
        return rng if self.needs_rng else None

    def static(self, *, return_history: bool = False, window: bool = True) -> StaticOptions:
        """The hashable part: changing it compiles another program."""
        steps, gen_length, block_length = _lengths(self)
        return StaticOptions(
            steps=int(steps),
            gen_length=int(gen_length),
            block_length=int(block_length),
            sample=self.temperature > 0,
            guided=self.cfg_scale > 0,
            remasking=self.remasking,
            cache=self.cache,
            return_history=bool(return_history),
            window=bool(window),
        )

    def traced(self, *, fill_masks: bool = False) -> dict[str, np.ndarray]:
        """The traced part: float32 / bool scalars, so other values reuse the compiled program.

        fill_masks (infilling) never proposes the mask id; a disabled threshold / factor rule
        compares against +inf, so nothing passes it. early_exit None (not resolved by
        `for_kind`) is LLaDA's default.
        """
        early_exit = self.early_exit
        if early_exit is None:
            early_exit = self.EARLY_EXIT_BY_KIND["diffusion"]
        return {
            "temperature": np.float32(self.temperature),
            "cfg_scale": np.float32(self.cfg_scale),
            "logits_eos_inf": np.bool_(self.logits_eos_inf),
            "confidence_eos_eot_inf": np.bool_(self.confidence_eos_eot_inf),
            "early_exit": np.bool_(early_exit),
            "logits_mask_inf": np.bool_(fill_masks),
            "threshold": np.float32(np.inf if self.threshold is None else self.threshold),
            "factor": np.float32(-np.inf if self.factor is None else self.factor),
        }

    def check(self, spelling: Spelling = KEYWORDS) -> None:
        """Every rule on the options: a one-line ValueError naming the fix, in `spelling`."""
        _check_lengths(self, spelling)
        if self.remasking not in self.REMASKING:
            raise ValueError(
                f"unknown {spelling.name('remasking')} {self.remasking!r}: use one of "
                f"{self.REMASKING}"
            )
        _check_real(spelling, "temperature", self.temperature, ">=", "0 = greedy argmax")
        _check_real(spelling, "cfg_scale", self.cfg_scale, ">=", "0 = no guidance")
        _check_fast(self, spelling)


def _lengths(c: SamplerConfig) -> tuple[Any, Any, Any]:
    """(steps, gen_length, block_length), None resolved: the one place `steps or gen_length`
    and `block_length or gen_length` are decided (None only: 0 is an error, not a default)."""
    gen = c.gen_length
    return (
        gen if c.steps is None else c.steps,
        gen,
        gen if c.block_length is None else c.block_length,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _examples(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:4]) + (" ..." if len(values) > 4 else "")


_LENGTH_HINTS = {
    "gen_length": ": the number of tokens to generate",
    "steps": ", or unset for one token per step: {steps} = {gen_length}",
    "block_length": ", or unset for one block: {block_length} = {gen_length}",
}


def _check_lengths(c: SamplerConfig, s: Spelling) -> None:
    """gen_length, steps and block_length: positive ints, blocks tiling gen_length, steps
    spread evenly over the blocks."""
    names = {n: s.name(n) for n in _LENGTH_HINTS}
    for name, hint in _LENGTH_HINTS.items():
        value = getattr(c, name)
        if (value is None and name != "gen_length") or (_is_int(value) and value >= 1):
            continue
        hint = hint.format(**names)
        raise ValueError(
            f"{s.lead}{s.given(name, value)} must be >= 1 ({names[name]} must be a positive "
            f"int{hint})"
            if _is_int(value)
            else f"{s.lead}{s.given(name, value)} must be a positive int{hint}"
        )
    steps, gen, block = _lengths(c)
    if gen % block:
        divisors = [d for d in range(1, gen + 1) if gen % d == 0]
        raise ValueError(
            f"{s.lead}{s.given('block_length', block)} does not divide "
            f"{s.given('gen_length', gen)}: pass a divisor of {gen} ({_examples(divisors)}); a "
            f"{names['gen_length']} that is not a multiple of {names['block_length']} leaves a "
            "partial block"
        )
    n_blocks = gen // block
    if steps % n_blocks:
        raise ValueError(
            f"{s.lead}{s.given('steps', steps)} is not a multiple of the number of blocks "
            f"{n_blocks} ({s.given('gen_length', gen)} / {s.given('block_length', block)}): "
            f"pass a multiple of {n_blocks}, e.g. {n_blocks * max(1, steps // n_blocks)}"
        )


def _check_real(s: Spelling, name: str, value: Any, op: str, fix: str) -> None:
    """A finite number with `op` 0 (">=" or ">")."""
    is_real = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    finite = is_real and math.isfinite(value)
    if finite and (value >= 0 if op == ">=" else value > 0):
        return
    number = s.number if finite else "a finite number "
    raise ValueError(f"{s.lead}{s.given(name, value)} must be {number}{op} 0 ({fix})")


def _check_fast(c: SamplerConfig, s: Spelling) -> None:
    """The fast-decoding options: a known cache mode; threshold or factor, not both."""
    if c.cache is not None and c.cache not in c.CACHE_MODES:
        raise ValueError(f"unknown {s.name('cache')} mode {c.cache!r}: use one of {c.CACHE_MODES}")
    if c.threshold is not None:
        _check_real(s, "threshold", c.threshold, ">=", "e.g. 0.9; above 1 commits no extra tokens")
    if c.factor is not None:
        _check_real(s, "factor", c.factor, ">", "e.g. 1.0")
    threshold, factor = s.name("threshold"), s.name("factor")
    if c.threshold is not None and c.factor is not None:
        raise ValueError(
            f"{threshold} and {factor} are two rules for the same choice ({factor} replaces the "
            f"fixed {threshold} by Fast-dLLM's rank-dependent one): pass one of them, not both"
        )


def _check_parallel_commits_need_cache(c: SamplerConfig, s: Spelling) -> None:
    """LLaDA: threshold and factor only with fast decoding (block diffusion always has them)."""
    if c.threshold is not None or c.factor is not None:
        raise ValueError(
            f"{s.name('threshold')} and {s.name('factor')} are fast-decoding rules: also set "
            f"{s.name('cache')} (one of {c.CACHE_MODES})"
        )


__all__ = ["FLAGS", "KEYWORDS", "MODEL_ARG", "SamplerConfig", "Spelling", "StaticOptions", "flag"]
