"""Which GPUs a run uses: `bin/run-pipeline --gpus LIST|all [--per-gpu K]`.

Each generator is given one GPU through ``CUDA_VISIBLE_DEVICES``, so a model that uses "the GPU"
(``cuda:0``) uses its own. ``LIST`` is taken as given (indexes or UUIDs as ``nvidia-smi -L``
prints them); ``all`` is what this process may use: ``CUDA_VISIBLE_DEVICES`` when set (a Slurm
allocation sets it), else ``NVIDIA_VISIBLE_DEVICES`` as the NVIDIA container runtime means it
(``all``, ``none``, ``void``; its host indexes renumbered from 0, as CUDA numbers them inside the
container), else what ``nvidia-smi -L`` lists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

NVIDIA_SMI_TIMEOUT = 20.0
_LINE = re.compile(r"^GPU (\d+):.*?(?:\(UUID: (\S+?)\))?\s*$")


class NoGpus(Exception):
    """No GPU to run on, or a list that cannot be used; one line says why."""


def parse_list(text: str) -> list[str]:
    """``0,1`` or ``GPU-uuid,...``: each item as given, in order; empty items or repeats refused."""
    items = [x.strip() for x in text.split(",")]
    if not items or any(not x for x in items):
        raise NoGpus(f"--gpus {text!r}: give comma-separated GPU indexes or UUIDs, or all")
    bad = [x for x in items if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9:_.\-/]*", x)]
    if bad:
        raise NoGpus(f"--gpus {text!r}: {bad[0]!r} is not a GPU index or UUID")
    if len(set(items)) != len(items):
        raise NoGpus(f"--gpus {text!r} names a GPU twice (use --per-gpu K for several generators per GPU)")
    return items


def from_nvidia_smi(env: dict[str, str]) -> list[str]:
    """The indexes ``nvidia-smi -L`` lists (none when it is missing or fails)."""
    exe = shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, env=env,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [m.group(1) for line in out.stdout.splitlines() if (m := _LINE.match(line.strip()))]


def discover(env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """Every GPU this process may use, and where that was read."""
    env = dict(os.environ if env is None else env)
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        return _visible(cuda, "CUDA_VISIBLE_DEVICES"), "CUDA_VISIBLE_DEVICES"
    nvidia = env.get("NVIDIA_VISIBLE_DEVICES")
    if nvidia is not None and nvidia.strip() != "all":
        host = _visible(nvidia, "NVIDIA_VISIBLE_DEVICES")
        # The runtime names the HOST's GPUs; inside the container CUDA numbers the ones it shows
        # from 0 (UUIDs stay valid as they are), so host indexes 2,3 are CUDA's 0,1 here.
        inside = [str(i) if g.isdigit() else g for i, g in enumerate(host)]
        return inside, "NVIDIA_VISIBLE_DEVICES"
    # unset, or "all": the container runtime shows every GPU of the host; nvidia-smi lists them
    return from_nvidia_smi(env), "nvidia-smi -L"


def _visible(value: str, name: str) -> list[str]:
    value = value.strip()
    if value in ("", "none", "void", "NoDevFiles", "-1"):  # the runtime's and CUDA's ways of saying none
        return []
    try:
        return parse_list(value)
    except NoGpus:
        raise NoGpus(f"{name}={value!r} is not a list of GPU indexes or UUIDs") from None


def resolve(spec: str, env: dict[str, str] | None = None) -> list[str]:
    """The GPUs of ``--gpus SPEC``; NoGpus when there are none."""
    if spec.strip() != "all":
        return parse_list(spec)
    gpus, source = discover(env)
    if not gpus:
        raise NoGpus(f"--gpus all: no GPU found (from {source}); give --gpus LIST or run with --workers N")
    return gpus


def assignments(gpus: list[str], per_gpu: int) -> list[str]:
    """One GPU per generator: ``per_gpu`` generators on each, GPU by GPU."""
    return [g for g in gpus for _ in range(per_gpu)]
