"""Remote generators: a tcp daemon requires CurveZMQ and accepts only keys in its allow folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from statesvc.client import Client, Unavailable
from statesvc.curve import CurveError
from tests.support.books import curve_keys, make_dataset
from tests.support.processes import cli, free_port, wait_for


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out, allow = curve_keys(tmp_path, allowed=("gpu1",), others=("stranger",))
    return {"dir": out, "allow": allow}


def test_tcp_requires_keys(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["a"])
    r = cli("serve", "--dataset", str(ds), "--endpoint", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode != 0 and "statesvc keygen" in r.stderr and "Traceback" not in r.stderr


def test_only_allowed_keys_get_in(tmp_path: Path, keys: dict, start_daemon, monkeypatch) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"])
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    monkeypatch.setenv("STATESVC_CLIENT_KEY", str(keys["dir"] / "gpu1.key_secret"))
    monkeypatch.setenv("STATESVC_SERVER_KEY", str(keys["dir"] / "daemon.key"))
    d = start_daemon(ds, "--endpoint", endpoint, "--curve-secret", str(keys["dir"] / "daemon.key_secret"),
                     "--allow", str(keys["allow"]))
    with Client(endpoint, timeout=5, retries=1) as c:
        assert c.call("claim", owner="remote", n=1)["entries"]
    monkeypatch.setenv("STATESVC_CLIENT_KEY", str(keys["dir"] / "stranger.key_secret"))
    with Client(endpoint, timeout=1, retries=1) as c, pytest.raises(Unavailable):
        c.call("ping")
    wait_for(lambda: "refused a client with an unknown CURVE key" in d.output(), 10, "refusal logged")
    monkeypatch.delenv("STATESVC_CLIENT_KEY")
    monkeypatch.delenv("STATESVC_SERVER_KEY")
    with pytest.raises(CurveError, match="needs CURVE keys"):
        Client(endpoint, timeout=1, retries=1)  # no keys: said at once, not after a timeout
    plain = zmq.Context.instance().socket(zmq.DEALER)  # and plain text is never accepted on tcp
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(endpoint)
    plain.send(b'{"op": "ping", "rid": 1}')
    assert not plain.poll(1000)
    plain.close()
    # a key added to the allow folder works without a restart
    (keys["allow"] / "stranger.key").write_bytes((keys["dir"] / "stranger.key").read_bytes())
    monkeypatch.setenv("STATESVC_CLIENT_KEY", str(keys["dir"] / "stranger.key_secret"))
    monkeypatch.setenv("STATESVC_SERVER_KEY", str(keys["dir"] / "daemon.key"))
    with Client(endpoint, timeout=5, retries=1) as c:
        assert c.call("ping")["pid"] == d.proc.pid


def test_ipc_socket_is_owner_only(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["a"])
    start_daemon(ds)
    assert (ds / "statesvc.sock").stat().st_mode & 0o077 == 0
