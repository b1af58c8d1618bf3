"""``ct-prepare``: prepare and cache a recipe's data (ct-train also does this
on first use)::

    ct-prepare experiment=audio/speech_ct data.root=/data/LibriSpeech
    ct-prepare experiment=text/enwik8_ct data.download=true
"""

from __future__ import annotations

import sys

from ct_core.cli.common import compose_recipe, user_errors

PROG = "ct-prepare"

HELP = """usage: ct-prepare [experiment=NAME] [data.KEY=VALUE ...]

Prepare and cache the data of a recipe: read the corpus, tokenize it into
shards on disk and write a manifest. A second run with the same corpus and
settings is a cache hit. The last line says where the prepared data is
(under data.cache_dir).

examples:
  ct-prepare                                              # the bundled speech demo
  ct-prepare experiment=audio/speech_ct data.root=/data/LibriSpeech
  ct-prepare experiment=text/pg19_ct data.root=/data/pg19
  ct-prepare experiment=text/enwik8_ct data.download=true
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return
    with user_errors(PROG):
        from ct_core.cli.run_setup import build_run

        raw = compose_recipe(argv, PROG)
        cfg, frontend = build_run(raw)
        frontend.prepare(progress=True)
        for split in ("train", "valid", "test"):
            docs = frontend.documents(split)
            print(f"{split:>6}: {len(docs):,} documents, {sum(len(d) for d in docs):,} tokens")
        print(f"vocabulary: {frontend.vocab_size}")
        where = frontend.store_path
        print(f"prepared data: {where}" if where is not None else "prepared data: none on disk (made in memory)")


if __name__ == "__main__":
    main()
