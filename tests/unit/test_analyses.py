"""What the dashboard's analysis of takes found, kept by entry id, in memory and in its cache file."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from review import analyses
from review.analyses import Analyses, file_key

IDS = (1, 2, 5000, 10**12, -3)  # dense ids in columns, far ones aside


def _filled() -> Analyses:
    a = Analyses()
    for eid in IDS:
        a.put(eid, file_key(100, eid, 7), f"take{eid}", eid % 7)
    a.put(9, file_key(1, 2, 3), "8712b8bc076f3787", 3)  # a daemon's take token
    return a


def of_take(a: Analyses, eid: int, take: str) -> int | None:
    """The flags found for one take, through the lookup a load makes of every take at once."""
    found = int(a.of_takes(np.array([eid], np.int64), [take])[0])
    return None if found < 0 else found


def _check(a: Analyses) -> None:
    for eid in IDS:
        assert of_take(a, eid, f"take{eid}") == eid % 7 and a.of_file(eid, file_key(100, eid, 7)) == eid % 7
        assert of_take(a, eid, "another take") is None and a.of_file(eid, file_key(101, eid, 7)) is None
    assert of_take(a, 9, "8712b8bc076f3787") == 3 and of_take(a, 9, "8712b8bc076f3788") is None
    assert of_take(a, 3, "take3") is None and a.of_file(10**13, file_key(100, 10**13, 7)) is None


def test_flags_are_kept_by_id_dense_or_far_apart() -> None:
    a = _filled()
    _check(a)
    assert len(a.bits) < 20_000 and set(a.sparse) == {10**12, -3}


def test_the_cache_file_holds_them_for_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / analyses.CACHE_FILE
    a = _filled()
    a.save(path)
    b, why = Analyses.load(path)
    assert why is None
    _check(b)
    assert not list(tmp_path.glob(".*tmp")), "a temporary file was left"
    # nothing changed: not written again
    before = path.stat().st_mtime_ns
    b.save(path)
    assert path.stat().st_mtime_ns == before


def test_a_cache_file_that_cannot_be_used_is_ignored_with_a_reason(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / analyses.CACHE_FILE
    assert Analyses.load(path)[1] is None  # none yet: nothing to say
    for bad in (b"", b"not a zip at all", b"PK\x03\x04" + bytes(100), _member(b"\x93NUMPY garbage")):
        path.write_bytes(bad)
        a, why = Analyses.load(path)
        assert why and "cannot be read" in why and of_take(a, 1, "take1") is None
    _filled().save(path)
    monkeypatch.setattr(analyses, "_FORMAT", "another analysis")  # as when review/flags.py changes
    a, why = Analyses.load(path)
    assert why == "it holds another version of the analysis" and of_take(a, 1, "take1") is None
    monkeypatch.undo()
    with open(path, "wb") as f:
        np.savez(f, version=np.array(analyses._analysis_version()), sig=np.zeros(3, np.uint64),
                 take=np.zeros(2, np.uint64), bits=np.zeros(3, np.int16), far_ids=np.zeros(0, np.int64),
                 far=np.zeros((0, 3), np.uint64))
    assert Analyses.load(path)[1] == "its arrays are not of the shapes written"
    with open(path, "wb") as f:  # the same shapes, but not one row an id
        np.savez(f, version=np.array(analyses._analysis_version()), sig=np.zeros((2, 2), np.uint64),
                 take=np.zeros((2, 2), np.uint64), bits=np.zeros((2, 2), np.int16),
                 far_ids=np.zeros((0, 0), np.int64), far=np.zeros((0, 3), np.uint64))
    assert Analyses.load(path)[1] == "its arrays are not of the shapes written"
    # a member claiming to be huge (a zip bomb) is not unpacked
    path.write_bytes(_member(b"x", claimed=analyses.MAX_MEMBER + 1))
    assert Analyses.load(path)[1] == "it holds arrays larger than any it writes"


def _member(data: bytes, claimed: int | None = None) -> bytes:
    """A zip of one member, its directory claiming ``claimed`` bytes once unpacked."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("sig.npy", data)
    raw = bytearray(buf.getvalue())
    if claimed is not None:  # the uncompressed size, in the local header (22) and the directory (24)
        at = raw.rfind(b"PK\x01\x02")
        raw[at + 24:at + 28] = claimed.to_bytes(4, "little")
        raw[22:26] = claimed.to_bytes(4, "little")
    return bytes(raw)


def test_a_take_token_of_any_shape_has_a_key_and_saves(tmp_path: Path) -> None:
    a = Analyses()
    tokens = ["-1", "0x1f", "1f", "01f", "1_f", "FFFFFFFFFFFFFFFF", "ffffffffffffffff", "x" * 64, ""]
    for eid, tk in enumerate(tokens, 1):
        a.put(eid, 5, tk, eid)
        a.put(10**12 + eid, 5, tk, eid)
    assert len({analyses.take_key(t) for t in tokens}) == len(tokens)
    a.save(tmp_path / analyses.CACHE_FILE)
    b = Analyses.load(tmp_path / analyses.CACHE_FILE)[0]
    for eid, tk in enumerate(tokens, 1):
        assert of_take(b, eid, tk) == eid and of_take(b, 10**12 + eid, tk) == eid


def test_a_temporary_file_left_by_a_save_cut_short_is_removed(tmp_path: Path) -> None:
    left = tmp_path / f".{analyses.CACHE_FILE}.abc123{analyses.TEMP_SUFFIX}"
    left.write_bytes(b"half")
    Analyses.load(tmp_path / analyses.CACHE_FILE)
    assert not left.exists()


def test_a_cache_file_of_an_earlier_version_known_to_flag_the_same_is_used(tmp_path: Path, monkeypatch) -> None:
    """The page's cache from before issue 18 (review/takes.py, renamed flags.py with no change to what
    it computes) is used as it is: an upgrade does not read every take again."""
    path = tmp_path / analyses.CACHE_FILE
    monkeypatch.setattr(analyses, "_analysis_version", lambda: "ae085d9b1ddd6708ed1ec4d925adf6ac")
    _filled().save(path)  # as the page before issue 18 wrote it
    monkeypatch.undo()
    a, why = Analyses.load(path)
    assert why is None and of_take(a, 1, "take1") == 1 and of_take(a, 5000, "take5000") == 5000 % 7
