"""A remote generator in its own network namespace reaches the daemon over tcp with CURVE keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.books import curve_keys, make_dataset, read_state
from tests.support.processes import BIN, ROOT, wait_for


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True)


@pytest.fixture
def netns():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    name = f"gen{uuid.uuid4().hex[:6]}"
    host_if, ns_if = f"vh{name[3:]}", f"vn{name[3:]}"
    r = sh("ip", "netns", "add", name)
    if r.returncode != 0:
        pytest.skip(f"this machine forbids network namespaces: {r.stderr.strip()}")
    try:
        for cmd in (["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
                    ["ip", "link", "set", ns_if, "netns", name],
                    ["ip", "addr", "add", "10.77.0.1/24", "dev", host_if],
                    ["ip", "link", "set", host_if, "up"],
                    ["ip", "netns", "exec", name, "ip", "addr", "add", "10.77.0.2/24", "dev", ns_if],
                    ["ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up"],
                    ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]):
            r = sh(*cmd)
            if r.returncode != 0:
                pytest.skip(f"cannot set up a veth pair: {' '.join(cmd)}: {r.stderr.strip()}")
        yield name
    finally:
        sh("ip", "link", "del", host_if)
        sh("ip", "netns", "del", name)


def test_generator_in_netns_with_and_without_keys(tmp_path: Path, netns: str, start_daemon, monkeypatch) -> None:
    keys, allow = curve_keys(tmp_path, allowed=("gpu1",))
    ds = make_dataset(tmp_path, [f"texto remoto {i}" for i in range(12)])
    endpoint = "tcp://10.77.0.1:47123"
    monkeypatch.setenv("STATESVC_CLIENT_KEY", str(keys / "gpu1.key_secret"))
    monkeypatch.setenv("STATESVC_SERVER_KEY", str(keys / "daemon.key"))
    d = start_daemon(ds, "--endpoint", endpoint, "--curve-secret", str(keys / "daemon.key_secret"),
                     "--allow", str(allow))
    gen_argv = ["ip", "netns", "exec", netns, str(BIN / "pipeline"), "generate", "--dataset", str(ds),
                "--endpoint", endpoint, "--synth", "tone"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # without keys: refused, nothing changes
    no_keys = {k: v for k, v in env.items() if not k.startswith("STATESVC_")}
    stranger = subprocess.Popen(gen_argv, env=no_keys, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        stranger.wait(timeout=4)
    except subprocess.TimeoutExpired:
        pass
    assert read_state(ds)["generating"] == 0 and read_state(ds)["completed"] == 0
    stranger.kill()
    stranger.communicate()
    # with keys: the whole dataset gets done from the other namespace
    gen = subprocess.Popen(gen_argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: read_state(ds)["completed"] == 12, 60, "remote generator finished")
    finally:
        gen.terminate()
        _, err = gen.communicate(timeout=30)
    assert gen.returncode == 0, err
    assert "10.77.0.1" in err  # it really talked over the veth pair
    assert d.proc.poll() is None
