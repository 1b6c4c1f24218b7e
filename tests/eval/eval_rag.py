"""Retrieval evaluation over the CPython documentation that ships with Python (pydoc_data.topics),
written out as .txt, .md, .html and .pdf files.

Each question names the topic it was written from and a short phrase of the passage that answers
it; a hit is relevant when it contains the phrase (compared on letters and digits only, so PDF line
breaks do not matter), from any file, since pydoc repeats some passages under several topics. Reports recall@1, recall@5 and MRR@10 per mode,
indexing throughput, query latency, and the top-hit cosine of answerable vs off-topic questions
(which sets `mmsdk.documents.MIN_SIMILARITY`).

With `--answers` it also asks the bundled model every question through `Assistant.ask` and reports
answer accuracy (the answer quotes the question's phrase) against the floor of quoting the top
chunk, answers echoing the prompt, and how declining separates answerable questions from
unanswerable ones (off-topic, and Python questions the language reference does not cover); the
best-sentence support of both sets calibrates `mmsdk.documents.MIN_SUPPORT`.

    HF_HUB_OFFLINE=1 python tests/eval/eval_rag.py [--answers] [--draft] [--json results.json]
"""
import argparse
import functools
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import rag_corpus  # noqa: E402
import torch  # noqa: E402

from mmsdk.documents import MIN_SIMILARITY, DocumentIndex, supporting_sentences  # noqa: E402
from mmsdk.embedder import default_embedder  # noqa: E402
from mmsdk.encoders.accelerate import int8_kernel  # noqa: E402
from mmsdk.rag.embedder import SentenceTransformerEmbedder  # noqa: E402
from mmsdk.rag.prompt import INSTRUCTION, echoes  # noqa: E402

# (question, topic, phrase of the answering passage)
QUESTIONS = [
    ("How can I make Python skip all assert statements when running my program?", "assert", 'when optimization is requested (command line option "-O")'),
    ("What does an assert with a custom error message turn into?", "assert", "raise AssertionError(expression2)"),
    ("Is it allowed to put break inside a function defined in a loop?", "break", "not nested in a function or class definition within that loop"),
    ("If I leave a loop early with break, does the loop's else block still run?", "break", 'skipping the optional "else" clause'),
    ("What happens when continue runs inside a loop?", "continue", "continues with the next cycle of the nearest enclosing loop"),
    ("What does deleting a variable name actually do?", "del", "removes the binding of that name from the local or global namespace"),
    ("Can I use a variable in a function before declaring it global?", "global", "must not be used in the same code block textually preceding"),
    ("How do I assign to a variable of the outer function from an inner function?", "nonlocal", "previously bound variables in the nearest enclosing scope"),
    ("Why would I write a statement that does nothing?", "pass", "useful as a placeholder when a statement is required syntactically"),
    ("What happens when a generator function returns a value?", "return", 'generator is done and will cause "StopIteration" to be raised'),
    ("How do I attach the original exception as the cause when raising a new one?", "raise", '"from" clause is used for exception chaining'),
    ("Can a lambda function contain statements like assignments?", "lambda", "cannot contain statements or annotations"),
    ("Which values count as false in an if condition?", "truth", 'constants defined to be false: "None" and "False"'),
    ("Do the and/or operators always give back True or False?", "booleans", "return the last evaluated argument"),
    ("Can I chain comparisons like a < b < c?", "comparisons", "except that each expression is evaluated at most once"),
    ("What do I get when I raise a negative number to a fractional power?", "power", 'fractional power results in a "complex" number'),
    ("How is a right shift by n bits defined?", "shifting", 'floor division by "pow(2,n)"'),
    ("Is there a maximum size for integer literals?", "integers", "no limit for the length of integer literals"),
    ("Can I use underscores to group digits in number literals?", "integers", "Underscores are ignored for determining the numeric value"),
    ("How do I stop backslashes from being treated as escapes in a string?", "strings", "such strings are called *raw strings*"),
    ("How do I format a number with a comma as the thousands separator?", "formatstrings", "signals the use of a comma for a thousands separator"),
    ("Which alignment option centers a value in a format spec?", "formatstrings", "Forces the field to be centered within the available"),
    ("What does dict.get return when the key is missing?", "typesmapping", 'so that this method never raises a "KeyError"'),
    ("Do Python dictionaries keep the order in which keys were inserted?", "typesmapping", "Dictionaries preserve insertion order"),
    ("How can I merge two dictionaries into a new one with an operator?", "typesmapping", "Create a new dictionary with the merged keys and values"),
    ("Is list sorting stable?", "typesseq", 'The "sort()" method is guaranteed to be stable'),
    ("Which special method creates the instance before __init__ runs?", "specialnames", "Called to create a new instance of class *cls*"),
    ("Why do my objects become unhashable after I define __eq__?", "specialnames", 'will have its "__hash__()" implicitly set to "None"'),
    ("When is __getattr__ called?", "attribute-access", "Called when the default attribute access fails"),
    ("How do I drop into the debugger from inside my code?", "debugger", "import pdb; pdb.set_trace()"),
    ("How do I set a breakpoint at a specific line number in pdb?", "debugger", "With a *lineno* argument, set a break"),
    ("Why is my exception variable gone after the except block?", "try", "it is cleared at the end of the \"except\" clause"),
    ("What counts as a block of code in Python's execution model?", "execmodel", "program text that is executed as a unit"),
    ("Why does a list used as a default argument keep its changes between calls?", "function", "default parameter value is a mutable object"),
    ("Where am I allowed to use await?", "await", "Can only be used inside a *coroutine function*"),
    ("What value do functions without a return statement give back?", "bltin-null-object", "returned by functions that don't explicitly return a value"),
    ("What sign does the result of the modulo operator have?", "binary", "same sign as its second operand"),
    ("What does `from module import *` import?", "import", 'checking the module\'s namespace for a variable named "__all__"'),
    ("Which methods of a context manager does the with statement call?", "with", 'The context manager\'s "__enter__()" method is invoked'),
    ("When does the else clause of a while loop execute?", "while", 'the suite of the "else" clause, if present, is executed and the loop terminates'),
    ("Does reassigning the loop variable inside a for loop change the iteration?", "for", "this will not affect the for-loop"),
    ("How does Python pick which branch of an if/elif chain runs?", "if", "selects exactly one of the suites by evaluating the expressions"),
    ("What is the syntax for a complex number literal?", "imaginary", "An imaginary literal yields a complex number with a real part of 0.0"),
    ("How do I remove a set of characters from the start of a string?", "string-methods", "Return a copy of the string with leading characters removed"),
    ("How do I split a string on runs of whitespace?", "string-methods", "runs of consecutive whitespace are regarded as a single separator"),
    ("What does a slice with a step look like and how is it evaluated?", "slicings", "The semantics for a slicing are as follows"),
    ("How does x += 1 differ from x = x + 1?", "augassign", 'In the augmented version, "x" is only evaluated once'),
    ("What happens to a function when I put yield in its body?", "yield", "sufficient to cause that definition to create a generator function"),
]

OFF_TOPIC = [
    "How long should I bake sourdough bread?", "Who won the football World Cup in 2018?",
    "What is a good home remedy for a sore throat?", "How do I fix a flat bicycle tire?",
    "What is the capital city of Australia?", "How many moons does Jupiter have?",
    "Can you recommend a science fiction novel?", "What time zone is Tokyo in?",
    "How do I knit a scarf for beginners?", "What is the best fertilizer for tomatoes?",
]

# Python questions the language reference (pydoc topics) does not answer: third-party tools and tasks.
UNANSWERABLE = OFF_TOPIC + [
    "How do I install a package from PyPI with pip?", "How do I read a CSV file into a pandas DataFrame?",
    "How do I plot a histogram with matplotlib?", "How do I send an HTTP GET request with the requests library?",
    "How do I create a Django project and start its development server?",
    "How do I connect to a PostgreSQL database with psycopg2?", "How do I train a neural network in PyTorch?",
    "How do I deploy a Flask app behind nginx?", "How do I parse command-line options with click?",
    "How do I publish my package to PyPI with twine?",
]


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower().replace("’", "'"))


def first_relevant_rank(hits, phrase: str):
    want = _norm(phrase)
    for rank, hit in enumerate(hits, start=1):
        if want in _norm(hit.text):
            return rank
    return None


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bench_embedders(index: DocumentIndex, rounds: int = 3) -> dict:
    """The int8 embedder (mmsdk's default) and rag's float32 one side by side on the stored chunks,
    one call per source as `add` makes them, alternating, median of `rounds`; and each chunk's
    cosine between the two."""
    rows = index._store.conn.execute("SELECT source_id, heading, text FROM chunks ORDER BY id").fetchall()
    groups = {}
    for source, heading, text in rows:
        groups.setdefault(source, []).append(f"{heading}\n{text}" if heading else text)
    embedders = {"int8": default_embedder(), "float32": SentenceTransformerEmbedder()}
    times, vectors = {k: [] for k in embedders}, {}
    for e in embedders.values():
        e(["warm up"])
    for _ in range(rounds):
        for name, embed in embedders.items():
            t = time.perf_counter()
            vectors[name] = np.concatenate([embed(g) for g in groups.values()])
            times[name].append(time.perf_counter() - t)
    cos = (vectors["int8"] * vectors["float32"]).sum(1)
    return {"cpu": cpu_name(), "int8_kernel": int8_kernel(), "threads": torch.get_num_threads(), "chunks": len(rows),
            **{f"{k}_chunks_per_s": round(len(rows) / statistics.median(v), 1) for k, v in times.items()},
            "cosine_min": round(float(cos.min()), 4), "cosine_mean": round(float(cos.mean()), 4)}


def bench_indexing(files: list[Path], workdir: Path, rounds: int = 2) -> dict:
    """Indexing the corpus a file at a time (`add`) and several files per embedder call (`add_many`),
    each into a fresh index, alternating, median of `rounds`; and each stored row's cosine between them."""
    times, vectors = {"add": [], "add_many": []}, {}
    embed = default_embedder()
    embed(["warm up"])
    for r in range(rounds):
        for way in times:
            db = workdir / f"bench-{way}-{r}.db"
            for old in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                old.unlink(missing_ok=True)
            with DocumentIndex(db, embed) as index:
                t = time.perf_counter()
                n = sum(index.add(f) for f in files) if way == "add" else sum(index.add_many(files))
                times[way].append(time.perf_counter() - t)
                rows = index._store.conn.execute("SELECT s.path, c.ord, c.vector FROM chunks c JOIN sources s "
                                                 "ON s.id = c.source_id ORDER BY 1, 2").fetchall()
                vectors[way] = np.stack([np.frombuffer(v, np.float32) for *_, v in rows])
    cos = (vectors["add"] * vectors["add_many"]).sum(1)
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "chunks": n,
            **{f"{k}_chunks_per_s": round(n / statistics.median(v), 1) for k, v in times.items()},
            **{f"{k}_seconds": [round(x, 1) for x in v] for k, v in times.items()},
            "cosine_min": round(float(cos.min()), 4)}


def run(workdir: Path, chunk_tokens: int, overlap: int, float32: bool = False, rerank_top: int = 0) -> dict:
    files = rag_corpus.build(workdir / "corpus")
    index = DocumentIndex(workdir / "eval.db", SentenceTransformerEmbedder() if float32 else None,
                          chunk_tokens=chunk_tokens, overlap=overlap)
    index.embedder(["warm up"])  # load the model outside the timings

    t0 = time.perf_counter()
    results = index.add_many(files)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise failed[0]
    n_chunks = sum(results)
    index_s = time.perf_counter() - t0

    _check_phrases(index)
    report = {"files": len(files), "formats": {e: sum(f.suffix == e for f in files) for e in rag_corpus.FORMATS},
              "chunks": n_chunks, "index_seconds": round(index_s, 2), "chunks_per_s": round(n_chunks / index_s, 1),
              "embedder": "float32" if float32 else "int8", "cpu": cpu_name(),
              "questions": len(QUESTIONS), "modes": {}}
    searches = {mode: functools.partial(index.search, mode=mode) for mode in ("vector", "keyword", "hybrid")}
    if rerank_top:  # after reranking: the bundled model's query likelihood over hybrid's best `rerank_top`
        import mmsdk
        from mmsdk.rerank import QueryLikelihood

        searches["hybrid+rerank"] = functools.partial(index.search, reranker=QueryLikelihood(mmsdk.load()),
                                                      rerank_top=rerank_top)
    for mode, search in searches.items():
        ranks, times = [], []
        for question, _, phrase in QUESTIONS:
            t = time.perf_counter()
            hits = search(question, k=10)
            times.append((time.perf_counter() - t) * 1000)
            ranks.append(first_relevant_rank(hits, phrase))
        report["modes"][mode] = {
            "recall@1": round(sum(r == 1 for r in ranks) / len(ranks), 3),
            "recall@5": round(sum(r is not None and r <= 5 for r in ranks) / len(ranks), 3),
            "mrr@10": round(sum(1 / r for r in ranks if r) / len(ranks), 3),
            "p50_ms": round(statistics.median(times), 1), "p95_ms": round(_pct(times, 0.95), 1),
            "missed": [q for (q, _, _), r in zip(QUESTIONS, ranks) if r is None or r > 5],
        }
    top = lambda q: index.search(q, k=1)[0].similarity  # noqa: E731
    answerable, off = [top(q) for q, _, _ in QUESTIONS], [top(q) for q in OFF_TOPIC]
    report["top_similarity"] = {"answerable_min": round(min(answerable), 3), "answerable_p05": round(_pct(answerable, 0.05), 3),
                                "off_topic_max": round(max(off), 3), "off_topic_median": round(statistics.median(off), 3)}
    index.close()
    return report


def support_scores(index: DocumentIndex, k: int = 5) -> list[dict]:
    """Per question: the top hit's cosine and the best sentence support `ask` declines on."""
    rows = []
    for question, phrase in [(q, p) for q, _, p in QUESTIONS] + [(q, None) for q in UNANSWERABLE]:
        hits = index.search(question, k=k)
        kept = [h for h in hits if h.similarity >= MIN_SIMILARITY]
        support = supporting_sentences(question, kept, index.embedder)
        rows.append({"question": question, "phrase": phrase, "top_similarity": round(hits[0].similarity, 3),
                     "support": round(support[0].score, 3) if support else 0.0,
                     "floor": phrase is not None and _norm(phrase) in _norm(hits[0].text)})
    return rows


def calibrate(rows: list[dict]) -> dict:
    """The support floor that declines the most unanswerable questions while declining at most 10%
    of the answerable ones (midway between the two scores it separates)."""
    ans = sorted(r["support"] for r in rows if r["phrase"])
    una = sorted(r["support"] for r in rows if not r["phrase"])
    allowed = ans[int(0.1 * len(ans))]  # below this, more than 10% of answerable ones would be declined
    below = [s for s in una if s < allowed]
    floor = round((max(below) + allowed) / 2, 3) if below else allowed
    return {"floor": floor, "answerable_declined": round(sum(s < floor for s in ans) / len(ans), 3),
            "unanswerable_declined": round(sum(s < floor for s in una) / len(una), 3)}


def run_answers(workdir: Path, chunk_tokens: int, overlap: int, k: int = 5) -> dict:
    """Every question through `Assistant.ask` on the bundled model (the index from `run`)."""
    import mmsdk

    index = DocumentIndex(workdir / "eval.db", chunk_tokens=chunk_tokens, overlap=overlap)
    rows = support_scores(index, k)
    calibration = calibrate(rows)
    print("support floor calibration:", calibration, file=sys.stderr)
    asst = mmsdk.load()
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        result = asst.ask(r["question"], index, k=k, max_tokens=48)
        r.update(answerable=r["phrase"] is not None, mode=result.mode, answer=result.text,
                 correct=r["phrase"] is not None and _norm(r["phrase"]) in _norm(result.text),
                 echo=result.mode != "declined" and echoes(result.text, INSTRUCTION))  # a decline says NOT_FOUND as told
        print(f"  {i + 1}/{len(rows)} {r['mode']} {r['correct']}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    index.close()
    ans, una = [r for r in rows if r["answerable"]], [r for r in rows if not r["answerable"]]
    return {"answerable": len(ans), "unanswerable": len(una), "seconds": round(seconds, 1),
            "accuracy": round(sum(r["correct"] for r in ans) / len(ans), 3),
            "top_chunk_floor": round(sum(r["floor"] for r in ans) / len(ans), 3),
            "echoes": sum(r["echo"] for r in rows),
            "modes": {m: sum(r["mode"] == m for r in ans) for m in ("model", "extractive", "declined")},
            "answerable_declined": round(sum(r["mode"] == "declined" for r in ans) / len(ans), 3),
            "unanswerable_declined": round(sum(r["mode"] == "declined" for r in una) / len(una), 3),
            "calibration": calibration,
            "support": {"answerable": sorted(r["support"] for r in ans),
                        "unanswerable": sorted(r["support"] for r in una)},
            "rows": rows}


def bench_draft(workdir: Path, chunk_tokens: int, overlap: int, k: int = 5, rounds: int = 3) -> dict:
    """`ask`'s generation with prompt-lookup drafting (its default) against plain greedy decoding, on the
    prompts `ask` builds for the answerable questions: alternating per question, `rounds` rounds, the
    replies compared, medians of the total time."""
    import mmsdk
    from mmsdk.rag.prompt import build_completion_prompt

    index = DocumentIndex(workdir / "eval.db", chunk_tokens=chunk_tokens, overlap=overlap)
    asst = mmsdk.load()
    prompts = [build_completion_prompt(q, [(h.source, h.location, h.text) for h in index.search(q, k=k)])
               for q, _, _ in QUESTIONS]
    index.close()
    times, same, tokens = {"plain": [], "lookup": []}, True, 0
    for _ in range(rounds):
        total = {"plain": 0.0, "lookup": 0.0}
        for i, prompt in enumerate(prompts):
            replies = {}
            ways = (("plain", False), ("lookup", "lookup"))
            for way, draft in ways if i % 2 else ways[::-1]:  # either goes first half the time
                t = time.perf_counter()
                replies[way] = asst.generate(prompt, max_tokens=64, stop=["\n"], temperature=0, parse_special=False,
                                             draft=draft)
                total[way] += time.perf_counter() - t
            same &= replies["plain"] == replies["lookup"]
            tokens += len(asst.tokenizer.encode(replies["plain"], add_bos=False))
        for way in times:
            times[way].append(total[way])
    plain, lookup = statistics.median(times["plain"]), statistics.median(times["lookup"])
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "questions": len(prompts),
            "reply_tokens": tokens // rounds, "plain_s": round(plain, 2), "lookup_s": round(lookup, 2),
            "speedup": round(plain / lookup, 2), "identical": same}


def _check_phrases(index: DocumentIndex):
    """Every phrase must appear in some stored chunk of its topic, or the question is unanswerable."""
    rows = index._store.conn.execute("SELECT s.path, c.text FROM chunks c JOIN sources s ON s.id = c.source_id").fetchall()
    by_topic = {}
    for path, text in rows:
        by_topic.setdefault(Path(path).stem, []).append(_norm(text))
    for question, topic, phrase in QUESTIONS:
        if not any(_norm(phrase) in t for t in by_topic.get(topic, [])):
            print(f"warning: no chunk of {topic!r} holds the phrase for {question!r}", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--workdir", help="keep the corpus and index here (default: a temporary folder)")
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--overlap", type=int, default=40)
    parser.add_argument("--rerank", type=int, default=0, metavar="N",
                        help="also rerank hybrid's best N by the bundled model's query likelihood (N 5-10)")
    parser.add_argument("--answers", action="store_true", help="also ask the bundled model every question")
    parser.add_argument("--draft", action="store_true",
                        help="also time ask's replies with prompt-lookup drafting against plain decoding")
    parser.add_argument("--float32", action="store_true", help="index with rag's plain float32 embedder, not mmsdk's int8 one")
    parser.add_argument("--bench-embedders", action="store_true",
                        help="also time the int8 and float32 embedders side by side on the indexed chunks")
    parser.add_argument("--bench-indexing", action="store_true",
                        help="also time indexing a file at a time (add) against add_many, alternating")
    parser.add_argument("--bench-rounds", type=int, default=3, help="timed passes of each embedder (median)")
    parser.add_argument("--threads", type=int, help="torch threads (default torch's); 1 compares fairly on a shared machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        report = run(Path(args.workdir or tmp), args.chunk_tokens, args.overlap, args.float32, args.rerank)
        if args.bench_embedders:
            with DocumentIndex(Path(args.workdir or tmp) / "eval.db", SentenceTransformerEmbedder()) as index:
                report["embedders"] = bench_embedders(index, args.bench_rounds)
        if args.bench_indexing:
            report["indexing"] = bench_indexing(rag_corpus.build(Path(args.workdir or tmp) / "corpus"),
                                                Path(args.workdir or tmp), args.bench_rounds)
        if args.draft:
            report["draft"] = bench_draft(Path(args.workdir or tmp), args.chunk_tokens, args.overlap,
                                          rounds=args.bench_rounds)
        if args.answers:
            report["answers"] = run_answers(Path(args.workdir or tmp), args.chunk_tokens, args.overlap)
    print(f"corpus: {report['files']} files {report['formats']}, {report['chunks']} chunks, "
          f"indexed with the {report['embedder']} embedder in {report['index_seconds']} s = {report['chunks_per_s']} "
          f"chunks/s on {report['cpu']}; {report['questions']} questions")
    if "embedders" in report:
        e = report["embedders"]
        print(f"embedders on {e['cpu']} ({e['threads']} threads, int8 via {e['int8_kernel']}), {e['chunks']} chunks: "
              f"int8 {e['int8_chunks_per_s']} chunks/s, float32 {e['float32_chunks_per_s']} chunks/s; "
              f"cosine int8 vs float32 min {e['cosine_min']} mean {e['cosine_mean']}")
    if "indexing" in report:
        b = report["indexing"]
        print(f"indexing on {b['cpu']} ({b['threads']} threads), {b['chunks']} chunks: a file at a time "
              f"{b['add_chunks_per_s']} chunks/s {b['add_seconds']}, add_many {b['add_many_chunks_per_s']} chunks/s "
              f"{b['add_many_seconds']}; cosine of stored rows min {b['cosine_min']}")
    print(f"{'mode':13} {'R@1':>6} {'R@5':>6} {'MRR':>6} {'p50 ms':>8} {'p95 ms':>8}")
    for mode, m in report["modes"].items():
        print(f"{mode:13} {m['recall@1']:6.3f} {m['recall@5']:6.3f} {m['mrr@10']:6.3f} {m['p50_ms']:8.1f} {m['p95_ms']:8.1f}")
    for mode, m in report["modes"].items():
        for q in m["missed"]:
            print(f"  {mode} missed@5: {q}")
    print("top-hit cosine:", report["top_similarity"])
    if "draft" in report:
        d = report["draft"]
        print(f"ask's replies on {d['cpu']} ({d['threads']} threads), {d['questions']} prompts, {d['reply_tokens']} "
              f"reply tokens: plain {d['plain_s']} s, prompt lookup {d['lookup_s']} s ({d['speedup']}x); "
              f"replies identical: {d['identical']}")
    if "answers" in report:
        a = report["answers"]
        for r in a["rows"]:
            mark = "ok " if r["correct"] else "   " if r["answerable"] else "n/a"
            print(f"  {mark} {r['mode']:10} sup={r['support']} {r['question'][:50]!r} -> {r['answer'][:90]!r}")
        print(f"answers ({a['answerable']} answerable, {a['unanswerable']} unanswerable, {a['seconds']} s): "
              f"accuracy {a['accuracy']} vs top-chunk floor {a['top_chunk_floor']}; echoes {a['echoes']}; "
              f"modes {a['modes']}; declined: answerable {a['answerable_declined']}, "
              f"unanswerable {a['unanswerable_declined']}")
        print("support floor calibrated on this set:", a["calibration"])
        print("best-sentence support, answerable:", a["support"]["answerable"])
        print("best-sentence support, unanswerable:", a["support"]["unanswerable"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
