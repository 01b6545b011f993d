"""Auth over real HTTPS: a self-signed certificate made here, cheroot serving in a thread, urllib as client."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
import urllib.error
import urllib.request

import bcrypt
import flask
import pytest
from cheroot import wsgi

from exporter.config import ConfigError
from exporter.webauth import Authenticator, check_basic_auth, load_web_config, parse_web_config, protect, \
    ssl_adapter

PASSWORD = "s3cret pass:with colon"


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed: cannot make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return d


@pytest.fixture(scope="module")
def server(certs):
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path = certs / "web-config.yml"
    path.write_text(f"tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
                    f"basic_auth_users:\n  admin: '{hashed}'\n")
    wc = load_web_config(str(path))  # relative cert paths resolve next to the web config
    auth = Authenticator(wc.users)
    app = flask.Flask(__name__)
    guarded = flask.Blueprint("guarded", __name__)

    @guarded.get("/api/status")
    def status():
        return flask.jsonify({"status": "success"})

    protect(guarded, auth)
    app.register_blueprint(guarded)
    protect(app, auth, paths={"/metrics"})

    @app.get("/metrics")
    def metrics():
        return "up 1\n"

    @app.get("/healthz")
    def healthz():
        return "ok"

    srv = wsgi.Server(("127.0.0.1", 0), app)
    srv.ssl_adapter = ssl_adapter(wc)
    srv.prepare()
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    ctx = ssl.create_default_context(cafile=str(certs / "cert.pem"))
    yield f"https://127.0.0.1:{srv.bind_addr[1]}", ctx
    srv.stop()


def get(base, ctx, path, header=None):
    req = urllib.request.Request(base + path)
    if header is not None:
        req.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize("header", [
    None,
    basic("admin", "wrong"),
    basic("nobody", PASSWORD),
    basic("admin", ""),
    "Basic",
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"no-colon-here").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
    "Bearer " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode(),
    basic("admin", PASSWORD) + "garbage",
    "x" * 10000,
])
def test_bad_credentials_get_401_without_detail(server, header):
    base, ctx = server
    for path in ("/api/status", "/metrics"):
        status, headers, body = get(base, ctx, path, header)
        assert status == 401, (path, header)
        assert headers.get("WWW-Authenticate", "").startswith("Basic")
        assert json.loads(body) == {"status": "error", "message": "unauthorized"}


def test_good_credentials_over_verified_tls(server):
    base, ctx = server
    for _ in range(3):  # the second and third hit the success cache
        status, _, body = get(base, ctx, "/api/status", basic("admin", PASSWORD))
        assert status == 200 and json.loads(body)["status"] == "success"
    status, _, body = get(base, ctx, "/metrics", basic("admin", PASSWORD))
    assert status == 200 and body == b"up 1\n"
    # unprotected paths stay open
    assert get(base, ctx, "/healthz")[0] == 200


def test_plain_http_and_untrusted_clients_are_refused(server):
    base, _ = server
    # plain HTTP gets cheroot's 400 "speak HTTPS" answer or a reset, never the page
    with pytest.raises((urllib.error.URLError, ConnectionError)) as err:
        urllib.request.urlopen(base.replace("https", "http") + "/healthz", timeout=5).read()
    assert not isinstance(err.value, urllib.error.HTTPError) or err.value.code == 400
    with pytest.raises(urllib.error.URLError):  # a client that does not trust the self-signed cert
        urllib.request.urlopen(base + "/healthz", context=ssl.create_default_context(), timeout=5).read()


def test_no_users_configured_refuses_with_403():
    app = flask.Flask(__name__)
    bp = flask.Blueprint("b", __name__)

    @bp.get("/api/status")
    def status():
        return "open"

    protect(bp, Authenticator({}))
    app.register_blueprint(bp)
    resp = app.test_client().get("/api/status", headers={"Authorization": basic("admin", "x")})
    assert resp.status_code == 403 and "basic_auth_users" in resp.get_json()["message"]


def test_cache_does_not_accept_a_different_password():
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode()
    auth = Authenticator({"a": hashed})
    assert auth.check_basic_auth(basic("a", "right"))
    assert auth.check_basic_auth(basic("a", "right"))
    assert not auth.check_basic_auth(basic("a", "wrong"))
    assert not auth.check_basic_auth(basic("b", "right"))
    assert check_basic_auth(basic("a", "right"), {"a": hashed})
    # htpasswd's $2y$ prefix is accepted
    y = "$2y$" + hashed[4:]
    assert check_basic_auth(basic("a", "right"), {"a": y})


@pytest.mark.parametrize("doc,fragment", [
    ("- a list", "must be a mapping"),
    ("tls_server_config: {cert_file: x.pem}", "both cert_file and key_file"),
    ("tls_server_config: {cert_file: /nonexistent.pem, key_file: /nonexistent.key}", "cannot read"),
    ("basic_auth_users: {admin: plaintext}", "bcrypt hash"),
    ("basic_auth_users: [admin]", "map user names"),
    ("unknown_section: {}", "unknown key"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Maybe}", "client_auth_type"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAndVerifyClientCert}",
     "client_ca_file"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: SSL3}", "min_version"),
    ("tls_server_config: {cert_file: a, key_file: b, bogus: 1}", "unknown tls_server_config"),
    (": : :", "YAML"),
])
def test_invalid_web_configs_name_the_key(doc, fragment):
    with pytest.raises(ConfigError) as err:
        parse_web_config(doc)
    assert err.value.key == "web_config"
    assert fragment in str(err.value)


def test_missing_file_and_empty_config():
    with pytest.raises(ConfigError):
        load_web_config("/nonexistent/web-config.yml")
    wc = load_web_config(None)
    assert wc.tls is None and wc.users == {} and ssl_adapter(wc) is None
