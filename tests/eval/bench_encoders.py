"""Encode time of the real-size encoders (`make_real_size_encoders.py`), mmsdk against transformers
(float32 and bfloat16) and llama.cpp's `llama-mtmd-cli`, on the same random weights: `mmsdk bench --image`
/ `--audio` (`mmsdk/_bench_media.py`, which says what is timed) for each encoder, and the issue's targets.

SigLIP (Gemma 3, `ROOT/gemma3`): one 896 px view, a 3:1 image with pan-and-scan (4 views). llama-mtmd-cli
times its image encode with the bundled Gemma 3 270M as its text model (the mmproj `ROOT/gemma3-mmproj-f16.gguf`
projects to its width, 640), on the same SigLIP weights in f16. MobileNet-V5 (`ROOT/gemma3n`): one 768 px view.
Audio (`ROOT/gemma3n`): 30 s through the E2B conformer; on the float32 load also with the int8 swap
quantized loads apply (`accelerate_gemma3n_audio_`), and its per-token cosine to float32.

    HF_HUB_OFFLINE=1 python tests/eval/bench_encoders.py [--root /work/realsize] [--threads 2] [--repeats 3]
        [--encoders siglip,mobilenet,audio] [--engines mmsdk-f32,mmsdk-int8,hf-f32,hf-bf16,llama] [--json out.json]
        [--siglip-layers N]   # a shallower SigLIP for a quick run (every engine but llama-mtmd-cli)
"""
import argparse
import json
from pathlib import Path

from mmsdk._bench_media import bench_media, media_table
from mmsdk.bundled import bundled_gguf

ENGINES = ("mmsdk-f32", "mmsdk-int8", "hf-f32", "hf-bf16", "llama")
TARGETS = {"siglip": 0.5, "mobilenet": 0.7, "audio": 0.5}  # x transformers' best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/work/realsize")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoders", default="siglip,mobilenet,audio")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--siglip-layers", type=int, default=0, help="0: all 27")
    ap.add_argument("--json")
    args = ap.parse_args()
    engines = args.engines.split(",")
    precisions = [p for e, p in (("mmsdk-f32", "float"), ("mmsdk-int8", "int8")) if e in engines]
    peers = [p for e, p in (("hf-f32", "transformers:float"), ("hf-bf16", "transformers:bfloat16"), ("llama", "llama.cpp"))
             if e in engines]
    root, out = Path(args.root), {}
    for encoder in args.encoders.split(","):
        kind = "audio" if encoder == "audio" else "image"
        res = bench_media(kind, str(root / ("gemma3" if encoder == "siglip" else "gemma3n")), threads=args.threads,
                          repeats=args.repeats, precisions=precisions,
                          peers=[p for p in peers if p != "llama.cpp" or encoder == "siglip"],
                          mmproj=str(root / "gemma3-mmproj-f16.gguf"), llama_model=str(bundled_gguf()),
                          layers=args.siglip_layers if encoder == "siglip" else 0,
                          audio_int8_swap=encoder == "audio" and "mmsdk-f32" in engines)
        out[encoder] = res
        print(f"== {encoder}\n{media_table(res)}", flush=True)
        ratio = res["ratios"].get("vs_transformers_best")
        if ratio is not None:
            print(f"{encoder}: {ratio:.2f}x transformers' best (target <= {TARGETS[encoder]}x: "
                  f"{'met' if ratio <= TARGETS[encoder] else 'MISSED'})")
        if encoder == "siglip":
            four, llama = res["ratios"].get("pan_and_scan_over_one_view"), res["ratios"].get("vs_llama_mtmd_cli")
            if four is not None:
                print(f"siglip 4 views / 1 view: {four:.2f} (target <= 4: {'met' if four <= 4 else 'MISSED'})")
            if llama is not None:
                print(f"siglip one view / llama-mtmd-cli's: {llama:.2f} (target <= 1: {'met' if llama <= 1 else 'MISSED'})")
        if encoder == "audio" and "real_time_factor" in res["ratios"]:
            rtf = res["ratios"]["real_time_factor"]
            print(f"audio: {rtf:.1f}x real time (target >= 10x: {'met' if rtf >= 10 else 'MISSED'})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
