"""Tool calls and structured output on the bundled model: how many parse and validate, constrained
and not, decode speed with and without the grammar, and the grammar's cost per token.

    python tests/eval/eval_tools.py                 # 100 tool calls + 100 schema outputs, constrained
    python tests/eval/eval_tools.py --unconstrained # also the same prompts without the grammar
    python tests/eval/eval_tools.py --engines       # mask cost of llguidance / xgrammar / outlines-core
"""
import argparse
import enum
import json
import logging
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import pydantic
import torch

import mmsdk
from mmsdk import tool_format_gemma as fmt
from mmsdk.constrained import GrammarConstraint, json_grammar
from mmsdk.tool_schema import output_schema, tool_spec


# ---- tools --------------------------------------------------------------------------------------
class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"
    JPY = "JPY"


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Current weather for a city.

    Args:
        city: The city name.
        unit: Temperature unit.
    """


def calculate(a: float, b: float, op: Literal["+", "-", "*", "/"]) -> float:
    """Apply an arithmetic operation to two numbers."""


def search_files(pattern: str, folder: str = ".", max_results: int = 10) -> list:
    """Find files whose name matches a glob pattern.

    Args:
        pattern: Glob pattern such as *.txt.
        folder: Where to search.
        max_results: At most this many paths.
    """


def send_email(to: str, subject: str, body: str, cc: Optional[list[str]] = None) -> bool:
    """Send an email."""


def create_event(title: str, date: str, attendees: list[str], all_day: bool = False) -> str:
    """Add an event to the calendar.

    Args:
        date: ISO date, YYYY-MM-DD.
    """


def set_alarm(hour: int, minute: int = 0, label: str | None = None) -> str:
    """Set an alarm clock."""


def convert_currency(amount: float, source: Currency, target: Currency) -> float:
    """Convert money between currencies."""


@dataclass
class Address:
    street: str
    city: str
    zip_code: str


def ship_package(weight_kg: float, address: Address, express: bool = False) -> str:
    """Ship a package to an address."""


def get_time() -> str:
    """The current time."""


TOOLSETS = [
    ([get_weather, calculate, get_time], ["What's the weather in {city}?", "What is 17 times 23?",
                                          "What time is it?", "Is it cold in {city} today, in fahrenheit?"]),
    ([search_files, calculate], ["Find all PDF files in {folder}.", "Add 2.5 and 4.75.", "List the *.py files."]),
    ([send_email, create_event, set_alarm], ["Email {name} that the meeting moved to Friday.",
                                             "Wake me up at 7:30.", "Schedule lunch with {name} on 2025-03-14."]),
    ([convert_currency, ship_package], ["How many yen is 50 euros?", "Ship a 2 kg box to 1 Main St, {city}, 10001.",
                                        "Convert 20 USD to EUR."]),
]
CITIES = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Seoul", "Quito", "Perth", "Riga"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli"]
FOLDERS = ["~/docs", "/tmp", "reports", "./data", "~/Downloads"]


# ---- schemas -------------------------------------------------------------------------------------
class City(pydantic.BaseModel):
    name: str
    country: str
    population: int


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0, le=150)
    email: Optional[str] = None


class Recipe(pydantic.BaseModel):
    title: str
    ingredients: list[str] = pydantic.Field(min_length=1)
    minutes: int


class Review(pydantic.BaseModel):
    rating: Literal[1, 2, 3, 4, 5]
    summary: str
    pros: list[str]
    recommend: bool


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"
    NEUTRAL = "neutral"


class Sentiment(pydantic.BaseModel):
    mood: Mood
    confidence: float = pydantic.Field(ge=0, le=1)


class Item(pydantic.BaseModel):
    name: str
    quantity: int = pydantic.Field(ge=1)


class Order(pydantic.BaseModel):
    items: list[Item]
    total: float
    paid: bool


@dataclass
class Point:
    x: float
    y: float


class Event(pydantic.BaseModel):
    title: str
    date: str = pydantic.Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    location: Optional[str] = None


SCHEMAS = [
    (City, "Give facts about {city} as JSON."),
    (Person, "Describe a person named {name} as JSON."),
    (Recipe, "A quick recipe for pancakes, as JSON."),
    (Review, "Review the film Metropolis as JSON."),
    (Sentiment, "How does this sound: 'I lost my keys again in {city}.'"),
    (Order, "An order of two apples and a bread, 4.50 total, paid."),
    (Point, "A point on the plane near the origin."),
    (Event, "A concert in {city} on 2025-06-21."),
    (list[str], "List three colors."),
    (dict[str, int], "Ages of {name} and her two brothers."),
]


def tool_cases(n: int):
    for i in range(n):
        tools, prompts = TOOLSETS[i % len(TOOLSETS)]
        p = prompts[(i // len(TOOLSETS)) % len(prompts)]
        yield tools, p.format(city=CITIES[i % len(CITIES)], name=NAMES[i % len(NAMES)], folder=FOLDERS[i % len(FOLDERS)])


def schema_cases(n: int):
    for i in range(n):
        schema, p = SCHEMAS[i % len(SCHEMAS)]
        yield schema, p.format(city=CITIES[(i // len(SCHEMAS)) % len(CITIES)], name=NAMES[i % len(NAMES)])


# ---- measuring -----------------------------------------------------------------------------------
class StepClock:
    """A no-op processor that notes when each token's logits are ready: decode time without prefill."""

    def __init__(self):
        self.times, self.ids = [], []

    def __call__(self, logits, generated):
        self.times.append(time.perf_counter())
        self.ids = generated
        return logits

    def decode_rate(self) -> tuple[int, float]:
        return max(len(self.times) - 1, 0), (self.times[-1] - self.times[0]) if len(self.times) > 1 else 0.0


def tool_ok(reply, tools) -> bool:
    specs = {s.name: s for s in map(tool_spec, tools)}
    if not reply.tool_calls:
        return False
    try:
        return all(c.name in specs and specs[c.name].validate(c.arguments) is not None for c in reply.tool_calls)
    except (pydantic.ValidationError, TypeError):
        return False


def mask_cost(tokenizer, grammar: str, ids: list[int]) -> list[float]:
    """Seconds the grammar processor takes for each token of `ids`, replayed with dummy logits."""
    con, logits, out = GrammarConstraint(tokenizer, grammar), torch.zeros(tokenizer.vocab_size), []
    for i in range(len(ids)):
        t0 = time.perf_counter()
        con(logits, ids[:i])
        out.append(time.perf_counter() - t0)
    return out


def run(asst, n_tools: int, n_schemas: int, constrained: bool, max_tokens: int) -> dict:
    ok, total, tokens, seconds, masks, failures = 0, 0, 0, 0.0, [], []
    cases = [("tool", t, p) for t, p in tool_cases(n_tools)] + [("schema", s, p) for s, p in schema_cases(n_schemas)]
    for k, (kind, arg, prompt) in enumerate(cases):
        clock = StepClock()
        msgs = [{"role": "user", "content": prompt}]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "tool":
                reply = asst.chat(msgs, tools=arg, tool_choice="required", constrained=constrained,
                                  processors=[clock], max_tokens=max_tokens)
                good = tool_ok(reply, arg)
                grammar = fmt.call_grammar([tool_spec(t) for t in arg], "required")
            else:
                reply = asst.chat(msgs, schema=arg, constrained=constrained, processors=[clock], max_tokens=max_tokens)
                good = reply.parsed is not None
                grammar = json_grammar(output_schema(arg)[0])
        n, dt = clock.decode_rate()
        tokens, seconds, total, ok = tokens + n, seconds + dt, total + 1, ok + good
        if constrained and clock.ids:
            masks += mask_cost(asst.tokenizer, grammar, [t for t in clock.ids if t not in asst.tokenizer.eos_ids])
        if not good:
            failures.append({"kind": kind, "prompt": prompt, "text": reply.text, "finish": reply.finish_reason})
        print(f"[{k + 1}/{len(cases)}] {kind:6s} {'ok ' if good else 'BAD'} {reply.usage.completion_tokens:3d} tok "
              f"{(reply.text or str(reply.tool_calls))[:90]!r}", file=sys.stderr)
    res = {"constrained": constrained, "cases": total, "parse_and_validate": ok, "rate": ok / max(total, 1),
           "decode_tokens": tokens, "decode_tok_s": tokens / seconds if seconds else 0.0, "failures": failures[:10]}
    if masks:
        res["mask_ms_mean"] = 1e3 * statistics.fmean(masks)
        res["mask_ms_p50"] = 1e3 * statistics.median(masks)
        res["mask_ms_p99"] = 1e3 * sorted(masks)[int(0.99 * (len(masks) - 1))]
    print(json.dumps({k: v for k, v in res.items() if k != "failures"}), file=sys.stderr, flush=True)
    return res


def _hf_tokenizer(tokenizer):
    """A `tokenizers` tokenizer for the engines that take one (xgrammar, outlines-core)."""
    return tokenizer.tok if hasattr(tokenizer, "tok") else tokenizer.as_tokenizers()


def engines(tokenizer) -> dict:
    """Per-token mask cost of the three engines over one JSON document, on our tokenizer."""
    import numpy as np

    schema = output_schema(Order)[0]
    doc = json.dumps({"items": [{"name": "apple", "quantity": 2}, {"name": "bread", "quantity": 1}],
                      "total": 4.5, "paid": True})
    ids, out, tok, eos = tokenizer.encode(doc, add_bos=False), {}, _hf_tokenizer(tokenizer), list(tokenizer.eos_ids)

    def timed(setup, step):
        t0 = time.perf_counter()
        state = setup()
        compile_s, costs = time.perf_counter() - t0, []
        for t in ids:
            t0 = time.perf_counter()
            step(state, t)
            costs.append(time.perf_counter() - t0)
        return {"setup_s": round(compile_s, 3), "mask_ms_mean": round(1e3 * statistics.fmean(costs), 3),
                "mask_ms_max": round(1e3 * max(costs), 3)}

    import llguidance
    from mmsdk.constrained import llg_tokenizer
    llg_tokenizer(tokenizer)  # its one-off build (~2 s) is reported by the log, not counted per schema
    g = llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": True})
    bm = np.zeros((tokenizer.vocab_size + 31) // 32, dtype=np.int32)

    def llg_step(m, t):
        m.unsafe_compute_mask_ptr(bm.ctypes.data, bm.nbytes)
        m.consume_token(t)
    out["llguidance"] = timed(lambda: llguidance.LLMatcher(llg_tokenizer(tokenizer), g), llg_step)
    try:
        import xgrammar as xg
        from transformers import PreTrainedTokenizerFast
        info = xg.TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_object=tok),
                                                 vocab_size=tokenizer.vocab_size, stop_token_ids=eos)
        compiler, xbm = xg.GrammarCompiler(info), xg.allocate_token_bitmask(1, tokenizer.vocab_size)

        def xg_step(m, t):
            m.fill_next_token_bitmask(xbm)
            m.accept_token(t)
        out["xgrammar"] = timed(lambda: xg.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema))), xg_step)
    except ImportError as e:
        out["xgrammar"] = f"not installed ({e})"
    try:
        import outlines_core as oc
        from outlines_core.json_schema import build_regex_from_schema
        vocab = {}
        for s, i in tok.get_vocab(with_added_tokens=True).items():
            if i not in eos:
                b = bytes([int(s[3:5], 16)]).decode("latin-1") if len(s) == 6 and s.startswith("<0x") else s
                vocab.setdefault(b.replace("\u2581", " "), []).append(i)
        voc = oc.Vocabulary(eos[0], vocab)
        out["outlines-core"] = timed(lambda: oc.Guide(oc.Index(build_regex_from_schema(json.dumps(schema)), voc)),
                                     lambda gd, t: (gd.get_tokens(), gd.advance(t)))
    except ImportError as e:
        out["outlines-core"] = f"not installed ({e})"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", type=int, default=100, help="tool-call cases")
    ap.add_argument("--schemas", type=int, default=100, help="schema-output cases")
    ap.add_argument("--unconstrained", action="store_true", help="also run the same cases without the grammar")
    ap.add_argument("--engines", action="store_true", help="only compare the grammar engines' mask cost")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asst = mmsdk.load(threads=args.threads)
    if args.engines:
        results = {"engines": engines(asst.tokenizer)}
    else:
        results = {"constrained": run(asst, args.tools, args.schemas, True, args.max_tokens)}
        if args.unconstrained:
            results["unconstrained"] = run(asst, args.tools, args.schemas, False, args.max_tokens)
            u, c = results["unconstrained"], results["constrained"]
            if c["decode_tok_s"]:
                results["slowdown"] = u["decode_tok_s"] / c["decode_tok_s"]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
