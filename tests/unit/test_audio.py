"""Wavs that say which take they are: the LIST/INFO/ICMT provenance chunk, written and read on real files."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from statesvc.audio import (
    DURATION_TOLERANCE,
    Observation,
    Provenance,
    encode_wav,
    inspect,
    read_provenance,
    same_duration,
    text_hash,
)

SR = 22050
HOLA = "b221d9dbb083a7f3"  # hashlib.sha256("hola".encode()).hexdigest()[:16], computed once by hand


def tone(n: int = SR // 2) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(-32768, 32767, n, dtype=np.int16, endpoint=True)


def take(token: str = "tok-1", rev: int = 3, text: str = "hola") -> Provenance:
    return Provenance(text_hash(text), rev, token)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def chunks(data: bytes, pos: int = 12) -> list[tuple[bytes, int, bytes]]:
    """(id, declared size, body) of each chunk, walked independently of the code under test."""
    out = []
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        out.append((cid, size, data[pos + 8:pos + 8 + size]))
        pos += 8 + size + (size & 1)
    assert pos == len(data), "chunks end exactly at the end of the file"
    return out


def test_round_trip_through_a_real_file(tmp_path: Path) -> None:
    pcm, p = tone(), take()
    path = write(tmp_path / "a.wav", encode_wav(pcm, SR, p))
    obs = inspect(path, SR)
    assert obs.valid, obs.reason
    assert obs.sample_rate == SR and obs.channels == 1
    assert same_duration(obs.duration, len(pcm) / SR)
    assert obs.provenance == p
    assert read_provenance(path) == p
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, len(pcm), "PCM_16")
    back, rate = sf.read(path, dtype="int16")
    assert rate == SR and np.array_equal(back, pcm)


def test_layout_fmt_then_list_info_icmt_then_data(tmp_path: Path) -> None:
    p = take()
    data = encode_wav(tone(100), SR, p)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack_from("<I", data, 4)[0] + 8 == len(data)
    ids = [c[0] for c in chunks(data)]
    assert ids == [b"fmt ", b"LIST", b"data"]
    fmt = chunks(data)[0]
    assert fmt[1] == 16 and struct.unpack("<HHIIHH", fmt[2]) == (1, 1, SR, SR * 2, 2, 16)
    assert data.index(p.to_comment().encode()) < 4096


def test_without_provenance_there_is_no_chunk_and_nothing_is_found(tmp_path: Path) -> None:
    data = encode_wav(tone(), SR)
    assert [c[0] for c in chunks(data)] == [b"fmt ", b"data"]
    path = write(tmp_path / "a.wav", data)
    obs = inspect(path, SR)
    assert obs.valid and obs.provenance is None  # the round-trip test's equality rests on the chunk
    assert read_provenance(path) is None
    assert "take" not in obs.to_wire()


@pytest.mark.parametrize("token", ["a", "ab", "abc", "abcd", "x" * 63, "Z_-9" * 16])
def test_comments_of_either_parity_are_padded_and_read_back(tmp_path: Path, token: str) -> None:
    p = take(token)
    data = encode_wav(tone(101), SR, p)
    assert len(data) % 2 == 0
    (_, list_size, list_body) = chunks(data)[1]
    assert list_size % 2 == 0 and list_body[:4] == b"INFO"
    [(cid, icmt_size, icmt_body)] = chunks(list_body, 4)
    comment = p.to_comment().encode()
    assert cid == b"ICMT" and icmt_size == len(comment) + 1 and icmt_body == comment + b"\0"
    assert list_size == 4 + 8 + icmt_size + (icmt_size & 1)
    path = write(tmp_path / "a.wav", data)
    assert inspect(path, SR).provenance == p
    assert np.array_equal(sf.read(path, dtype="int16")[0], tone(101))


def test_token_of_64_characters_and_no_more() -> None:
    p = take("t" * 64)
    assert Provenance.parse(p.to_comment()) == p
    with pytest.raises(ValueError):
        take("t" * 65)
    assert Provenance.parse(p.to_comment() + "t") is None


def test_foreign_wavs_record_no_take(tmp_path: Path) -> None:
    plain = tmp_path / "plain.wav"
    sf.write(plain, tone(), SR, subtype="PCM_16")
    obs = inspect(plain, SR)
    assert obs.valid and obs.provenance is None
    assert read_provenance(plain) is None
    commented = tmp_path / "commented.wav"
    with sf.SoundFile(commented, "w", SR, 1, "PCM_16") as f:
        f.comment = "hello"
        f.write(tone())
    assert b"ICMT" in commented.read_bytes()[:4096], "libsndfile wrote its comment where we look"
    obs = inspect(commented, SR)
    assert obs.valid and obs.provenance is None
    assert read_provenance(commented) is None


def test_our_comment_written_by_libsndfile_is_read_too(tmp_path: Path) -> None:
    """The reader follows RIFF, not our writer's byte layout."""
    p = take("from-sndfile", rev=0)
    path = tmp_path / "a.wav"
    with sf.SoundFile(path, "w", SR, 1, "PCM_16") as f:
        f.comment = p.to_comment()
        f.write(tone())
    assert inspect(path, SR).provenance == p
    assert read_provenance(path) == p


@pytest.mark.parametrize("comment", [
    "",
    "hello",
    f"tts-take v2 text={HOLA} rev=1 token=abc",
    f"TTS-take v1 text={HOLA} rev=1 token=abc",
    f" tts-take v1 text={HOLA} rev=1 token=abc",
    f"tts-take v1 text={HOLA} rev=1 token=abc ",
    f"tts-take v1 text={HOLA} rev=1 token=abc\n",
    f"tts-take v1  text={HOLA} rev=1 token=abc",
    f"tts-take v1 text={HOLA.upper()} rev=1 token=abc",
    f"tts-take v1 text={HOLA[:15]} rev=1 token=abc",
    f"tts-take v1 text={HOLA}0 rev=1 token=abc",
    f"tts-take v1 text={HOLA[:15]}g rev=1 token=abc",
    f"tts-take v1 text={HOLA} rev=-1 token=abc",
    f"tts-take v1 text={HOLA} rev=01 token=abc",
    f"tts-take v1 text={HOLA} rev=1.0 token=abc",
    f"tts-take v1 text={HOLA} rev= token=abc",
    f"tts-take v1 text={HOLA} rev={2**63} token=abc",
    f"tts-take v1 text={HOLA} rev=1 token=",
    f"tts-take v1 text={HOLA} rev=1 token=a b",
    f"tts-take v1 text={HOLA} rev=1 token=a.b",
    f"tts-take v1 text={HOLA} rev=1 token=ñ",
    f"tts-take v1 rev=1 text={HOLA} token=abc",
    f"tts-take v1 text={HOLA} rev=1",
])
def test_parse_rejects_anything_not_exactly_our_shape(comment: str) -> None:
    assert Provenance.parse(comment) is None


def test_parse_accepts_exactly_what_to_comment_writes() -> None:
    for p in (take("a", 0), take("A-b_9", 2**63 - 1), take("x" * 64, 12345, "ñandú")):
        assert p.to_comment() == f"tts-take v1 text={p.text_hash} rev={p.rev} token={p.token}"
        assert Provenance.parse(p.to_comment()) == p


@pytest.mark.parametrize("fields", [
    ("ABCDEF0123456789", 1, "t"), (HOLA[:15], 1, "t"), (HOLA, -1, "t"), (HOLA, True, "t"), (HOLA, 1.0, "t"),
    (HOLA, "1", "t"), (HOLA, 2**63, "t"), (HOLA, 1, ""), (HOLA, 1, "a b"), (HOLA, 1, 7),
])
def test_a_provenance_that_could_not_be_parsed_back_cannot_be_made(fields: tuple) -> None:
    with pytest.raises(ValueError):
        Provenance(*fields)


def test_wire_round_trip_and_validation() -> None:
    p = take()
    assert p.to_wire() == {"text_hash": HOLA, "rev": 3, "token": "tok-1"}
    assert Provenance(**p.to_wire()) == p  # the wire's fields are the value's: it reads back whole
    bad = [
        {},
        {"text_hash": HOLA, "rev": 3},
        {"text_hash": HOLA, "rev": 3, "token": "tok-1", "extra": 1},
        {"text_hash": HOLA, "rev": -3, "token": "tok-1"},
        {"text_hash": HOLA, "rev": "3", "token": "tok-1"},
        {"text_hash": HOLA, "rev": True, "token": "tok-1"},
        {"text_hash": HOLA, "rev": 3, "token": "tok 1"},
        {"text_hash": HOLA, "rev": 3, "token": None},
        {"text_hash": HOLA.upper(), "rev": 3, "token": "tok-1"},
        {"text_hash": 12, "rev": 3, "token": "tok-1"},
    ]
    for obj in bad:
        with pytest.raises((TypeError, ValueError)):  # a missing or extra field, or a bad value
            Provenance(**obj)


def test_observation_to_wire_has_a_take_only_when_there_is_one() -> None:
    p = take()
    with_take = Observation(True, "", 0.5, SR, 1, p).to_wire()
    assert with_take == {"valid": True, "duration": 0.5, "sample_rate": SR, "take": p.to_wire()}
    assert Observation(True, "", 0.5, SR, 1).to_wire() == {"valid": True, "duration": 0.5, "sample_rate": SR}
    assert Observation(False, "empty file", provenance=p).to_wire() == {"valid": False, "reason": "empty file"}


def test_text_hash() -> None:
    assert text_hash("hola") == HOLA == hashlib.sha256(b"hola").hexdigest()[:16]
    assert text_hash("hola ") != HOLA and text_hash("Hola") != HOLA
    assert text_hash("ñandú") == hashlib.sha256("ñandú".encode()).hexdigest()[:16]


def test_same_duration() -> None:
    assert same_duration(0.5, 0.5) and same_duration(1, 1.0) and same_duration(np.float32(0.5), 0.5)
    assert same_duration(0.5, 0.5 + DURATION_TOLERANCE / 2)
    assert not same_duration(0.5, 0.5 + DURATION_TOLERANCE * 2)
    assert not same_duration(None, 0.5) and not same_duration(0.5, None) and not same_duration(None, None)
    assert not same_duration(float("nan"), float("nan")) and not same_duration(True, 1.0)


@pytest.mark.parametrize("pcm", [
    np.zeros((10, 1), dtype=np.int16), np.zeros((10, 2), dtype=np.int16), np.int16(3),
    np.zeros(10, dtype=np.float32), np.zeros(10, dtype=np.int32), np.zeros(10, dtype=np.uint16),
])
def test_encode_refuses_anything_but_mono_int16(pcm: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_wav(pcm, SR, take())


def test_big_endian_int16_is_written_little_endian(tmp_path: Path) -> None:
    pcm = tone(50)
    path = write(tmp_path / "a.wav", encode_wav(pcm.astype(">i2"), SR))
    assert np.array_equal(sf.read(path, dtype="int16")[0], pcm)


def test_damaged_or_odd_files_have_no_provenance(tmp_path: Path) -> None:
    good = encode_wav(tone(), SR, take())
    assert read_provenance(tmp_path / "missing.wav") is None
    truncated = write(tmp_path / "truncated.wav", good[:-1000])
    assert read_provenance(truncated) is None and not inspect(truncated, SR).valid
    header_only = write(tmp_path / "header.wav", good[:60])
    assert read_provenance(header_only) is None
    assert read_provenance(write(tmp_path / "empty.wav", b"")) is None
    assert read_provenance(write(tmp_path / "random.wav", os.urandom(4000))) is None
    target = write(tmp_path / "target.wav", good)
    (tmp_path / "link.wav").symlink_to(target)
    assert read_provenance(tmp_path / "link.wav") is None, "a symlink is not followed"
    (tmp_path / "dir.wav").mkdir()
    assert read_provenance(tmp_path / "dir.wav") is None
    os.mkfifo(tmp_path / "fifo.wav")
    assert read_provenance(tmp_path / "fifo.wav") is None, "a FIFO neither hangs nor counts"


def with_junk_before_list(data: bytes, junk_size: int) -> bytes:
    """`data` (from encode_wav) with a foreign `junk` chunk between fmt and LIST, sizes fixed up."""
    fmt_end = 12 + 8 + 16
    junk = b"junk" + struct.pack("<I", junk_size) + b"\0" * junk_size
    out = data[:fmt_end] + junk + data[fmt_end:]
    return out[:4] + struct.pack("<I", len(out) - 8) + out[8:]


def test_a_list_cut_off_by_the_4_kib_head_is_not_trusted(tmp_path: Path) -> None:
    """A comment read in part could name a shorter token; the LIST must lie whole within the head."""
    p = take("t" * 64)
    data = encode_wav(tone(), SR, p)
    list_at = 4096 - 40  # the LIST starts 40 bytes before the end of the head
    cut = write(tmp_path / "cut.wav", with_junk_before_list(data, list_at - 36 - 8))
    assert cut.read_bytes()[list_at:list_at + 4] == b"LIST"
    obs = inspect(cut, SR)
    assert obs.valid and obs.provenance is None
    assert read_provenance(cut) is None
    whole = write(tmp_path / "whole.wav", with_junk_before_list(data, list_at - 36 - 8 - 200))
    assert inspect(whole, SR).provenance == p, "the same file with the LIST inside the head"
    assert read_provenance(whole) == p


def test_reading_provenance_loads_neither_soundfile_nor_numpy(tmp_path: Path) -> None:
    """The daemon reads takes, and the supervisor imports this module before its children start."""
    path = write(tmp_path / "a.wav", encode_wav(tone(), SR, take()))
    code = ("import sys; from statesvc.audio import read_provenance; "
            f"assert read_provenance({str(path)!r}).token == 'tok-1'; "
            "print(sorted({'soundfile', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[]"
