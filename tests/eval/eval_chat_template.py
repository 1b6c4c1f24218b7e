"""Chat-template parity on the bundled model's own tokenizer, beyond the unit tests (which share one
BPE between both sides to stay fast): our runtime tokenizer (SentencePiece, built from the GGUF)
with the published Gemma 3 template against transformers' own GGUF tokenizer conversion
(`AutoTokenizer.from_pretrained(..., gguf_file=...)`, about a minute to build) and `apply_chat_template`.

    python tests/eval/eval_chat_template.py

Prints one line per conversation: equal or not, and the length in tokens.
"""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "templates" / "gemma-3-4b-it.jinja"
CONVERSATIONS = {
    "system + multi-turn": [{"role": "system", "content": "  You are terse.\n"},
                            {"role": "user", "content": "Hi there, what's 2+2?  "},
                            {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And 3+3?"}],
    "image + non-ASCII": [{"role": "user", "content": [{"type": "image"},
                                                       {"type": "text", "text": " Café au lait — naïve ✓ 日本語"}]}],
    "code and spaces": [{"role": "user", "content": "def f(x):\n    return  x**2\n\n\tprint(f(3))"}],
}


def main():
    from transformers import AutoTokenizer

    from mmsdk import chat_format
    from mmsdk.bundled import bundled_gguf
    from mmsdk.chat_template import ChatTemplate
    from mmsdk.decoder.gguf_file import GGUFFile
    from mmsdk.decoder.tokenizer import tokenizer_from_gguf

    path = bundled_gguf()
    ours = tokenizer_from_gguf(GGUFFile(path).meta, f"{path}:eval_chat_template")
    ref = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ref.chat_template = TEMPLATE.read_text()
    template = ChatTemplate(ref.chat_template)
    ours.add_controls(template.controls(ours))
    for name, messages in CONVERSATIONS.items():
        expected = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        ids = chat_format.encode(ours, template.prompt_parts(messages))
        print(f"{name:24s} {'equal' if ids == expected else 'DIFFERENT'}  {len(expected)} tokens")


if __name__ == "__main__":
    main()
