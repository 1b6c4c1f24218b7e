"""`mmsdk index add DB FILE...` and `mmsdk ask DB QUESTION`."""
import sys
from pathlib import Path

from .errors import InputError


def register(subparsers):
    index = subparsers.add_parser("index", help="manage a document index (one SQLite file)")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    add = index_sub.add_parser("add", help="index .txt .md .html .pdf files (unchanged files are skipped)")
    add.add_argument("db", help="index file, created if missing")
    add.add_argument("files", nargs="+", help="documents to index")
    add.add_argument("--model", help="sentence-transformers model folder to embed with (default: the bundled "
                                     "all-MiniLM-L6-v2); `mmsdk ask` then needs the same as --embedder")
    add.set_defaults(func=index_add)

    ask = subparsers.add_parser("ask", help="answer a question from an index, citing its sources")
    ask.add_argument("db", help="index file built with `mmsdk index add`")
    ask.add_argument("question")
    ask.add_argument("--model", help="model checkpoint folder or .gguf (default: the bundled model)")
    ask.add_argument("--embedder", help="the embedding model the index was built with (`index add --model`)")
    ask.add_argument("-k", type=int, default=5, help="passages to retrieve (default 5)")
    ask.add_argument("--max-tokens", type=int, default=256)
    ask.set_defaults(func=ask_question)


def index_add(args) -> int:
    from tqdm import tqdm

    from .documents import DocumentIndex

    failed = added = unchanged = 0
    with DocumentIndex(args.db, _embedder(args.model)) as index:
        bar = tqdm(args.files, unit="file", desc="indexing", file=sys.stderr)
        for path in bar:
            bar.set_postfix_str(Path(path).name, refresh=False)
            try:
                n = index.add(path)
            except InputError as e:  # one bad file must not stop the batch
                failed += 1
                tqdm.write(f"error: {e}", file=sys.stderr)
                continue
            added, unchanged = added + (n > 0), unchanged + (n == 0)
        print(f"{added} indexed, {unchanged} unchanged, {failed} failed; {args.db} holds "
              f"{len(index.sources())} sources", file=sys.stderr)
    return 1 if failed else 0


def _embedder(path):
    """None (the bundled embedder) or a sentence-transformers model folder."""
    if path is None:
        return None
    from .rag.embedder import SentenceTransformerEmbedder

    if not Path(path, "config.json").is_file():
        raise InputError(f"embedding model {path!r}: not a sentence-transformers model folder (no config.json)")
    return SentenceTransformerEmbedder(path)


def ask_question(args) -> int:
    import mmsdk

    from .documents import DocumentIndex, answer

    if not Path(args.db).is_file():
        raise InputError(f"no index at {args.db!r}; build one with `mmsdk index add {args.db} FILE...`")
    with DocumentIndex(args.db, _embedder(args.embedder)) as index:
        asst = mmsdk.load(args.model) if args.model else mmsdk.load()
        result = answer(asst, args.question, index, k=args.k, max_tokens=args.max_tokens)
    print(result.text)
    for n, hit in enumerate(result.citations, start=1):
        print(f"[{n}] {hit.source}" + (f" ({hit.location})" if hit.location else ""))
    return 0
