"""Writing a benchmark's results into docs/BENCHMARKS.md, one section per benchmark."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEAD = "# Benchmarks\n\nEach section is rewritten by the script that measures it. Ratios are taken " \
       "against a baseline measured in the same run, interleaved, because this machine is shared.\n"


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu}), {system}, Python {platform.python_version()}"


def update(section: str, title: str, body: str) -> None:
    """Replace (or append) the section named ``section`` with a dated, reproducible block."""
    cmd = " ".join([".venv/bin/python", *sys.argv])
    block = (f"<!-- {section}:start -->\n## {title}\n\n"
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.\n\n"
             f"Command: `{cmd}`\n\n{body.rstrip()}\n<!-- {section}:end -->\n")
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEAD
    pattern = re.compile(rf"<!-- {section}:start -->.*?<!-- {section}:end -->\n", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    DOC.write_text(text)
