"""`mmsdk.load()` and the `Assistant`: text generation, chat and sessions over one decoder."""
import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import chat_format, chat_format_gemma4, chat_template, media, models, structured
from .decoder.kv_cache import make_cache
from .decoder.loader import load_text
from .decoder.sampling import make_sampler
from .decoder.generate import Step, prefill, stream_generate
from .decoder.prefill import PREFILL_CHUNK
from .decoder.speculative import make_drafter
from .errors import ContextLengthError, InputError
from .options import check_load_options, check_sampling, check_stop
from .scoring import LogprobRecorder, check_top_logprobs, pieces_with_logprobs, score_text
from .types import ModelInfo, Reply, Score, Usage

if TYPE_CHECKING:
    from .agent import AgentResult

log = logging.getLogger(__name__)

_DTYPES = {None: torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}


def load(path=None, *, quantize: str | None = None, offload: str | None = None, threads: int | None = None,
         dtype: str | None = None, max_memory: int | None = None, mmproj=None, draft=None) -> "Assistant":
    """Load a model: a HF checkpoint folder, a .gguf file, or a model id ("google/gemma-3n-E2B-it",
    "org/name:Q4_0" for one file of a GGUF repository) found in the local Hugging Face cache (never
    downloaded: `mmsdk pull NAME` does that); with no path, the bundled Gemma 3 270M.
    A .gguf model takes its vision tower from llama.cpp's `mmproj` file: `mmproj*.gguf` beside it, or `mmproj=`.
    `draft`: speculative decoding for greedy generation by default, "lookup" (n-grams of the prompt
    and reply), or a smaller model of the same tokenizer (a path, loaded alike, or an `Assistant`)."""
    check_load_options(dtype=dtype, quantize=quantize, offload=offload, threads=threads, max_memory=max_memory)
    if path is None:
        from .bundled import bundled_gguf

        path = bundled_gguf()
    path = models.resolve(path)
    if mmproj is not None and Path(path).is_dir():
        raise InputError("mmproj= goes with a .gguf model; a Hugging Face folder carries its own vision tower")
    t0 = time.perf_counter()
    from .decoder.gemma3n_loader import is_gemma3n_folder, load_quantized
    from .decoder.gemma4_loader import is_gemma4_folder

    if quantize and (is_gemma3n_folder(path) or is_gemma4_folder(path)):
        # Streamed: rounded a tensor at a time into the weight cache, never a float model in memory
        # (Gemma 3n E2B is 9 GB of float32 decoder); the per-layer table stays mapped with offload="ple".
        if threads:
            torch.set_num_threads(int(threads))
        loaded = load_quantized(Path(path), quantize, _DTYPES[dtype], offload=offload)
    else:  # a Gemma 3n / 4 folder's per-layer table mapped straight from the checkpoint with offload="ple"
        loaded = load_text(Path(path), dtype, quantize=quantize, threads=threads, offload=offload)
        if offload:
            from .decoder.offload import apply_offload

            apply_offload(loaded, offload, max_memory=max_memory)
    log.info("loaded %s in %.1f s", path, time.perf_counter() - t0)
    if draft is not None and draft != "lookup" and not isinstance(draft, Assistant):
        draft = load(draft, quantize=quantize, threads=threads, dtype=dtype)
    # A quantized model (asked for, or a file that stores one) takes the encoders' int8 swaps too: they lose far
    # less than its decoder (SigLIP: per-token cosine >= 0.9999 to float32) and encode ~30% faster
    asst = Assistant(loaded, path=str(path), dtype=_DTYPES[dtype], mmproj=mmproj, accelerate=loaded.quantized)
    make_drafter(draft, asst.model)  # checked now: a vocabulary mismatch fails here, not at the first reply
    asst.draft = draft
    return asst


class Assistant:
    draft = None  # the default drafter of greedy generation (see `load`); `draft=` per call overrides it

    def __init__(self, loaded, path: str = "", dtype: torch.dtype = torch.float32, mmproj=None,
                 accelerate: bool = False):
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.config = self.model.config
        self._loaded = loaded
        self.encoders = media.load_encoders(loaded, path, dtype, mmproj=mmproj, accelerate=accelerate)
        model_type = str(loaded.hf_config.get("model_type", ""))
        family = next((f for f in ("gemma3n", "gemma4") if model_type.startswith(f)), "gemma3")
        # Gemma 4 writes its own turns (`chat_format_gemma4`); Gemma 3 and 3n share `chat_format`.
        self._format = chat_format_gemma4 if family == "gemma4" else chat_format
        # `chat` writes prompts with the checkpoint's own template where it carries one, the built-in format elsewhere
        self.template = chat_template.for_checkpoint(path, self.tokenizer, family) if path else None
        self.info = ModelInfo(
            name=loaded.name,
            family=family,
            parameters=getattr(loaded, "parameters", None) or sum(p.numel() for p in self.model.parameters()),
            modalities=self.encoders.modalities,
            context_length=self.config.max_position_embeddings,
            quantization=loaded.quantization,
            path=path,
        )

    @functools.cached_property
    def instruction_tuned(self) -> bool:
        """Whether the model follows chat turns (its name or chat template says so); the bundled
        270M is a base model, which only continues text."""
        return chat_template.instruction_tuned(self.info.path, self.info.name)

    def __repr__(self):
        return f"Assistant({self.info.name!r}, {self.info.parameters / 1e6:.0f}M params, {self.info.quantization})"

    # ---- text -------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes, without the BOS token `generate` adds."""
        return len(self.tokenizer.encode(text, add_bos=False))

    def generate(self, prompt: str, *, max_tokens: int = 256, stop=(), parse_special: bool = True,
                 logprobs: bool = False, top_logprobs: int = 0, **sampling) -> str | Reply:
        """Continue the raw prompt (BOS prepended, no chat template). Control tokens spelled in it
        (`<start_of_turn>`) are read as tokens; `parse_special=False` reads them as plain text.
        With `logprobs=True` (or `top_logprobs=k`): a `Reply` whose `.logprobs` has each generated
        token's log-probability.
        Here and in `stream`, `chat` and sessions, `draft=` ("lookup", an `Assistant` of the same
        tokenizer, False for none) picks the speculative drafter; greedy text is the same with or
        without one, and sampling ignores it."""
        if not (logprobs or top_logprobs):
            return "".join(self.stream(prompt, max_tokens=max_tokens, stop=stop, parse_special=parse_special,
                                       **sampling))
        run = self._prompt_run(prompt, max_tokens, stop, sampling, parse_special)
        recorder = self._record_logprobs(run, top_logprobs)
        text = "".join(run)
        return Reply(text=text, usage=Usage(run.prompt_tokens, len(run.generated)), finish_reason=run.finish_reason,
                     logprobs=recorder.finish(run.generated))

    def stream(self, prompt: str, *, max_tokens: int = 256, stop=(), parse_special: bool = True,
               logprobs: bool = False, top_logprobs: int = 0, **sampling) -> Iterator[str]:
        """Text pieces of the continuation as they are decoded; with `logprobs=True` each is a `Piece`
        carrying the log-probabilities of the tokens generated since the one before."""
        run = self._prompt_run(prompt, max_tokens, stop, sampling, parse_special)
        if logprobs or top_logprobs:
            yield from pieces_with_logprobs(run, self._record_logprobs(run, top_logprobs))
        else:
            yield from run

    def _prompt_run(self, prompt: str, max_tokens: int, stop, sampling: dict, parse_special: bool = True) -> "_Run":
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a str, got {type(prompt).__name__}")
        ids = self.tokenizer.encode(prompt, parse_special=parse_special)
        return _Run(self, ids, make_cache(self.config), 0, (), max_tokens, stop, sampling)

    def _record_logprobs(self, run: "_Run", top_logprobs: int) -> LogprobRecorder:
        """Put a recorder first among `run`'s processors, so it sees the logits before any mask."""
        recorder = LogprobRecorder(self.tokenizer, check_top_logprobs(top_logprobs, self.config.vocab_size))
        run.processors.insert(0, recorder)
        return recorder

    def score(self, text, *, window: int | None = None) -> Score:
        """The log-probability of every token of `text` after BOS, given the tokens before it, and
        the perplexity over them. `text`: a str (BOS is prepended), or its token ids without BOS.
        Texts longer than `window` tokens (default: the context length) are read in windows of
        `window` tokens advancing by half a window (see `scoring.score_ids`)."""
        return score_text(self.model, self.tokenizer, text, window)

    def chat(self, messages: list[dict], *, tools=None, schema=None, tool_choice: str = "auto",
             constrained: bool = True, processors=(), max_tokens: int = 256, stop=(), pan_and_scan: bool = True,
             logprobs: bool = False, top_logprobs: int = 0, thinking: bool = False, image_tokens: int = 280,
             **sampling) -> Reply:
        """Reply to a conversation in the model's chat format. With `tools` the reply may call them
        (`reply.tool_calls`; tool_choice "auto", "required", "none" or a tool's name); with `schema`
        `reply.parsed` is the validated object. Both are decoded under a grammar, so they parse
        (`constrained=False` leaves it to the model). `processors`: extra `fn(logits, ids) -> logits`.
        `logprobs=True` / `top_logprobs=k`: `reply.logprobs` (the model's own distribution, before masks).
        `thinking=True` (Gemma 4): the model thinks first; the thought is `reply.thinking`, apart from `reply.text`.
        `image_tokens` (Gemma 4): soft tokens per image, 70, 140, 280, 560 or 1120 (more: finer detail, slower)."""
        run, plan, recorder = self._chat_run(messages, tools=tools, schema=schema, tool_choice=tool_choice,
                                             constrained=constrained, processors=processors, max_tokens=max_tokens,
                                             stop=stop, pan_and_scan=pan_and_scan, logprobs=logprobs,
                                             top_logprobs=top_logprobs, sampling=sampling, thinking=thinking,
                                             image_tokens=image_tokens)
        text, thought = "".join(run), None
        if thinking:  # the answer is what follows the thought channel
            thought, answer = chat_format_gemma4.split_thinking(self.tokenizer, run.generated)
            text = self.tokenizer.decode([t for t in answer if t not in self.tokenizer.eos_ids])
        text, calls, parsed = plan.finish(text, run.finish_reason)
        return Reply(text=text, tool_calls=calls, parsed=parsed, usage=Usage(run.prompt_tokens, len(run.generated)),
                     finish_reason=run.finish_reason, logprobs=recorder.finish(run.generated) if recorder else None,
                     thinking=thought)

    def _chat_run(self, messages, *, tools, schema, tool_choice, constrained, processors, max_tokens, stop,
                  pan_and_scan, logprobs, top_logprobs, sampling, thinking: bool = False,
                  image_tokens: int = 280) -> tuple:
        """`chat`'s generation, not yet run (the server steps it): (the `_Run`, the `structured.Plan` that
        parses its text, the `LogprobRecorder` or None)."""
        gemma4 = self._format is chat_format_gemma4
        if thinking and not gemma4:
            raise InputError(f"thinking=True needs a model with a thinking mode (Gemma 4); {self.info.name} has none")
        tool_format = structured.tool_format(self.template)
        if tools and gemma4 and tool_format is None:
            raise InputError("tools= with Gemma 4: its native tool-call format is not supported yet")
        plan = structured.plan(self.tokenizer, messages, tools=tools, schema=schema, tool_choice=tool_choice,
                               constrained=constrained, max_tokens=max_tokens, fmt=tool_format)
        if self.template is not None:
            prompt, images, audio = self.template.render_messages(plan.messages, thinking=thinking, tools=plan.tools)
        elif gemma4:
            prompt, images, audio = chat_format_gemma4.render_messages(plan.messages, thinking=thinking)
        else:
            prompt, images, audio = chat_format.render_messages(plan.messages)
        self._check_media(images, audio)
        if plan.specs and getattr(plan.fmt, "response_open", None):  # after its calls a model goes on to imagine
            stop = [*([stop] if isinstance(stop, str) else stop), plan.fmt.response_open]  # the results: stop there
        p = media.encode_prompt(self.model, self.tokenizer, self.encoders, prompt, images, audio,
                                pan_and_scan=pan_and_scan, image_tokens=image_tokens)
        run = _Run(self, p.ids, make_cache(self.config), 0, (), max_tokens, stop, sampling,
                   [*plan.processors, *processors], embeds=p.embeds, groups=p.groups)
        recorder = self._record_logprobs(run, top_logprobs) if logprobs or top_logprobs else None
        return run, plan, recorder

    def run_agent(self, task: str, tools, *, max_steps: int = 5, approve=None, **kw) -> "AgentResult":
        """Let the model call `tools` until it answers `task` in text, at most `max_steps` turns."""
        from .agent import run_agent

        return run_agent(self, task, tools, max_steps=max_steps, approve=approve, **kw)

    def session(self, system: str | None = None) -> "Session":
        return Session(self, system)

    # ---- media and documents ------------------------------------------------------------------
    def describe_image(self, image, prompt: str = "Describe this image.", *, pan_and_scan: bool = True,
                       max_tokens: int = 256, image_tokens: int = 280, **sampling) -> str:
        """What the model sees in `image` (a path, bytes or PIL image). Pan-and-scan adds crops of
        wide or tall images so small details survive the 896-pixel resize (Gemma 3); Gemma 4 sees
        the image at its aspect ratio within `image_tokens` soft tokens (70, 140, 280, 560, 1120)."""
        message = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}
        return self.chat([message], pan_and_scan=pan_and_scan, max_tokens=max_tokens, image_tokens=image_tokens,
                         **sampling).text

    def transcribe_audio(self, audio, *, language: str | None = None, progress: bool = False):
        """Speech to text with timestamps. Uses the model's audio encoder when it has one, else the
        bundled Whisper base."""
        if "audio" in self.info.modalities:
            from .speech_gemma3n import transcribe as transcribe_with_model

            return transcribe_with_model(self, audio, language=language, progress=progress)
        from .speech import transcribe

        return transcribe(audio, language=language, progress=progress)

    def ask(self, question: str, index, k: int = 5, *, max_tokens: int = 256, rerank: int = 0):
        """Answer from the documents in `index`, citing the passages used (`Answer.citations`).
        `rerank=N` (5-10): this model reorders the best N passages by its likelihood of the question first."""
        from .documents import answer

        return answer(self, question, index, k=k, max_tokens=max_tokens, rerank=rerank)

    def _check_media(self, images, audio) -> None:
        media.check_modalities(self.info.name, self.encoders, images, audio)


class _Run:
    """One generation of the Assistant's: its options checked, then `generate.stream_generate` run
    on them. Iterating yields text pieces (`steps()` the tokens); `generated` and `finish_reason` remain."""

    def __init__(self, asst: Assistant, ids: list[int], caches, start: int, history, max_tokens: int, stop,
                 sampling: dict, processors=(), embeds=None, groups=None):
        self.draft = sampling.pop("draft", None)
        self.draft = asst.draft if self.draft is None else self.draft or None
        check_sampling(sampling, max_tokens)
        check_stop(stop)
        ctx = asst.config.max_position_embeddings
        if start + len(ids) > ctx:
            raise ContextLengthError(start + len(ids), ctx)
        self.asst, self.ids, self.caches, self.start, self.history = asst, ids, caches, start, history
        self.model = asst.model  # the server hands in its batcher's view (decoder.batch)
        self.max_tokens = min(max_tokens, ctx - start - len(ids))
        self.stop = stop
        self.sampler = make_sampler(**sampling)
        self.greedy = not sampling.get("temperature")
        self.processors = list(processors)  # logits -> logits before sampling, e.g. a grammar's mask
        self.embeds, self.groups = embeds, groups  # the prompt's embeddings when it holds images
        self.prompt_tokens = len(ids)
        self.generated: list[int] = []
        self.finish_reason = "length"

    def prefill_ahead(self, chunk: int = PREFILL_CHUNK, prefix_cache=None) -> Iterator[None]:
        """Feed the prompt but its last `chunk` tokens into the caches, a chunk per step, so a scheduler
        runs other sequences between chunks; generating then starts from the rest, as `prefill` would.
        With a `PrefixCache` (its chunk is used) the longest prefix it holds is taken instead of fed,
        and the prefixes fed are offered to it. A prompt holding media goes in one piece (no image is split)."""
        if self.embeds is not None:
            return
        if prefix_cache is not None and self.start == 0:
            chunk, total = prefix_cache.chunk, len(self.ids) - 1  # the last token is left to generation
            n, caches = prefix_cache.lookup(self.ids, total)
            if n:
                self.caches[:] = caches
                self._fed(n)
        else:
            prefix_cache = None
        while len(self.ids) > chunk:
            prefill(self.model, self.ids[:chunk], self.caches, self.start, chunk=chunk)
            self._fed(chunk)
            if prefix_cache is not None and prefix_cache.keeps(self.start, total):
                prefix_cache.add(self.history, self.caches)
            yield

    def _fed(self, n: int) -> None:
        self.history = [*self.history, *self.ids[:n]]
        self.start, self.ids = self.start + n, self.ids[n:]

    def steps(self) -> Iterator[Step]:
        """The generation a token at a time (`generate.stream_generate`'s steps), recorded here."""
        # Drafts are checked against greedy picks only, and processors (a grammar's mask, a logprob
        # recorder, which may join after __init__) follow one token at a time
        use_draft = self.draft is not None and self.greedy and not self.processors
        for step in stream_generate(self.model, self.asst.tokenizer, self.ids, self.caches, self.sampler,
                                    max_tokens=self.max_tokens, stop=self.stop, start=self.start,
                                    history=self.history, processors=self.processors,
                                    drafter=make_drafter(self.draft, self.asst.model) if use_draft else None,
                                    embeds=self.embeds, groups=self.groups):
            self.generated.append(step.token)
            self.finish_reason = step.finish_reason or self.finish_reason
            yield step

    def __iter__(self) -> Iterator[str]:
        """The text pieces, as they are released."""
        for step in self.steps():
            if step.text:
                yield step.text


class Session:
    """A conversation that keeps its KV cache between turns: each `send` feeds only the new tokens."""

    def __init__(self, asst: Assistant, system: str | None = None):
        self.asst, self.system = asst, system
        self.caches = make_cache(asst.config)
        self.ids: list[int] = []  # every token of the conversation so far
        self.n_cached = 0  # how many of them are in the caches
        self.history: list[dict] = []

    def send(self, text: str, images=(), audio=(), *, max_tokens: int = 256, stop=(), pan_and_scan: bool = True,
             **sampling) -> Reply:
        """One user turn (its images and audio placed before the text) and the model's reply."""
        images, audio = list(images), list(audio)
        self.asst._check_media(images, audio)
        first = not self.ids
        a = self.asst
        if a.template is not None:  # the checkpoint's template: what the new turn adds to the conversation so far
            content = [*({"type": "image", "image": i} for i in images), *({"type": "audio", "audio": c} for c in audio),
                       {"type": "text", "text": text}]
            fed = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
            new = [{"role": "user", "content": content}]
            prompt, _, _ = a.template.continuation(fed, new) if not first else a.template.continuation([], fed + new)
            turn_end = a.template.turn_end
        else:
            fmt = a._format
            # Gemma 4 has a system turn of its own; Gemma 3 / 3n open the first user turn with it
            own_turn = first and self.system and fmt is chat_format_gemma4
            system = fmt.turn_parts("system", self.system) if own_turn else []
            body = [self.system, "\n\n", text] if first and self.system and not own_turn else [text]  # content
            prompt = system + fmt.turn_parts("user", media.with_media_markers(body, images, audio)) \
                + fmt.generation_prompt()
            known = a.tokenizer.token_id(fmt.END) is not None  # (a test vocabulary may lack it)
            turn_end = chat_format.Markup(f"{fmt.END}\n" if known else "\n")
        p = media.encode_prompt(a.model, a.tokenizer, a.encoders, prompt, images,
                                audio, add_bos=first, prefix_ids=self.ids[self.n_cached:], pan_and_scan=pan_and_scan)
        todo = p.ids
        self.ids = self.ids[:self.n_cached] + todo
        run = _Run(self.asst, todo, self.caches, self.n_cached, self.ids[:self.n_cached], max_tokens, stop,
                   sampling, embeds=p.embeds, groups=p.groups)
        reply_text = "".join(run)
        # The cache now holds every token but the last sampled one; close the model's turn.
        if run.generated:
            self.n_cached = len(self.ids) + len(run.generated) - 1
        self.ids += run.generated
        closing = chat_format.encode(a.tokenizer, [turn_end], add_bos=False)
        self.ids += closing[1:] if run.generated and closing and run.generated[-1] == closing[0] else closing
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply_text}]
        return Reply(text=reply_text, usage=Usage(len(todo), len(run.generated)), finish_reason=run.finish_reason)

    def clone(self) -> "Session":
        """A fork of the conversation: the copy and the original go on independently."""
        s = Session.__new__(Session)
        s.asst, s.system = self.asst, self.system
        s.caches = [c.clone() for c in self.caches]
        s.ids, s.n_cached, s.history = list(self.ids), self.n_cached, list(self.history)
        return s
