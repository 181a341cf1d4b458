"""What every request and response goes through: proxies, same-origin forms, headers, JSON.

- `TrustedProxies` takes the visitor's address and scheme from the last TRUSTED_PROXIES
  entries of X-Forwarded-For/-Proto/-Host, and only when they parse: an address that is
  not an IP falls back to the socket's peer.
- `BoundedBodies` holds chunked bodies to MAX_CONTENT_LENGTH (413 past it).
- `check_same_origin` refuses a form POST whose Origin (or Referer) is another site.
- `protective_headers` sets the referrer policy, CSP, HSTS and the Server header.
- `GuardedJSON` turns JSON nested too deeply for the parser into a 400, not a 500.
"""

from __future__ import annotations

import io
import ipaddress
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from flask_wtf.csrf import CSRFError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Where the socket's own peer address is kept once REMOTE_ADDR holds the visitor's.
PEER_ADDR = "onward.peer_addr"

#: Pages that load only our own script and style files. Inline styles stay allowed:
#: the "read in your browser" pages show the course emails, whose MJML-built HTML is
#: styled inline; no inline script, event handler or plugin runs anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: One year, as the HSTS preload list asks; sent only over https.
HSTS = "max-age=31536000"
#: Pages whose URL holds no secret: a same-origin Referer (and Origin) on their forms.
PUBLIC_BLUEPRINTS = frozenset({"pages", "health", "static"})
#: POSTs that need no same-origin check: the proof is the signed URL, the JSON body
#: (which no cross-site form can send) or the relay's signature.
CROSS_ORIGIN_BLUEPRINTS = frozenset({"links", "api", "webhooks"})
#: JSON deeper than this is refused (the parser itself would run out of stack).
MAX_JSON_DEPTH = 64


def parse_ip(text: str) -> str | None:
    """The IP address in `text` (`ip`, `ip:port`, `[v6]` or `[v6]:port`), or None."""
    value = text.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _from_right(values: Iterable[str], hops: int) -> str | None:
    """The entry the outermost of `hops` trusted proxies added, or None if there is none."""
    entries = [entry.strip() for value in values for entry in value.split(",")]
    return entries[-hops] if hops and len(entries) >= hops else None


class TrustedProxies:
    """WSGI middleware: the visitor's address, scheme and host as `hops` proxies report them."""

    def __init__(self, app: WSGIApplication, hops: int) -> None:
        self.app = app
        self.hops = hops

    def __call__(self, wsgi_env: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        peer = wsgi_env.get("REMOTE_ADDR", "")
        wsgi_env[PEER_ADDR] = peer
        forwarded = _from_right([wsgi_env.get("HTTP_X_FORWARDED_FOR", "")], self.hops)
        wsgi_env["REMOTE_ADDR"] = (forwarded and parse_ip(forwarded)) or peer
        scheme = _from_right([wsgi_env.get("HTTP_X_FORWARDED_PROTO", "")], self.hops)
        if scheme and scheme.lower() in {"http", "https"}:
            wsgi_env["wsgi.url_scheme"] = scheme.lower()
        host = _from_right([wsgi_env.get("HTTP_X_FORWARDED_HOST", "")], self.hops)
        if host and all(char.isalnum() or char in ".-:[]" for char in host):
            wsgi_env["HTTP_HOST"] = host
        return self.app(wsgi_env, start_response)


class BoundedBodies:
    """WSGI middleware: a chunked body (no Content-Length) is held to `limit` bytes too.

    Werkzeug cuts such a stream at MAX_CONTENT_LENGTH without a word, so a form or
    JSON body would be read truncated. Reading one byte past the limit and giving the
    body the length found lets Werkzeug answer 413 as it does for a declared length.
    """

    def __init__(self, app: WSGIApplication, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, wsgi_env: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        chunked = "chunked" in wsgi_env.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not wsgi_env.get("CONTENT_LENGTH"):
            body = wsgi_env["wsgi.input"].read(self.limit + 1)
            wsgi_env["wsgi.input"] = io.BytesIO(body)
            wsgi_env["CONTENT_LENGTH"] = str(len(body))
            # Werkzeug ignores a Content-Length beside Transfer-Encoding: chunked.
            del wsgi_env["HTTP_TRANSFER_ENCODING"]
        return self.app(wsgi_env, start_response)


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of a URL, lowercased, or None if it has none."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_same_origin(base_url: str) -> None:
    """Refuse (CSRFError) a state-changing form request sent from another site.

    The form's own CSRF token is checked as well (Flask-WTF); this check replaces
    Flask-WTF's strict Referer check over https, which failed whenever a browser
    sent no Referer. The Origin header counts, else the Referer's origin; a request
    with neither (an old browser, a privacy tool) relies on the token alone.
    """
    if request.method in {"GET", "HEAD", "OPTIONS", "TRACE"}:
        return
    if request.blueprint in CROSS_ORIGIN_BLUEPRINTS:
        return
    sent = request.headers.get("Origin")
    if sent is None and request.referrer:
        sent = origin_of(request.referrer) or "null"
    if sent is None:
        return
    allowed = {origin_of(base_url), origin_of(request.host_url)}
    if sent.lower() not in allowed:
        raise CSRFError("The form was sent from another site.")


def protective_headers(response: Response) -> Response:
    """Headers every answer carries (set unless the view set its own)."""
    # Signed links sit in URLs: never leak them in a Referer. The public pages hold
    # none, and their forms need a same-origin Origin (browsers send "null" under
    # no-referrer), so they keep the Referer to this site.
    public = request.blueprint in PUBLIC_BLUEPRINTS or request.blueprint is None
    response.headers.setdefault("Referrer-Policy", "same-origin" if public else "no-referrer")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


class GuardedJSON(DefaultJSONProvider):
    """Flask's JSON, refusing (ValueError, so a 400) bodies nested deeper than MAX_JSON_DEPTH."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        text = s.decode() if isinstance(s, bytes) else s
        if _depth(text) > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            return json.loads(text, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _depth(text: str) -> int:
    """The nesting depth of JSON `text`, brackets inside strings not counted."""
    # Fewer brackets than the limit cannot nest deeper than it: one pass in C
    # spares the character loop for every ordinary body.
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def init_app(app: Flask, *, base_url: str, trusted_proxies: int) -> None:
    """Install the proxy middleware, the same-origin check, the headers and the JSON guard."""
    app.wsgi_app = BoundedBodies(app.wsgi_app, int(app.config["MAX_CONTENT_LENGTH"]))  # type: ignore[method-assign,assignment]
    if trusted_proxies:
        app.wsgi_app = TrustedProxies(app.wsgi_app, trusted_proxies)  # type: ignore[method-assign,assignment]
    app.json = GuardedJSON(app)
    app.config["WTF_CSRF_SSL_STRICT"] = False
    app.before_request(lambda: check_same_origin(base_url))
    app.after_request(protective_headers)
