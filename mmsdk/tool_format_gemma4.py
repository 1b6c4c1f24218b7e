"""Gemma 4's native tool-call format, as its chat template writes it (llama.cpp's
models/templates/google-gemma-4-31B-it.jinja): FunctionGemma's syntax with Gemma 4's spellings,

    <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|><|tool_response>

the tools declared as `<|tool>declaration:...<tool|>` in the system turn and results written back as
`<|tool_response>response:name{value:<|"|>...<|"|>}<tool_response|>`, all by the template itself.
Tool results go in as strings: the template reads a result as a string or a list of text parts."""
from .tool_format_functiongemma import CallFormat

GEMMA4 = CallFormat("<|tool_call>", "<tool_call|>", '<|"|>', "<|tool_response>", string_results=True)
