"""llama.cpp's own tools as the `mmsdk bench` peer: `llama-bench` for prompt and decode speed
(pp/tg, as llama.cpp reports them), `llama-perplexity` on a short text for its model load time
(`llama_perf_context_print: load time`), each in its own process with its peak RSS.

The tools are found in `$MMSDK_LLAMA_BIN`, else in the native build of llama.cpp that
`~/.cache/llama-cpp-tools/native` holds (built for this CPU), else on PATH.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

NATIVE_BIN = Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp/build/bin"


def tool(name: str, bin_dir: str | None = None) -> Path | None:
    """The path of llama.cpp's tool `name`, or None where it is not built."""
    for d in (bin_dir, os.environ.get("MMSDK_LLAMA_BIN"), NATIVE_BIN):
        if d and (Path(d) / name).is_file():
            return Path(d) / name
    found = shutil.which(name)
    return Path(found) if found else None


def run_measured(cmd: list[str], timeout: float = 1800) -> tuple[int, str, float]:
    """(exit status, stdout + stderr, peak RSS in MB) of `cmd`, run alone in its own process."""
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except BaseException:
            p.kill()
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return p.returncode, out.read(), usage.ru_maxrss / 1024


def llama_bench(model: str, threads: int, prompt_tokens: int, gen_tokens: int, reps: int = 3,
                bin_dir: str | None = None) -> dict:
    """llama-bench's pp{prompt_tokens} and tg{gen_tokens}: mean and stddev tok/s over `reps`."""
    exe = tool("llama-bench", bin_dir)
    if exe is None:
        return {"error": "llama-bench not found (set MMSDK_LLAMA_BIN to llama.cpp's build/bin)"}
    cmd = [str(exe), "-m", model, "-t", str(threads), "-p", str(prompt_tokens), "-n", str(gen_tokens),
           "-r", str(reps), "-o", "json"]
    rc, out, rss = run_measured(cmd)
    start = out.find("[")
    if rc != 0 or start < 0:
        return {"error": f"llama-bench exit {rc}: {out.strip().splitlines()[-1:] or ['no output']}"}
    res = {"peak_rss_mb": rss, "command": " ".join(cmd)}
    for row in json.loads(out[start:out.rfind("]") + 1]):
        key = "prefill" if row["n_prompt"] else "decode"
        res[key + "_tps"] = row["avg_ts"]
        res[key + "_tps_stddev"] = row["stddev_ts"]
        res.update(cpu=row.get("cpu_info"), build=row.get("build_commit"), backends=row.get("backends"),
                   model_size=row.get("model_size"), label=row.get("model_type"))
    return res


def llama_load(model: str, threads: int, bin_dir: str | None = None) -> dict:
    """llama.cpp's start-up time to a loaded model (and its context) and that process's peak RSS,
    from llama-perplexity on one 128-token chunk of a short text. Its log lines carry the time since
    start (minutes.seconds.ms.us): the load is over at "llama threadpool init", once the model and
    its context are made."""
    exe = tool("llama-perplexity", bin_dir)
    if exe is None:
        return {"error": "llama-perplexity not found (set MMSDK_LLAMA_BIN to llama.cpp's build/bin)"}
    from ._bench_worker import corpus_text

    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(corpus_text()[:20000])
        f.flush()
        cmd = [str(exe), "-m", model, "-t", str(threads), "-f", f.name, "-c", "128", "--chunks", "1", "-b", "128"]
        rc, out, rss = run_measured(cmd)
    ready = None
    for line in out.splitlines():
        m = re.match(r"(\d+)\.(\d+)\.(\d+)\.(\d+) \w .*threadpool init", line)
        if m:
            ready = int(m[1]) * 60 + int(m[2]) + int(m[3]) / 1e3 + int(m[4]) / 1e6
            break
    if rc != 0 or ready is None:
        return {"error": f"llama-perplexity exit {rc}: {out.strip().splitlines()[-1:] or ['no output']}"}
    return {"load_s": ready, "peak_rss_mb": rss,
            "command": " ".join(cmd)}
