"""Real-size encoder checkpoints with random weights, in the real Hugging Face layout, for benchmarks.

Encode time and memory depend on the encoders' shapes, not on their weights, so these measure speed
as the released checkpoints would (a tiny config measures only correctness). Written by transformers
itself (`save_pretrained`), bfloat16 as the released checkpoints are stored:

- `gemma3/`: Gemma 3 4B's vision side: SigLIP so400m (27 layers, width 1152, 16 heads, MLP 4304,
  14 px patches, 896 px) and the projector (256 soft tokens per view). The text decoder is tiny
  (2 layers) and 640 wide, Gemma 3 270M's width, so the mmproj below pairs with the bundled 270M GGUF
  in `llama-mtmd-cli` (it refuses a projector whose width differs from the text model's). The
  1152 x 640 projection is ~0.03% of a view's FLOPs, against 4B's 1152 x 2560.
- `gemma3-mmproj-f16.gguf`: the same SigLIP + projector as a llama.cpp mmproj file, written by
  llama.cpp's own `convert_hf_to_gguf.py --mmproj`.
- `gemma3-4b/`, `gemma3-4b-mmproj-f16.gguf` (`--only mmproj4b`): the same with Gemma 3 4B's text width
  (2560), so the mmproj pairs with the real-size 4B GGUF (`make_real_size.py`) for a time to first
  token beside llama-mtmd-cli.
- `gemma3n/`: Gemma 3n E2B's towers: MobileNet-V5-300M (timm `mobilenetv5_300m_enc`, 768 px) with its
  multi-scale fusion adapter and embedder, and the audio conformer (12 layers, width 1536); the text
  decoder is the tiny one the Gemma 3n tests use.

    HF_HUB_OFFLINE=1 python tests/eval/make_real_size_encoders.py [--out /work/realsize] [--only gemma3,mmproj,gemma3n]
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fixtures' tokenizers and tiny configs

LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_DIR", Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp"))
GEMMA3_TEXT = dict(vocab_size=262208, hidden_size=640, intermediate_size=1024, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=64, sliding_window=512,
                   layer_types=["sliding_attention", "full_attention"])
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=896, patch_size=14, vision_use_head=False)
GEMMA3_PREPROCESSOR = {
    "image_processor_type": "Gemma3ImageProcessor", "processor_class": "Gemma3Processor",
    "size": {"height": 896, "width": 896}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255, "resample": 2, "do_resize": True,
    "do_convert_rgb": True, "do_pan_and_scan": True, "pan_and_scan_min_crop_size": 256,
    "pan_and_scan_max_num_crops": 4, "pan_and_scan_min_ratio_to_activate": 1.2}


def randomize_projector(model, seed: int = 0) -> None:
    """transformers initializes Gemma 3's projection to zeros; a zero projection would hide every
    difference in the embeddings a quality check compares."""
    g = torch.Generator().manual_seed(seed)
    proj = model.model.multi_modal_projector
    with torch.no_grad():
        proj.mm_input_projection_weight.normal_(0.0, proj.mm_input_projection_weight.shape[0] ** -0.5, generator=g)
        proj.mm_soft_emb_norm.weight.normal_(0.0, 0.1, generator=g)


def write_gemma3(folder: Path, width: int = 640) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration
    from vision_fixtures import tiny_tokenizer

    text = {**GEMMA3_TEXT, "hidden_size": width}
    cfg = Gemma3Config(text_config=text, vision_config=SIGLIP_SO400M, mm_tokens_per_image=256)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(cfg).eval()  # transformers' own init: SigLIP's lecun-normal scales
    randomize_projector(model)
    model.to(torch.bfloat16).save_pretrained(folder)
    released_names(folder / "model.safetensors")
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    (folder / "preprocessor_config.json").write_text(json.dumps(GEMMA3_PREPROCESSOR, indent=1))


def released_names(path: Path) -> None:
    """transformers 5 saves the tower as `vision_tower.embeddings...`; the released checkpoints (and
    llama.cpp's converter) name it `vision_tower.vision_model.embeddings...`. transformers reads both."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    renamed = {("vision_tower.vision_model." + k.removeprefix("vision_tower.") if k.startswith("vision_tower.")
                else k): t for k, t in tensors.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def write_mmproj(folder: Path, out: Path) -> None:
    """llama.cpp's converter on the folder above: the mmproj exactly as llama.cpp users make theirs."""
    script = LLAMA_CPP / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise SystemExit(f"llama.cpp's converter is not at {script} (set LLAMA_CPP_DIR)")
    env = {**os.environ, "PYTHONPATH": str(LLAMA_CPP / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(script), str(folder), "--mmproj", "--outtype", "f16", "--outfile", str(out)],
                   check=True, env=env)


def write_gemma3n(folder: Path) -> None:
    from gemma3n_fixtures import TEXT
    from test_gemma3n_multimodal import IDS, VOCAB, tokenizer
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

    # Default audio and vision configs are E2B's (conformer 12 x 1536, mobilenetv5_300m_enc); only the
    # embedders' vocabulary offsets move, to the tiny text vocabulary's id layout.
    cfg = Gemma3nConfig(text_config={**TEXT, "vocab_size": VOCAB}, audio_config={"vocab_offset": 512},
                        vision_config={"vocab_offset": 384}, **IDS)
    assert cfg.audio_config.hidden_size == 1536 and cfg.audio_config.conf_num_hidden_layers == 12
    assert cfg.vision_config.architecture == "mobilenetv5_300m_enc"
    torch.manual_seed(0)
    model = Gemma3nForConditionalGeneration(cfg).eval()
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "size": {"height": 768, "width": 768}, "do_normalize": False, "do_rescale": True, "rescale_factor": 1 / 255,
        "image_processor_type": "SiglipImageProcessorFast", "feature_size": 128,
        "feature_extractor_type": "Gemma3nAudioFeatureExtractor", "sampling_rate": 16000}, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/work/realsize")
    ap.add_argument("--only", default="gemma3,mmproj,gemma3n", help="also: mmproj4b")
    args = ap.parse_args()
    out, only = Path(args.out), set(args.only.split(","))
    torch.set_num_threads(2)
    if "gemma3" in only:
        write_gemma3(out / "gemma3")
    if "mmproj" in only:
        write_mmproj(out / "gemma3", out / "gemma3-mmproj-f16.gguf")
    if "gemma3n" in only:
        write_gemma3n(out / "gemma3n")
    if "mmproj4b" in only:
        write_gemma3(out / "gemma3-4b", width=2560)
        write_mmproj(out / "gemma3-4b", out / "gemma3-4b-mmproj-f16.gguf")
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.stat().st_size > 1e6:
            print(f"{p}  {p.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
