"""`mmsdk serve` against the official `openai` client: one real server process on a free loopback
port, the bundled Gemma 3 270M, the bundled embedder and speech model; every endpoint, streaming,
a tool round trip, json_schema, errors, a full queue and a client that goes away mid-stream."""
import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import urllib.error
import urllib.request

import openai
import pytest

MODEL = "gemma-3-270m"
KEY = "sk-test-key"
AUDIO = Path(__file__).parent / "fixtures" / "audio" / "c01_enus_16k.wav"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, folder it may read images from) of one server for the whole file: two sequences
    at once, one waiting."""
    folder = tmp_path_factory.mktemp("serve")
    port, log, allowed = free_port(), folder / "server.log", folder / "allowed"
    allowed.mkdir()
    cmd = [sys.executable, "-m", "mmsdk.cli", "serve", "--port", str(port), "--api-key", KEY, "--threads", "2",
           "--max-concurrency", "2", "--max-queue", "1", "--max-body-mb", "1", "--allow-files", str(allowed)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if http(f"{url}/health")[0] == 200:
                    break
            except OSError:  # not listening yet
                time.sleep(0.5)
        else:
            pytest.fail(f"server did not come up: {log.read_text()[-2000:]}")
        yield url, allowed
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


def http(url: str, body: bytes | None = None, headers=None) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or a POST of `body`, with the standard library's client."""
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(server) -> dict:
    return http(f"{server[0]}/health")[1]


def status_of(call) -> tuple[int, str]:
    with pytest.raises(openai.APIStatusError) as e:
        call()
    body = e.value.body if isinstance(e.value.body, dict) else {}
    assert set(body) >= {"message", "type"}, body  # OpenAI's error object
    return e.value.status_code, body["message"]


def test_models_and_health(server, client):
    assert health(server)["status"] == "ok"
    ids = [m.id for m in client.models.list()]
    assert ids[0] == MODEL and "all-MiniLM-L6-v2" in ids and "whisper-base" in ids


def test_chat_streamed_equals_whole(client):
    ask = dict(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Name three colours."}],
               max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**ask)
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 10
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same tokens, streamed or not
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sampling_options_and_logprobs(client):
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=6,
               temperature=0.9, top_p=0.9, seed=7, logprobs=True, top_logprobs=3, stop=["\n\n"])
    a, b = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    assert a.choices[0].message.content == b.choices[0].message.content  # a seed makes sampling repeatable
    lp = a.choices[0].logprobs.content
    assert len(lp) == a.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in lp)
    assert all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.logprob for t in lp)


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required",
                                       max_tokens=40, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21, "sky": "clear"})}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none",
                                            max_tokens=8, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.tool_calls is None
    assert answer.usage.prompt_tokens > r.usage.prompt_tokens + 10  # the call and its result are in the prompt
    named = client.chat.completions.create(model=MODEL, messages=messages[:1], tools=[WEATHER], stream=True,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                           max_tokens=40, temperature=0)
    calls = [tc for c in named if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments)


def test_json_schema_is_valid(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"name", "age"} and isinstance(obj["name"], str) and isinstance(obj["age"], int)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Any JSON."}],
                                       max_tokens=30, temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_completions(client):
    ask = dict(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    whole = client.completions.create(**ask)
    assert whole.usage.prompt_tokens == 6 and whole.usage.completion_tokens == 8  # BOS + 5 words; max_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(**ask, stream=True))
    assert streamed == whole.choices[0].text


def test_embeddings(client):
    texts = ["A cat sat on the mat.", "A kitten sat on the rug.", "Quarterly revenue grew by four percent."]
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the client asks for base64
    v = [d.embedding for d in r.data]
    assert len(v) == 3 and len(v[0]) == 384 and r.usage.prompt_tokens > 10

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))
    assert abs(dot(v[0], v[0]) - 1) < 1e-3  # normalized rows
    assert dot(v[0], v[1]) > dot(v[0], v[2]) + 0.2  # the paraphrase is the nearer
    one = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0]).data[0].embedding
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, one)) < 1e-6  # float32 both ways
    # alone or in a batch (padded, the int8 GEMMs blocked otherwise): the same vector to ~2e-5; a
    # dropped attention mask takes its cosine to ~0.5
    assert max(abs(a - b) for a, b in zip(one, v[0])) < 1e-4


def test_transcription(client):
    with open(AUDIO, "rb") as f:
        t = client.audio.transcriptions.create(model="whisper-base", file=f, response_format="verbose_json")
    assert "fox" in t.text.lower() and "lazy dog" in t.text.lower()
    assert t.segments and 0 <= t.segments[0].start < t.segments[-1].end <= 6
    with open(AUDIO, "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-base", file=f, response_format="text")
    assert text.strip() == t.text.strip()


def test_errors(server, client):
    user = [{"role": "user", "content": "hi"}]
    assert status_of(lambda: client.chat.completions.create(model=MODEL, messages=[]))[0] == 400
    code, msg = status_of(lambda: client.chat.completions.create(model=MODEL, messages=user, temperature=-1))
    assert code == 400 and "temperature" in msg
    assert status_of(lambda: client.chat.completions.create(model=MODEL, messages=user, presence_penalty=1))[0] == 400
    code, msg = status_of(lambda: client.chat.completions.create(model="gpt-4o", messages=user))
    assert code == 404 and MODEL in msg
    wrong = openai.OpenAI(base_url=f"{server[0]}/v1", api_key="sk-wrong", max_retries=0)
    assert status_of(lambda: wrong.models.list())[0] == 401
    # An image for a text-only model, a real PNG as a data URL
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                          {"type": "image_url", "image_url": {"url": url}}]}]
    code, msg = status_of(lambda: client.chat.completions.create(model=MODEL, messages=image))
    assert code == 400 and "takes no image input" in msg

    def image_at(path):
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(path)}}]}]
    (server[1] / "red.png").write_bytes(buf.getvalue())
    code, msg = status_of(lambda: client.chat.completions.create(model=MODEL, messages=image_at("/etc/passwd")))
    assert code == 400 and "not a file under the allowed folder" in msg
    code, msg = status_of(lambda: client.chat.completions.create(model=MODEL,  # read, then refused by the model
                                                                 messages=image_at(server[1] / "red.png")))
    assert code == 400 and "takes no image input" in msg
    clip = {"type": "input_audio", "input_audio": {"data": base64.b64encode(AUDIO.read_bytes()).decode(),
                                                   "format": "wav"}}
    code, msg = status_of(lambda: client.chat.completions.create(model=MODEL, messages=[
        {"role": "user", "content": [clip]}]))
    assert code == 400 and "takes no audio input" in msg
    # Over the context: both numbers in the message
    long = [{"role": "user", "content": "word " * 33000}]
    code, msg = status_of(lambda: client.chat.completions.create(model=MODEL, messages=long, max_tokens=4))
    assert code == 400 and "32768" in msg and re.search(r"\b3[3-9]\d{3} tokens", msg), msg
    # Over --max-body-mb 1
    code, _ = status_of(lambda: client.chat.completions.create(model=MODEL, messages=[
        {"role": "user", "content": "x" * (1_100_000)}]))
    assert code == 413
    code, body = http(f"{server[0]}/v1/chat/completions", b"{not json",
                      {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert code == 400 and body["error"]["message"]
    with open(AUDIO, "rb") as f:
        code, _ = status_of(lambda: client.audio.transcriptions.create(model="whisper-base", file=f,
                                                                       response_format="srt"))
    assert code == 400
    assert client.chat.completions.create(model=MODEL, messages=user, max_tokens=2).usage.completion_tokens >= 1


def test_concurrent_streams_decode_batched_as_if_alone(server, client):
    """Two greedy requests at once share their decode passes (continuous batching), and each gets
    the text it gets alone: a batched row is computed with the one-row step's arithmetic."""
    asks = ["Name three colours.", "Write one sentence about the sea."]

    def complete(text):
        return client.completions.create(model=MODEL, prompt=text, max_tokens=24, temperature=0).choices[0].text

    alone = [complete(a) for a in asks]
    before = health(server)["batched"]
    together = [None, None]
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, complete(asks[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = health(server)["batched"]
    assert together == alone
    assert after["steps"] - before["steps"] > after["passes"] - before["passes"], (before, after)  # passes of 2 rows


def test_full_queue_and_disconnect_free_sequences(server, client):
    """Two streams run and one waits (--max-concurrency 2 --max-queue 1); a fourth is refused with
    503. Closing the streams mid-way frees their sequences long before their 2,000 tokens."""
    before = health(server)["freed_on_disconnect"]
    opened, errors = [], []

    def stream():
        try:
            s = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count on."}],
                                               max_tokens=2000, temperature=0, stream=True)
            next(iter(s))
            opened.append(s)
        except Exception as e:  # noqa: BLE001 - collected and checked below
            errors.append(e)

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(opened) == 2, errors
    waiter = threading.Thread(target=stream)
    waiter.start()
    for _ in range(100):
        if health(server)["waiting"] == 1:
            break
        time.sleep(0.05)
    assert health(server)["active"] == 2
    code, msg = status_of(lambda: client.chat.completions.create(model=MODEL, messages=[
        {"role": "user", "content": "one more"}], max_tokens=2))
    assert code == 503 and "busy" in msg
    for s in opened[:2]:
        s.close()  # the client goes away mid-stream
    waiter.join(timeout=60)  # admitted once a sequence is freed
    assert len(opened) == 3, errors
    opened[2].close()
    for _ in range(200):
        h = health(server)
        if h["active"] == 0 and h["freed_on_disconnect"] - before == 3:
            break
        time.sleep(0.05)
    assert h["active"] == 0 and h["waiting"] == 0 and h["freed_on_disconnect"] - before == 3, h
    # and the server goes on serving
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices[0].message.content is not None

