"""`lladax sample`: generate from prompts, or fill `<mask>` spans inside a text (infilling).

    lladax sample --checkpoint runs/small --prompt "The list type" --gen-length 32
    lladax sample --checkpoint runs/small --infill "A <mask:6> is an ordered <mask> of items."
    lladax sample --checkpoint runs/small --prompt "The list type" --gen-length 256 \
        --block-length 32 --fast      (dual KV cache + confidence threshold 0.9; NFE on stderr)

`<mask>` expands to `--mask-span` mask tokens, `<mask:N>` to N. Infilling uses the bidirectional
model's native strength: the masks inside the text are filled by the same reverse process.
A block-diffusion checkpoint (kind='block_diffusion') decodes its own blocks with an exact KV
cache and stops each prompt at its EOS block (--no-early-exit runs every block); --threshold /
--factor commit confident tokens in parallel; model evaluations and lengths go to stderr
(docs/fast_decoding.md, "Block diffusion decoding"). --infill and --show-steps are LLaDA's.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from lladax.batching import left_pad
from lladax.cli.common import (
    add_fast_args,
    add_model_args,
    add_sampling_args,
    command_parser,
    generate,
    rng_from_args,
    sampler_config_from_args,
)
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.store.loading import check_model_path, load_model

MASK_MARKER = re.compile(r"<mask(?::(\d+))?>")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = command_parser(sub, name, "sample text (or fill <mask> spans) from a model", __doc__)
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    src.add_argument("--prompt-file", help="a file with one prompt per line")
    src.add_argument("--infill", help="text with <mask> or <mask:N> spans to fill")
    p.add_argument("--mask-span", type=int, default=8, help="tokens per bare <mask> marker")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument(
        "--show-steps", action="store_true", help="render the canvas filling in, step by step"
    )
    add_sampling_args(p)
    add_fast_args(p)


def encode_infill(text: str, tokenizer: Any, mask_id: int, default_span: int) -> list[int]:
    """Tokenise `text`, replacing every <mask[:N]> marker with N (default `default_span`) masks."""
    ids: list[int] = [tokenizer.bos_id]
    pos = 0
    for m in MASK_MARKER.finditer(text):
        ids += tokenizer.encode(text[pos : m.start()]) if m.start() > pos else []
        span = int(m.group(1)) if m.group(1) else default_span
        if span <= 0:
            raise ValueError(f"mask span {m.group(0)} must be positive")
        ids += [mask_id] * span
        pos = m.end()
    ids += tokenizer.encode(text[pos:]) if pos < len(text) else []
    if mask_id not in ids:
        raise ValueError("--infill text has no <mask> marker: write e.g. 'A <mask:4> of items'")
    return ids


def render(tokenizer: Any, ids: Any, mask_id: int) -> str:
    """Text of `ids` with every mask token shown as a block."""
    out, run = [], []
    for t in (int(i) for i in ids):
        if t == mask_id:
            if run:
                out.append(tokenizer.decode(run))
                run = []
            out.append("█")
        else:
            run.append(t)
    if run:
        out.append(tokenizer.decode(run))
    return "".join(out)


def show_history(tokenizer: Any, history: Any, prompt_len: int, mask_id: int) -> None:
    tty = sys.stdout.isatty()
    total = len(history)
    for step, canvas in enumerate(history):
        text = render(tokenizer, canvas[0][prompt_len:], mask_id).replace("\n", "⏎")
        counter = f"[{step + 1:>{len(str(total))}}/{total}]"
        if tty:  # redraw one line in place
            print(f"\r\033[2K{counter} {text}", end="", flush=True)
        else:
            print(f"{counter} {text}")
    if tty:
        print()


def read_prompt_file(name: str) -> list[str]:
    """The non-blank lines of --prompt-file; one-line errors for a missing, unreadable, binary
    or empty file."""
    path = Path(name).expanduser()
    if not path.is_file():
        missing = not path.exists()
        raise (FileNotFoundError if missing else ValueError)(
            f"--prompt-file {path} {'does not exist' if missing else 'is not a file'}: pass a "
            "text file with one prompt per line"
        )
    from lladax.data.textio import decode_text

    text = decode_text(path.read_bytes(), f"--prompt-file {path}")  # UTF-8 or a one-line error
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(
            f"--prompt-file {path} holds no prompt (it is empty or blank): write "
            "one prompt per line"
        )
    return prompts


def check_infill_args(args: argparse.Namespace) -> None:
    """--infill: a text with at least one marker, every <mask:N> with N >= 1, and none of the
    flags that only apply to --prompt (they would be silently ignored)."""
    ignored = [
        flag
        for flag, given in (
            ("--chat", args.chat),
            ("--block-length", args.block_length is not None),
            ("--cfg-scale", args.cfg_scale != 0),
            ("--early-exit" if args.early_exit else "--no-early-exit", args.early_exit is not None),
        )
        if given
    ]
    if ignored:
        raise ValueError(
            f"{', '.join(ignored)}: no effect with --infill (the text is filled as "
            "one block, without guidance): drop it, or use --prompt"
        )
    spans = [m for m in MASK_MARKER.finditer(args.infill)]
    if not spans:
        raise ValueError("--infill text has no <mask> marker: write e.g. 'A <mask:4> of items'")
    for m in spans:
        if m.group(1) is not None and int(m.group(1)) < 1:
            raise ValueError(
                f"--infill marker {m.group(0)} must mark at least one token: write "
                "<mask:N> with N >= 1, or <mask> for --mask-span tokens"
            )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    # Every flag and path is checked before JAX starts or a weight is read.
    if args.mask_span < 1:
        raise ValueError(f"--mask-span {args.mask_span} must be >= 1 (tokens per bare <mask>)")
    sampler = sampler_config_from_args(args)
    if sampler.fast and (args.infill is not None or args.show_steps):
        raise ValueError(
            "fast decoding applies to --prompt / --prompt-file without "
            "--show-steps: drop --fast/--cache/--threshold/--factor"
        )
    if args.infill is not None:
        check_infill_args(args)
    prompts = read_prompt_file(args.prompt_file) if args.prompt_file else args.prompt
    check_model_path(args.checkpoint, args.tokenizer)
    cfg, params, tokenizer = load_model(args.checkpoint, args.dtype, args.tokenizer)
    if cfg.causal and (args.infill is not None or sampler.fast):
        raise ValueError(
            "--infill and fast decoding need a diffusion model; this checkpoint is "
            "the autoregressive baseline (kind='autoregressive'): use --prompt"
        )
    if cfg.kind == "block_diffusion" and args.infill is not None:
        raise ValueError(
            "--infill fills masks anywhere in a text, which needs LLaDA's bidirectional model; "
            "this checkpoint is block diffusion (kind='block_diffusion'), decoded block by "
            "block: use --prompt"
        )
    if args.infill is not None:
        return _infill(args, cfg, params, tokenizer, sampler)
    if args.chat:
        from lladax.data.chat import apply_chat_template

        rows = [apply_chat_template(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    else:
        rows = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
    tokens, attention_mask = left_pad(rows, cfg.pad_token_id)
    rng = rng_from_args(args)
    if sampler.fast or cfg.kind == "block_diffusion":
        out = _decode_with_stats(args, cfg, params, tokens, attention_mask, sampler, rng)
    else:
        out = generate(
            params, cfg, tokens, attention_mask, sampler, rng, return_history=args.show_steps
        )
    _print_answers(args, cfg, tokenizer, prompts, tokens.shape[1], out)
    return 0


def _decode_with_stats(
    args: argparse.Namespace,
    cfg: Any,
    params: Any,
    tokens: Any,
    attention_mask: Any,
    sampler: SamplerConfig,
    rng: Any,
) -> Any:
    """Fast decoding or block diffusion: the canvas; the model evaluations per prompt (and, for
    block diffusion, the generated lengths) on stderr."""
    out, stats = generate(
        params,
        cfg,
        tokens,
        attention_mask,
        sampler,
        rng,
        return_history=args.show_steps,
        return_stats=True,
    )
    nfe = [int(n) for n in stats["nfe"]]
    if cfg.kind == "block_diffusion":
        print(
            f"block diffusion (block_size {cfg.block_size}): model evaluations per prompt "
            f"{nfe}, tokens before EOS {[int(n) for n in stats['lengths']]}",
            file=sys.stderr,
        )
        return out
    fast = {name: getattr(sampler, name) for name in SamplerConfig.FAST_OPTIONS}
    print(
        f"fast decoding ({fast}): model evaluations per prompt {nfe}, plain decoding would use "
        f"{sampler.resolved().steps}",
        file=sys.stderr,
    )
    return out


def _infill(
    args: argparse.Namespace, cfg: Any, params: Any, tokenizer: Any, sampler: SamplerConfig
) -> int:
    """--infill: the masks inside the text filled as one block (--steps default: one per mask)."""
    from lladax.diffusion import sampling

    ids = encode_infill(args.infill, tokenizer, cfg.mask_token_id, args.mask_span)
    steps = args.steps if args.steps is not None else ids.count(cfg.mask_token_id)
    canvas = sampling.infill(
        params,
        cfg,
        [ids],
        steps=steps,
        temperature=sampler.temperature,
        remasking=sampler.remasking,
        rng=rng_from_args(args),
        return_history=args.show_steps,
    )
    if args.show_steps:
        canvas, history = canvas
        show_history(tokenizer, history, 0, cfg.mask_token_id)
    print(render(tokenizer, canvas[0][1:], cfg.mask_token_id))
    return 0


def _print_answers(
    args: argparse.Namespace,
    cfg: Any,
    tokenizer: Any,
    prompts: list[str],
    prompt_len: int,
    out: Any,
) -> None:
    from lladax.diffusion import sampling

    if args.show_steps:
        out, history = out
        show_history(tokenizer, history, prompt_len, cfg.mask_token_id)
    for prompt, row in zip(prompts, out, strict=True):
        answer = sampling.decode_answer(row, prompt_len, cfg)
        text = render(tokenizer, answer, cfg.mask_token_id)
        print(text if len(prompts) == 1 else f"### {prompt}\n{text}")
