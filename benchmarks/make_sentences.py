"""Write the embedded corpus as one short sentence per document (for the early-exit benchmark).

    python benchmarks/make_sentences.py /tmp/sentences.txt

A model trained on it learns to end answers with EOS after a sentence, like an SFT model does.
"""

from __future__ import annotations

import re

import harness

from lladax.data import sources


def main(path: str) -> None:
    sentences = []
    for doc in sources.load_documents("embedded", split="all"):
        for sent in re.split(r"(?<=[.!?])\s+", doc.replace("\n", " ")):
            sent = " ".join(sent.split())
            if 30 <= len(sent) <= 160 and sent[0].isupper():
                sentences.append(sent)
    with open(path, "w") as f:
        f.write("\n\n".join(sentences))  # .txt sources separate documents by blank lines
    print(f"wrote {len(sentences)} sentences to {path}")


if __name__ == "__main__":
    ap = harness.parser(__doc__)
    ap.add_argument("path", help="the .txt file to write")
    main(ap.parse_args().path)
