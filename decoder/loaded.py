"""What a load gives back: the text decoder, its tokenizer, and what the checkpoint held besides
(one type for the Gemma 3, Gemma 3n and Gemma 4 loaders)."""
from dataclasses import dataclass, field

from torch import nn

from .tokenizer import GemmaTokenizer


@dataclass
class LoadedText:
    model: nn.Module  # Gemma3Text, Gemma3nText or Gemma4Text
    tokenizer: GemmaTokenizer
    name: str
    source: str  # "hf" or "gguf"
    quantization: str  # what the file stores, e.g. "Q4_K_M", "bfloat16"
    extra_tensors: dict = field(default_factory=dict)  # non-text tensors (vision, audio) by HF name
    hf_config: dict = field(default_factory=dict)
    parameters: int = 0  # float parameter count (quantized modules hold buffers, not parameters)
    # The decoder's weights carry quantization rounding: rounded at load (quantize=), or stored quantized in
    # the file (a Q4_0 GGUF, even dequantized to float). `mmsdk.load` gives such a model int8 encoders too.
    quantized: bool = False
