"""Load test of `mmsdk serve` on loopback: a bounded number of mixed requests (chat, streamed chat,
tool calls, embeddings, transcription, bad requests) from `--concurrency` client threads, against a
server process this script starts and stops. It checks that every request got its own answer (greedy
chat replies equal the ones the idle server gave for the same prompt), that every bad request got a
4xx, and reports latency p50/p95 per kind, throughput and the server's RSS before and after.

    python tests/eval/load_server.py --requests 300 --concurrency 8 [--passes 2]
    python tests/eval/load_server.py --decode-rate     # 1 stream vs 4 at once, and a 5th's time to first token
    python tests/eval/load_server.py --prefix          # a prompt sharing a ~1,000-token prefix: warm vs cold
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

AUDIO = Path(__file__).parents[1] / "fixtures" / "audio" / "c01_enus_16k.wav"
PROMPTS = ["Name a colour.", "Write one word about the sea.", "Say hello.", "What is two plus two?",
           "Describe a cat.", "Give me a fruit."]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def status_value(pid: int, key: str) -> int:
    """A number from /proc/PID/status (kB for the memory lines)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    return status_value(pid, key) / 1024


def rss_parts(pid: int) -> str:
    """Anonymous (heap, stacks) and file-backed (mapped weights, libraries' code) resident MB, and threads."""
    return (f"anonymous {rss_mb(pid, 'RssAnon'):.0f}, file-backed {rss_mb(pid, 'RssFile'):.0f}, "
            f"{status_value(pid, 'Threads')} threads")


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mmsdk.cli", "serve", "--port", str(port), "--max-concurrency",
           str(args.max_concurrency), "--max-queue", str(args.concurrency * 2), "--threads", str(args.threads)]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # up, and done loading the embedder and speech model (measured apart from that)
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200 and not json.loads(r.read())["warming"]:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not come up")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8, help="client threads")
    ap.add_argument("--passes", type=int, default=1, help="run the same requests this many times, RSS after each")
    ap.add_argument("--max-concurrency", type=int, default=4, help="the server's --max-concurrency")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model")
    ap.add_argument("--url", help="with --decode-rate or --prefix: measure this running OpenAI-compatible server "
                                  "instead (e.g. llama-server --parallel 4 on the same GGUF), not one started here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-rate", action="store_true",
                    help="instead: aggregate decode tok/s of 1 and of 4 concurrent streams, and the time to "
                         "first token of a new request while 4 run")
    ap.add_argument("--prefix", action="store_true",
                    help="instead: time to first token of a prompt sharing a ~1,000-token prefix with the one "
                         "before (the prefix cache) against a prompt of new text, alternating, 3 rounds")
    args = ap.parse_args()
    if args.decode_rate:
        args.max_concurrency = max(args.max_concurrency, 5)

    if args.url and (args.decode_rate or args.prefix):
        client = openai.OpenAI(base_url=f"{args.url}/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        return decode_rate(client, model, args) if args.decode_rate else prefix_reuse(client, model)
    proc, url = start_server(args)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    model = client.models.list().data[0].id

    def chat(prompt, **kw):
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                              max_tokens=args.max_tokens, temperature=0, **kw)

    if args.decode_rate or args.prefix:
        try:
            return decode_rate(client, model, args) if args.decode_rate else prefix_reuse(client, model)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    try:
        # Warm every path once, and take each prompt's reply from the idle server as the reference
        expected = {p: chat(p).choices[0].message.content for p in PROMPTS}
        client.embeddings.create(model="all-MiniLM-L6-v2", input="warm")
        with open(AUDIO, "rb") as f:
            client.audio.transcriptions.create(model="whisper-base", file=f)
        rss_before, parts = rss_mb(proc.pid), [rss_parts(proc.pid)]

        def one(i: int, kind: str) -> tuple[str, float, str | None]:
            """(kind, seconds, problem or None)."""
            prompt = PROMPTS[i % len(PROMPTS)]
            t = time.perf_counter()
            try:
                if kind == "chat":
                    got = chat(prompt).choices[0].message.content
                    problem = None if got == expected[prompt] else f"reply to {prompt!r} differs: {got!r}"
                elif kind == "stream":
                    got = "".join(c.choices[0].delta.content or "" for c in chat(prompt, stream=True) if c.choices)
                    problem = None if got == expected[prompt] else f"streamed reply to {prompt!r} differs: {got!r}"
                elif kind == "tools":
                    r = client.chat.completions.create(  # room for the whole call block
                        model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}], max_tokens=48,
                        temperature=0, tools=[WEATHER], tool_choice="required")
                    calls = r.choices[0].message.tool_calls or []
                    problem = None if calls and json.loads(calls[0].function.arguments).get("city") else "no call"
                elif kind == "embeddings":
                    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=[prompt, f"request {i}"])
                    problem = None if len(r.data) == 2 and len(r.data[0].embedding) == 384 else "bad vectors"
                elif kind == "transcription":
                    with open(AUDIO, "rb") as f:
                        text = client.audio.transcriptions.create(model="whisper-base", file=f).text
                    problem = None if "fox" in text.lower() else f"transcript {text!r}"
                else:  # bad: must be a 4xx, never a 5xx or an answer
                    bad = random.Random(i).choice([dict(messages=[]), dict(temperature=-1), dict(model="nope"),
                                                   dict(top_p=0), dict(frequency_penalty=1)])
                    kw = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **bad}
                    try:
                        client.chat.completions.create(**kw)
                        problem = f"bad request {bad} was answered"
                    except openai.APIStatusError as e:
                        problem = None if 400 <= e.status_code < 500 else f"bad request {bad}: {e.status_code}"
            except Exception as e:  # noqa: BLE001 - counted as a lost request
                problem = f"{type(e).__name__}: {e}"
            return kind, time.perf_counter() - t, problem

        kinds = ["chat"] * 3 + ["stream"] * 3 + ["tools", "embeddings", "transcription", "bad"]
        rnd = random.Random(args.seed)
        jobs = [(i, rnd.choice(kinds)) for i in range(args.requests)]
        results, rss_after = [], []
        t0 = time.perf_counter()
        for _ in range(args.passes):  # the same requests again: growth that stops after the first pass is no leak
            with ThreadPoolExecutor(args.concurrency) as pool:
                results += pool.map(lambda j: one(*j), jobs)
            time.sleep(1)
            rss_after.append(rss_mb(proc.pid))
            parts.append(rss_parts(proc.pid))
        wall = time.perf_counter() - t0 - args.passes
        health = json.loads(urllib.request.urlopen(f"{url}/health").read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    problems = [(k, p) for k, _, p in results if p]
    print(f"{len(results)} requests ({args.passes} x {args.requests}) at concurrency {args.concurrency} (server --max-concurrency "
          f"{args.max_concurrency}, --threads {args.threads}, max_tokens {args.max_tokens}) in {wall:.1f} s")
    for kind in sorted({k for _, k in jobs}):
        times = sorted(s for k, s, _ in results if k == kind)
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        print(f"  {kind:13s} n={len(times):3d}  p50 {statistics.median(times):6.2f} s  p95 {p95:6.2f} s")
    print(f"problems: {len(problems)}")
    for k, p in problems[:10]:
        print(f"  {k}: {p}")
    after = ", ".join(f"{r:.0f} MB after pass {i + 1} ({r / rss_before - 1:+.1%})" for i, r in enumerate(rss_after))
    print(f"server RSS: {rss_before:.0f} MB before, {after}; health after: {health}")
    print("  of which: " + "; ".join(f"{w} {p}" for w, p in zip(["before", *(f"pass {i + 1}" for i in range(len(rss_after)))], parts)))
    return 1 if problems else 0


def prefix_reuse(client, model: str, rounds: int = 3) -> int:
    """Each round: a new document (~1,000 tokens of the CPython docs) with a question, cold; then the same
    document with another question, which the prefix cache starts from where they part."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    client.completions.create(model=model, prompt="warm up", max_tokens=1, temperature=0)
    cold, warm = [], []
    for r in range(rounds):
        doc = text[20_000 * (r + 1):20_000 * (r + 1) + 4_400]
        for question, times in (("What is this about?", cold), ("Which keyword does it name first?", warm)):
            t = time.perf_counter()
            out = client.completions.create(model=model, prompt=f"{doc}\n\nQuestion: {question}\nAnswer:",
                                            max_tokens=1, temperature=0)
            times.append(time.perf_counter() - t)
        print(f"round {r}: prompt {out.usage.prompt_tokens} tokens, cold {cold[-1]:.2f} s, shared prefix "
              f"{warm[-1]:.2f} s")
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"time to first token, median: cold {c:.2f} s, shared prefix {w:.2f} s: {c / w:.1f}x sooner")
    return 0


def decode_rate(client, model: str, args) -> int:
    """Tokens per second of streams decoding at once (after their first token, so prefill is not
    counted), for 1 and for 4 streams; then a 5th request's time to first token while 4 run."""
    n = max(args.max_tokens, 64)

    def stream(prompt: str, out: list, started: threading.Event | None = None):
        t0 = time.perf_counter()
        times = []
        for c in client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True}):  # llama-server's; others ignore it
            if c.choices and c.choices[0].text:
                times.append(time.perf_counter())
                if started is not None and len(times) == 1:
                    started.set()
        out.append((t0, times))

    client.completions.create(model=model, prompt="warm up", max_tokens=4, temperature=0)
    rates = {}
    for k in (1, 4):
        out: list = []
        threads = [threading.Thread(target=stream, args=(f"{PROMPTS[i]} Story {i}:", out)) for i in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first, last = max(ts[0] for _, ts in out), min(ts[-1] for _, ts in out)  # the span all k decode together
        tokens = sum(sum(first <= x <= last for x in ts) for _, ts in out)
        rates[k] = (tokens - k) / (last - first)  # the intervals between pieces inside the span
        print(f"{k} stream(s): {rates[k]:.1f} tok/s aggregate (pieces per stream: {[len(ts) for _, ts in out]}, "
              f"{n} tokens asked)")
    print(f"4 streams / 1 stream: {rates[4] / rates[1]:.2f}x")
    out, started = [], [threading.Event() for _ in range(4)]
    threads = [threading.Thread(target=stream, args=(f"{PROMPTS[i]} Story {i}:", out, started[i])) for i in range(4)]
    for t in threads:
        t.start()
    for e in started:
        e.wait()
    t = time.perf_counter()
    first = next(iter(client.completions.create(model=model, prompt="A new request arrives while four run: " * 8,
                                                max_tokens=1, temperature=0, stream=True)))
    print(f"time to first token of a new request while 4 stream: {time.perf_counter() - t:.2f} s ({first.id})")
    for th in threads:
        th.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
