"""`mmsdk demo`: each capability the bundled models have, run once on real inputs."""
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path


def _title(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def text(asst) -> None:
    _title("generate")
    prompt = "The capital of France is the city of"
    print(f"{prompt}{asst.generate(prompt, max_tokens=10)}")
    _title("stream")
    prompt = "Here is a short list of three fruits:"
    print(prompt, end="", flush=True)
    t, n = time.perf_counter(), 0
    for piece in asst.stream(prompt, max_tokens=40):
        print(piece, end="", flush=True)
        n += 1
    print(f"\n({n} pieces, {n / (time.perf_counter() - t):.1f} per second)")


def speech(asst) -> None:
    _title("transcribe (bundled Whisper base)")
    clip = resources.files("mmsdk").joinpath("data/speech_sample.ogg")
    with resources.as_file(clip) as path:
        t = time.perf_counter()
        result = asst.transcribe_audio(path)
    for start, end, words in result.segments:
        print(f"[{start:5.2f}-{end:5.2f}] {words}")
    print(f"({time.perf_counter() - t:.1f} s)")


def documents(asst) -> None:
    import pydoc_data.topics as topics

    from .documents import DocumentIndex

    _title("documents (bundled all-MiniLM-L6-v2, SQLite)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("for", "while", "try", "with", "lambda"):
            Path(tmp, f"{name}.txt").write_text(topics.topics[name])
        with DocumentIndex(Path(tmp, "docs.db")) as index:
            for f in sorted(Path(tmp).glob("*.txt")):
                index.add(f)
            question = "What does the else clause of a for loop do?"
            print(f"Q: {question}")
            for hit in index.search(question, k=2):
                print(f"  hit {hit.source}: {hit.text[:90].strip()!r}...")
            result = asst.ask(question, index, k=3, max_tokens=48)
            print(f"A: {result.text.strip()}")
            print("   sources: " + ", ".join(Path(h.source).name for h in result.citations))


def tools(asst) -> None:
    _title("tools (constrained decoding: every call parses)")

    def get_weather(city: str, unit: str = "celsius") -> dict:
        """Current weather for a city.

        Args:
            city: the city name, e.g. "Paris".
            unit: "celsius" or "fahrenheit".
        """
        return {"city": city, "temperature": 18, "unit": unit}

    question = "What is the weather in Paris right now?"
    reply = asst.chat([{"role": "user", "content": question}], tools=[get_weather], tool_choice="required",
                      max_tokens=48)
    print(f"Q: {question}")
    for call in reply.tool_calls:
        print(f"  call: {call.name}({call.arguments}) -> {get_weather(**call.arguments)}")


PARTS = [text, speech, documents, tools]


def run(asst) -> int:
    """Run every part; returns how many failed."""
    failed = 0
    for part in PARTS:
        try:
            part(asst)
        except Exception as e:  # one capability failing must not hide the others
            failed += 1
            print(f"mmsdk: error: demo part {part.__name__!r} failed: {type(e).__name__}: {e}", file=sys.stderr)
    return failed
