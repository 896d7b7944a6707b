"""The default synthesizer: espeak-ng driven in-process through its C API.

The library and its voices come from the `espeakng-loader` wheel, so no system
package is needed. espeak-ng keeps global state and is not thread-safe: one
instance per process, which is how generators use it.
"""

from __future__ import annotations

import ctypes

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
CHARS_UTF8 = 1
ENDPAUSE = 0x1000
PARAM_RATE, PARAM_PITCH = 1, 3

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SynthError(RuntimeError):
    pass


class Espeak:
    """espeak-ng voice; options ``voice`` (default es), ``rate`` (words/min), ``pitch`` (0-99)."""

    # The same text says the same words: a wrong take is flagged, not retaken. Not bit-identical,
    # though: two takes of a text in one process differ by a few samples in length.
    deterministic = True
    _lib: ctypes.CDLL | None = None
    _sample_rate = 0

    def __init__(self, voice: str = "es", rate: str | None = None, pitch: str | None = None):
        lib = self._load()
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SynthError(f"espeak-ng has no voice {voice!r}")
        for param, value, lo, hi in ((PARAM_RATE, rate, 80, 450), (PARAM_PITCH, pitch, 0, 99)):
            if value is not None:
                v = int(value)
                if not lo <= v <= hi:
                    raise SynthError(f"espeak option out of range {lo}..{hi}: {value}")
                lib.espeak_SetParameter(param, v, 0)
        self.sample_rate = self._sample_rate

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._lib is None:
            import os

            import espeakng_loader

            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            lib.espeak_Initialize.restype = ctypes.c_int
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            # espeak_Initialize takes the folder that holds espeak-ng-data
            home = os.path.dirname(espeakng_loader.get_data_path()).encode()
            sr = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, home, 0)
            if sr <= 0:
                raise SynthError(f"espeak-ng failed to initialise ({sr})")
            cls._lib, cls._sample_rate = lib, sr
        return cls._lib

    def _collect(self, wav: ctypes.Array, n: int, _events: int) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synthesize(self, text: str) -> np.ndarray:
        lib = self._load()
        self._chunks = []
        data = text.encode("utf-8")
        err = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8 | ENDPAUSE, None, None)
        lib.espeak_Synchronize()
        if err != 0:
            raise SynthError(f"espeak_Synth returned {err}")
        if not self._chunks:
            raise SynthError("espeak-ng produced no audio")
        return np.concatenate(self._chunks)
