"""CurveZMQ for tcp endpoints: key pairs, the daemon's allow folder, and the client side.

A daemon listening on tcp requires encryption and accepts only clients whose public key
is in its allow folder (re-read when an unknown key shows up, so adding a key needs no
restart). Local ipc endpoints stay unauthenticated but owner-only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("statesvc")

ENV_CLIENT_KEY = "STATESVC_CLIENT_KEY"   # the client's .key_secret file
ENV_SERVER_KEY = "STATESVC_SERVER_KEY"   # the daemon's public .key file


class CurveError(Exception):
    """Keys missing or unreadable; one line says which."""


def keygen(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    import zmq.auth  # here, not at the top: only key handling needs it (it costs every process 30 ms)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_pair(path: Path) -> tuple[bytes, bytes]:
    try:
        import zmq.auth
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot read key {path}: {exc}") from None
    if secret is None:
        raise CurveError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(path: Path) -> bytes:
    try:
        import zmq.auth
        return zmq.auth.load_certificate(str(path))[0]
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot read key {path}: {exc}") from None


class AllowFolder:
    """The ZAP credentials provider: a client is allowed if its public key is in the folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.keys: set[bytes] = set()
        self.reload()

    def reload(self) -> None:
        if not self.folder.is_dir():
            raise CurveError(f"allow folder {self.folder} does not exist")
        import zmq.auth
        self.keys = set(zmq.auth.load_certificates(str(self.folder)))

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.reload()
        if key in self.keys:
            return True
        log.warning("refused a client with an unknown CURVE key %s", key.decode(errors="replace")[:12])
        return False


def secure_server(ctx: zmq.Context, sockets: list[zmq.Socket], secret_file: Path, allow: Path
                  ) -> ThreadAuthenticator:
    from zmq.auth.thread import ThreadAuthenticator
    public, secret = load_pair(secret_file)
    provider = AllowFolder(allow)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=provider)
    for s in sockets:
        s.curve_secretkey = secret
        s.curve_publickey = public
        s.curve_server = True
    return auth


def secure_client(sock: zmq.Socket) -> None:
    """Make a client socket a CURVE client from $STATESVC_CLIENT_KEY and $STATESVC_SERVER_KEY."""
    client, server = os.environ.get(ENV_CLIENT_KEY), os.environ.get(ENV_SERVER_KEY)
    if not client or not server:  # a daemon on tcp never answers plain text: say so now, not after a timeout
        raise CurveError(f"a tcp endpoint needs CURVE keys: set {ENV_CLIENT_KEY} to your .key_secret file and "
                         f"{ENV_SERVER_KEY} to the daemon's .key file (statesvc keygen makes them)")
    public, secret = load_pair(Path(client))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = load_public(Path(server))
