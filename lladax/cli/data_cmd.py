"""`lladax data prepare`: pre-tokenise a corpus into ArrayRecord shards (see docs/data.md).

  lladax data prepare --source corpus/ --out data/corpus_tok --tokenizer tok.model --shards 16
  lladax data prepare --source tfds:wiki40b/en --out data/wiki --seq-len 4096 --field text

Then train on it with ``--config.data.source=data/corpus_tok`` (and the same tokenizer).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator

from lladax.cli.common import command_parser

DEFAULT_VOCAB = 2048


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = command_parser(
        sub, name, "data tools: `prepare` pre-tokenises a corpus into shards", __doc__
    )
    tools = p.add_subparsers(dest="tool", required=True)
    prep = tools.add_parser("prepare", help="tokenise a text source into ArrayRecord shards")
    prep.add_argument(
        "--source",
        required=True,
        help="'embedded', a .txt/.jsonl file or directory, or tfds:NAME[:SPLIT]",
    )
    prep.add_argument("--out", required=True, help="output directory (must be new or empty)")
    prep.add_argument(
        "--tokenizer",
        default="embedded",
        help="a sentencepiece .model, a tokenizer.json (or its directory), or "
        "'embedded' (the default tokenizer of --vocab-size)",
    )
    prep.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="vocab of the 'embedded' tokenizer (match the model's vocab_size; "
        f"default {DEFAULT_VOCAB})",
    )
    prep.add_argument("--field", default="text", help="the text field of .jsonl / TFDS records")
    prep.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="cut documents into records of at most this many tokens",
    )
    prep.add_argument("--shards", type=int, default=1, help="number of train shard files")
    prep.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    # Everything that can be refused is refused here, in milliseconds, before the tokenizer
    # loads (the embedded one trains on first use) or the corpus is read; nothing is written.
    from lladax.data import prepared_writer
    from lladax.data.tokenizer import load_tokenizer, tokenizer_file
    from lladax.data.tokenizer_train import check_vocab_size

    vocab = DEFAULT_VOCAB if args.vocab_size is None else args.vocab_size
    tok_file = tokenizer_file(args.tokenizer)
    if tok_file is None:
        check_vocab_size(vocab)
    elif args.vocab_size is not None:
        raise ValueError(
            f"--vocab-size only sizes the 'embedded' tokenizer, but --tokenizer is "
            f"{args.tokenizer} (vocab fixed by the file): drop --vocab-size"
        )
    prepared_writer.check_prepare(
        args.source,
        args.out,
        field=args.field,
        seq_len=args.seq_len,
        shards=args.shards,
        overwrite=args.overwrite,
        tokenizer_path=tok_file,
    )
    tok = load_tokenizer(args.tokenizer, vocab_size=vocab)
    with _sigterm_as_exit():
        manifest = prepared_writer.prepare(
            args.source,
            args.out,
            tok,
            field=args.field,
            seq_len=args.seq_len,
            shards=args.shards,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    summary = {
        s: {k: v for k, v in st.items() if k != "files"} | {"files": len(st["files"])}
        for s, st in manifest["splits"].items()
    }
    print(json.dumps(summary))
    if not manifest["splits"]["eval"]["documents"]:  # eval takes ~2% of documents by hash
        print(
            f"lladax data: warning: {args.source} gave no eval documents, so training on "
            f"{args.out} with eval.every > 0 will fail: add text, or set eval.every=0",
            file=sys.stderr,
        )
    print(
        f"wrote {args.out}: train with --config.data.source={args.out} and "
        f"--config.data.tokenizer={args.tokenizer}"
    )
    return 0


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (a scheduler's stop) unwinds like Ctrl-C, so the writer removes its temp files;
    Python's default would end the process on the spot and leave them behind."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: keep the default
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
