"""TLS and basic auth from a Prometheus exporter-toolkit ``web-config.yml``, so operators reuse what they know.

Supported keys (the toolkit's names)::

    tls_server_config:
      cert_file: server.crt          # both or neither of cert_file/key_file
      key_file: server.key
      client_auth_type: NoClientCert # or RequireAndVerifyClientCert, VerifyClientCertIfGiven, ...
      client_ca_file: ca.crt         # needed for the *Verify* types
      min_version: TLS12             # TLS10..TLS13
      max_version: TLS13
    http_server_config: {...}        # accepted and ignored (HTTP/2, headers are not served by cheroot)
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hashes (htpasswd -nBC 10 alice)

Access policy: report, export and status endpoints always need credentials. With no ``basic_auth_users``
configured they answer 403 (a JSON error saying so) instead of being open: usage data names users, so the safe
default is closed. ``/metrics`` needs credentials only with ``metrics_auth: true`` (and then is closed too when
no users are configured). ``/healthz`` stays open for probes.

Failed checks answer 401 with ``WWW-Authenticate: Basic`` and no detail. Successful checks are cached for a
minute (keyed by an HMAC of user and password with a per-process key), as exporter-toolkit does, because
bcrypt is deliberately slow and Prometheus scrapes often. Unknown users still cost one bcrypt check against a
dummy hash, so timing does not reveal which user names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import wraps

import yaml

from exporter.config import ConfigError

KEY = "web_config"
_BCRYPT = re.compile(r"^\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}$")
_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven",
                "RequireAndVerifyClientCert"}
_TLS_KEYS = {"cert_file", "key_file", "cert", "key", "client_auth_type", "client_ca_file", "client_ca",
             "min_version", "max_version", "cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
             "client_allowed_sans"}
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"}
CACHE_SECONDS = 60.0
CACHE_SIZE = 256


@dataclass(frozen=True)
class TLSConfig:
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str | None = None
    max_version: str | None = None


@dataclass(frozen=True)
class WebConfig:
    tls: TLSConfig | None = None
    users: dict = field(default_factory=dict)  # name -> bcrypt hash


def _readable(path, what) -> str:
    if not isinstance(path, str) or not path:
        raise ConfigError(KEY, f"{what} must be a file path")
    if not os.access(path, os.R_OK):
        raise ConfigError(KEY, f"cannot read {what} {path!r}")
    return path


def parse_web_config(text: str, base_dir: str = ".") -> WebConfig:
    """Validate a web-config document; relative file paths are taken from ``base_dir`` as the toolkit does."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(KEY, f"not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(KEY, "must be a mapping with tls_server_config and/or basic_auth_users")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(KEY, f"unknown key(s): {', '.join(sorted(map(str, unknown)))}")

    def path(p):
        return p if not isinstance(p, str) or os.path.isabs(p) else os.path.join(base_dir, p)

    tls = None
    tls_doc = doc.get("tls_server_config")
    if tls_doc is not None:
        if not isinstance(tls_doc, dict):
            raise ConfigError(KEY, "tls_server_config must be a mapping")
        unknown = set(tls_doc) - _TLS_KEYS
        if unknown:
            raise ConfigError(KEY, f"unknown tls_server_config key(s): {', '.join(sorted(map(str, unknown)))}")
        if "cert" in tls_doc or "key" in tls_doc or "client_ca" in tls_doc:
            raise ConfigError(KEY, "inline cert/key/client_ca are not supported; use cert_file/key_file/client_ca_file")
        cert, key = tls_doc.get("cert_file"), tls_doc.get("key_file")
        if not cert and not key:
            raise ConfigError(KEY, "tls_server_config needs cert_file and key_file")
        if not cert or not key:
            raise ConfigError(KEY, "tls_server_config needs both cert_file and key_file")
        auth_type = tls_doc.get("client_auth_type") or "NoClientCert"
        if auth_type not in _CLIENT_AUTH:
            raise ConfigError(KEY, f"client_auth_type must be one of {', '.join(sorted(_CLIENT_AUTH))}; got {auth_type!r}")
        ca = tls_doc.get("client_ca_file")
        if auth_type != "NoClientCert" and not ca:
            raise ConfigError(KEY, f"client_auth_type {auth_type} needs client_ca_file")
        for v in ("min_version", "max_version"):
            if tls_doc.get(v) is not None and tls_doc[v] not in _TLS_VERSIONS:
                raise ConfigError(KEY, f"{v} must be one of {', '.join(_TLS_VERSIONS)}; got {tls_doc[v]!r}")
        tls = TLSConfig(
            cert_file=_readable(path(cert), "cert_file"), key_file=_readable(path(key), "key_file"),
            client_auth_type=auth_type, client_ca_file=_readable(path(ca), "client_ca_file") if ca else None,
            min_version=tls_doc.get("min_version"), max_version=tls_doc.get("max_version"))

    users_doc = doc.get("basic_auth_users") or {}
    if not isinstance(users_doc, dict):
        raise ConfigError(KEY, "basic_auth_users must map user names to bcrypt hashes")
    users = {}
    for name, hashed in users_doc.items():
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigError(KEY, f"basic_auth_users: invalid user name {name!r}")
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise ConfigError(KEY, f"basic_auth_users: the password of {name!r} must be a bcrypt hash "
                                   "(htpasswd -nBC 10 USER)")
        users[name] = hashed
    return WebConfig(tls=tls, users=users)


def load_web_config(path: str | None) -> WebConfig:
    """The web config at ``path``, or an empty one (no TLS, no users) when ``path`` is None."""
    if not path:
        return WebConfig()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(KEY, f"cannot read {path!r}: {e.strerror}") from None
    return parse_web_config(text, os.path.dirname(os.path.abspath(path)))


class Authenticator:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, caching successes briefly."""

    def __init__(self, users: dict, cache_seconds: float = CACHE_SECONDS):
        import bcrypt  # only needed when auth is used

        self._bcrypt = bcrypt
        self.users = {name: h.encode() for name, h in users.items()}
        self.cache_seconds = cache_seconds
        self._key = os.urandom(32)
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._dummy = bcrypt.hashpw(b"dummy password", bcrypt.gensalt(rounds=10))

    @classmethod
    def from_config(cls, config) -> "Authenticator":
        return cls(load_web_config(getattr(config, "web_config", None)).users)

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def check_basic_auth(self, header: str | None) -> bool:
        """True only for a well-formed Basic header naming a configured user with the right password."""
        if not header or not self.users:
            return False
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        token = hmac.new(self._key, user.encode() + b"\0" + password.encode(), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            expires = self._cache.get(token)
            if expires is not None and expires > now:
                return True
        hashed = self.users.get(user)
        try:
            ok = self._bcrypt.checkpw(password.encode(), hashed if hashed is not None else self._dummy)
        except ValueError:
            ok = False
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                self._cache[token] = now + self.cache_seconds
                self._cache.move_to_end(token)
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return ok


def check_basic_auth(header: str | None, users: dict) -> bool:
    """One-off check without a cache (use an ``Authenticator`` in servers)."""
    return Authenticator(users, cache_seconds=0).check_basic_auth(header)


def _unauthorized():
    from flask import Response

    return Response('{"status": "error", "message": "unauthorized"}', status=401, mimetype="application/json",
                    headers={"WWW-Authenticate": 'Basic realm="activity-exporter", charset="UTF-8"'})


def _not_configured():
    from flask import Response

    return Response('{"status": "error", "message": "access refused: no basic_auth_users in web_config; '
                    'configure them to use this endpoint"}', status=403, mimetype="application/json")


def auth_check(auth: Authenticator | None):
    """A Flask ``before_request`` function: None (go on) when authorised, else a 401/403 response."""

    def check():
        from flask import request

        if auth is None or not auth.enabled:
            return _not_configured()
        if not auth.check_basic_auth(request.headers.get("Authorization")):
            return _unauthorized()
        return None

    return check


def protect(target, auth: Authenticator | None, paths=None) -> None:
    """Require credentials on a Flask app or blueprint (every route), or on the app only for ``paths``.

    ``protect(app, auth, paths={"/metrics"})`` guards /metrics; ``protect(blueprint, auth)`` guards all of it.
    """
    check = auth_check(auth)
    if paths is None:
        target.before_request(check)
        return
    paths = set(paths)

    def guarded():
        from flask import request

        if request.path in paths:
            return check()
        return None

    target.before_request(guarded)


def require_auth(auth: Authenticator | None):
    """Decorator form of ``protect`` for a single view function."""
    check = auth_check(auth)

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            refused = check()
            return refused if refused is not None else view(*args, **kwargs)

        return wrapper

    return decorate


def ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """An ``SSLContext`` for the toolkit's TLS settings (server side)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version or "TLS12"]
    if tls.max_version:
        ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    if tls.client_ca_file:
        ctx.load_verify_locations(cafile=tls.client_ca_file)
    mode = tls.client_auth_type
    if mode in ("RequireAndVerifyClientCert", "RequireAnyClientCert"):
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif mode in ("VerifyClientCertIfGiven", "RequestClientCert"):
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ssl_adapter(web_config: WebConfig):
    """A cheroot ``BuiltinSSLAdapter`` for ``web_config.tls`` (None when TLS is not configured).

    Use as ``server.ssl_adapter = ssl_adapter(wc)`` on a ``cheroot.wsgi.Server`` before ``start()``.
    ``RequireAnyClientCert``/``RequestClientCert`` are approximated by requiring/optionally verifying against
    ``client_ca_file`` (Python's ssl module cannot request a certificate without verifying it).
    """
    if web_config is None or web_config.tls is None:
        return None
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    tls = web_config.tls
    adapter = BuiltinSSLAdapter(tls.cert_file, tls.key_file)
    adapter.context = ssl_context(tls)
    return adapter
