"""`lladax data prepare`: pre-tokenise a corpus into ArrayRecord shards (see docs/data.md).

  lladax data prepare --source corpus/ --out data/corpus_tok --tokenizer tok.model --shards 16
  lladax data prepare --source tfds:wiki40b/en --out data/wiki --seq-len 4096 --field text

Then train on it with ``--config.data.source=data/corpus_tok`` (and the same tokenizer).
"""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="data tools: `prepare` pre-tokenises a corpus into shards",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tools = p.add_subparsers(dest="tool", required=True)
    prep = tools.add_parser("prepare", help="tokenise a text source into ArrayRecord shards")
    prep.add_argument("--source", required=True,
                      help="'embedded', a .txt/.jsonl file or directory, or tfds:NAME[:SPLIT]")
    prep.add_argument("--out", required=True, help="output directory (must be new or empty)")
    prep.add_argument("--tokenizer", default="embedded",
                      help="a sentencepiece .model, a tokenizer.json (or its directory), or "
                           "'embedded' (the default tokenizer of --vocab-size)")
    prep.add_argument("--vocab-size", type=int, default=2048,
                      help="vocab of the 'embedded' tokenizer (match the model's vocab_size)")
    prep.add_argument("--field", default="text", help="the text field of .jsonl / TFDS records")
    prep.add_argument("--seq-len", type=int, default=None,
                      help="cut documents into records of at most this many tokens")
    prep.add_argument("--shards", type=int, default=1, help="number of train shard files")
    prep.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from lladax import prepared
    from lladax.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer, vocab_size=args.vocab_size)
    manifest = prepared.prepare(args.source, args.out, tok, field=args.field,
                                seq_len=args.seq_len, shards=args.shards,
                                overwrite=args.overwrite, progress=not args.no_progress)
    summary = {s: {k: v for k, v in st.items() if k != "files"} | {"files": len(st["files"])}
               for s, st in manifest["splits"].items()}
    print(json.dumps(summary))
    print(f"wrote {args.out}: train with --config.data.source={args.out} and "
          f"--config.data.tokenizer={args.tokenizer}")
    return 0
