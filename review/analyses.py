"""What the analysis of the takes found (review.flags' audio flags), for the review dashboard:
kept by entry id across reloads of the state, and across restarts in a cache file beside the
dataset, so each take is read once, not once per start (19 minutes of a core at 700,000 takes).

By entry id, a 64-bit key of the wav's signature (size, mtime, inode) and of the take, and the
flags' bits, in numpy columns: 17 bytes an entry. The keys are stable from one process to the next.
The cache file names the analysis it holds (a hash of review/flags.py): when the analysis
changes, its flags are found again. A cache file that cannot be read is ignored; it is never the
state, only a saving of time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import flags
from .columns import grown

CACHE_FILE = "dashboard-flags.npz"
TEMP_SUFFIX = ".tmp"
SAVE_EVERY = 60.0  # seconds between saves of the cache while takes are analysed
_HEX = "0123456789abcdef"
MAX_MEMBER = 1 << 28  # bytes: a cache file's arrays are a few tens of MB at a million entries
_FORMAT = "statesvc dashboard flags 1"


# Earlier versions of the analysis whose cache files hold the same flags: their source differed
# from today's only where no flag is computed. ae085d9b...: review/takes.py before issue 18 renamed
# it flags.py, reworded its first line and dropped a test-only Fit.from_dict.
SAME_ANALYSIS = frozenset({"ae085d9b1ddd6708ed1ec4d925adf6ac"})


def _analysis_version() -> str:
    digest = hashlib.blake2b(_FORMAT.encode(), digest_size=16)
    digest.update(Path(flags.__file__).read_bytes())
    return digest.hexdigest()


def take_key(take: str | None) -> int:
    """A stable 64-bit key of a take token (the daemon's, 16 lowercase hex digits, read as a number;
    any other token hashed)."""
    if take is not None and len(take) == 16 and not take.strip(_HEX):
        return int(take, 16)
    return int.from_bytes(hashlib.blake2b(repr(take).encode(), digest_size=8).digest(), "little")


def file_key(size: int, mtime_ns: int, ino: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{size}:{mtime_ns}:{ino}".encode(), digest_size=8).digest(), "little")


class Analyses:
    """Flags by entry id; ``save`` and ``load`` keep them in a file between runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sig = np.zeros(0, np.uint64)
        self.take = np.zeros(0, np.uint64)
        self.bits = np.zeros(0, np.int16)  # -1: not analysed
        self.sparse: dict[int, tuple[int, int, int]] = {}  # ids far from the others: (sig, take, bits)
        self.changed = False
        self.saved_at = time.monotonic()

    def _get(self, eid: int) -> tuple[int, int, int] | None:
        with self.lock:
            if 0 <= eid < len(self.bits):
                return None if self.bits[eid] < 0 else (int(self.sig[eid]), int(self.take[eid]), int(self.bits[eid]))
            return self.sparse.get(eid)

    def of_takes(self, ids: np.ndarray, takes: list[str]) -> np.ndarray:
        """The flags found for each take of these entries (every take of a state just loaded), where it was
        analysed: -1 where none was found."""
        keys = np.fromiter(map(take_key, takes), np.uint64, len(takes))
        found = np.full(len(ids), -1, np.int16)
        with self.lock:
            dense = (ids >= 0) & (ids < len(self.bits))
            at = np.flatnonzero(dense)
            d = ids[at]
            same = (self.bits[d] >= 0) & (self.take[d] == keys[at])
            found[at[same]] = self.bits[d[same]]
            for j in np.flatnonzero(~dense):
                got = self.sparse.get(int(ids[j]))
                if got is not None and got[1] == int(keys[j]):
                    found[j] = got[2]
        return found

    def of_file(self, eid: int, sig: int) -> int | None:
        """The flags found for the wav of this ``file_key``, if it was analysed."""
        got = self._get(eid)
        return got[2] if got is not None and got[0] == sig else None

    def put(self, eid: int, sig: int, take: str | None, flags: int) -> None:
        tk = take_key(take)
        with self.lock:
            self.changed = True
            if eid < 0 or eid >= max(4 * len(self.bits), 1 << 22):
                self.sparse[eid] = (sig, tk, flags)
                return
            if eid >= len(self.bits):
                size = max(eid + 1, 2 * len(self.bits), 1024)
                self.sig, self.take = grown(self.sig, size), grown(self.take, size)
                self.bits = grown(self.bits, size, -1)
            self.sig[eid], self.take[eid], self.bits[eid] = sig, tk, flags

    # ---- the cache file --------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the cache file (a temporary file renamed over it), if anything changed since the
        last save. OSError is the caller's to report."""
        with self.lock:
            if not self.changed:
                return
            ids = np.fromiter(self.sparse, np.int64, len(self.sparse))
            far = np.array(list(self.sparse.values()), np.uint64).reshape(-1, 3)
            cols = self.sig.copy(), self.take.copy(), self.bits.copy()
            self.changed = False
            self.saved_at = time.monotonic()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            with open(fd, "wb") as f:
                np.savez(f, version=np.array(_analysis_version()), sig=cols[0], take=cols[1], bits=cols[2],
                         far_ids=ids, far=far)
            os.replace(tmp, path)
        except BaseException:
            with self.lock:
                self.changed = True
            Path(tmp).unlink(missing_ok=True)
            raise

    def save_due(self) -> bool:
        return self.changed and time.monotonic() - self.saved_at >= SAVE_EVERY

    @classmethod
    def load(cls, path: Path) -> tuple[Analyses, str | None]:
        """The cache file's flags, or none and why the file was not used (None: there was no file)."""
        a = cls()
        for stale in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):  # left by a save cut short
            with contextlib.suppress(OSError):
                stale.unlink()
        try:
            with open(path, "rb") as f:
                z = np.load(f, allow_pickle=False)
                if not isinstance(z, np.lib.npyio.NpzFile):
                    return a, "it is not an archive of arrays"
                if any(m.file_size > MAX_MEMBER for m in z.zip.infolist()):
                    return a, "it holds arrays larger than any it writes"
                if str(z["version"]) != _analysis_version() and str(z["version"]) not in SAME_ANALYSIS:
                    return a, "it holds another version of the analysis"
                sig, take, bits = z["sig"], z["take"], z["bits"]
                ids, far = z["far_ids"], z["far"]
                if not (sig.dtype == take.dtype == np.uint64 and bits.dtype == np.int16 and ids.dtype == np.int64
                        and far.dtype == np.uint64 and sig.ndim == ids.ndim == 1
                        and sig.shape == take.shape == bits.shape and far.shape == (len(ids), 3)):
                    return a, "its arrays are not of the shapes written"
        except FileNotFoundError:
            return a, None
        except Exception as exc:  # noqa: BLE001 - a cache: whatever is wrong with it, it is not used
            return a, f"it cannot be read ({type(exc).__name__}: {exc})"
        a.sig, a.take, a.bits = sig, take, bits
        a.sparse = {int(i): (int(s), int(t), int(b)) for i, (s, t, b) in zip(ids, far, strict=True)}
        return a, None
