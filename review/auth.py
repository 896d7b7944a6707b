"""Who may use the page: loopback names, the Host and Origin of a request, the token and its cookie, the CSRF header.

A request passes ``refusal`` before any route sees it (the app's middleware); a response from it
refuses the request, with its status and the reason.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from .errors import error

COOKIE = "statesvc_token"
CSRF_HEADER = "x-csrf-token"


def loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without port or brackets) is this machine's
    loopback: ``localhost`` or an address in 127.0.0.0/8 or ::1, exactly (not a name that merely
    starts or ends like one)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The name or address in a Host header (``name``, ``name:port``, ``[v6]:port``); None when it
    is not shaped like one."""
    if header.startswith("["):
        inside, sep, rest = header[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and _port(rest[1:]))):
            return None
        return inside if ":" in inside else None  # brackets hold an IPv6 address only
    name, sep, port = header.partition(":")
    if sep and not _port(port):
        return None  # another colon, or no port after it
    return name


def _port(text: str) -> bool:
    return text.isascii() and text.isdigit()


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"token file {path} is not UTF-8 text") from None
    if len(token) < 16:
        raise ValueError(f"token file {path} must hold a token of at least 16 characters")
    return token


def refusal(request: Request, host: str, token: str | None, csrf: str) -> Response | None:
    """Origin, token and CSRF checks of a request to a page served on ``host``; a response refuses
    the request, None lets it through."""
    return _foreign(request, loopback(host)) or _unauthorized(request, token) or _forged(request, csrf)


def _foreign(request: Request, on_loopback: bool) -> Response | None:
    """A request that another site's page may have sent. On loopback, a Host that is not loopback
    (a DNS rebinding: the attacker's name now points at 127.0.0.1) or an Origin other than the
    Host's is refused, whatever the method. Elsewhere (a token is required) an action's Origin,
    when sent, must be the Host the request was sent to."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    same = origin is None or origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())
    if on_loopback:
        name = host_name(host)
        if name is None or not loopback(name):
            return error(403, f"refused: Host {host[:80]!r} is not this machine's loopback (a DNS rebinding?); "
                              "open the page as http://127.0.0.1:PORT/ or http://localhost:PORT/")
        if not same:
            return error(403, f"refused: Origin {origin[:80]!r} is not this page's")
    elif not same and request.method not in ("GET", "HEAD"):
        return error(403, f"refused: Origin {origin[:80]!r} is not the page this request was sent to")
    return None


def _unauthorized(request: Request, token: str | None) -> Response | None:
    """The token, compared as bytes (UTF-8, as in the token file): whatever characters a client
    sends, a wrong token is a 401. The cookie holds a digest of the token, not the token: ASCII,
    whatever the token's characters."""
    if token is None:
        return None
    secret = token.encode("utf-8")
    given = request.query_params.get("token")
    if given is not None and request.method == "GET":
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), secret):
            return error(401, "wrong token")
        clean = request.url.remove_query_params("token")
        resp = RedirectResponse(str(clean.path) + (f"?{clean.query}" if clean.query else ""), status_code=303)
        resp.set_cookie(COOKIE, _cookie_of(secret), httponly=True, samesite="strict")
        return resp
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):  # headers arrive decoded as latin-1: back to their bytes
        ok = hmac.compare_digest(auth[7:].encode("latin-1", "replace"), secret)
    else:
        ok = hmac.compare_digest(request.cookies.get(COOKIE, "").encode("latin-1", "replace"),
                                 _cookie_of(secret).encode())
    if not ok:
        return error(401, "a token is needed: open the page once as /?token=TOKEN, or send "
                          "Authorization: Bearer TOKEN")
    return None


def _cookie_of(secret: bytes) -> str:
    return hmac.new(secret, b"statesvc dashboard cookie", "sha256").hexdigest()


def _forged(request: Request, csrf: str) -> Response | None:
    if request.method not in ("GET", "HEAD") and not hmac.compare_digest(
            request.headers.get(CSRF_HEADER, "").encode("latin-1", "replace"), csrf.encode()):
        return error(403, "missing or wrong CSRF header: actions are sent by the page")
    return None
