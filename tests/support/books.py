"""The books as the tests seed and read them: a dataset from texts, the state as every reader sees
it or as the file alone holds it, CURVE keys, and a generator's result for a claimed entry."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.support.processes import cli


def read_state(dataset: Path) -> dict:
    """The state as every reader sees it (the file, then its journal), shaped like the file."""
    from statesvc.loader import load
    s = load(dataset)
    return {**s.counters(), "sample_rate": s.sample_rate, "answers": s.answers,
            "entries": [e.to_dict() for e in s.entries]}


def read_file(dataset: Path) -> dict:
    """generation_state.json alone, as a person or the post-mortem's snippet reads it."""
    return orjson.loads((dataset / "generation_state.json").read_bytes())


def curve_keys(root: Path, allowed: tuple[str, ...], others: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """CURVE key pairs in ``root/keys`` (the daemon's and each client's) and an allow folder
    ``root/allow`` holding the public keys of ``allowed`` only."""
    keys, allow = root / "keys", root / "allow"
    for name in ("daemon", *allowed, *others):
        cli("keygen", "--out", str(keys), "--name", name, check=True)
    allow.mkdir()
    for name in allowed:
        (allow / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    return keys, allow


def make_dataset(root: Path, texts: list[str], name: str = "ds") -> Path:
    ds = root / name
    tf = root / f"{name}-texts.txt"
    tf.write_text("\n".join(texts) + "\n", encoding="utf-8")
    cli("init", "--dataset", str(ds), "--texts", str(tf), check=True)
    return ds


def take(c: dict, duration: float = 1.0, sample_rate: int = 22050, **kw: object) -> dict:
    """A completed result for the claimed item ``c``, as a generator sends it, with no take file
    (a client of the books alone)."""
    return {"id": c["id"], "token": c["token"], "status": "completed", "duration_seconds": duration,
            "sample_rate": sample_rate, "text_hash": c["text_hash"], "rev": c["rev"], "take_file": False, **kw}
