"""`gruviz serve`: loopback only, read-only, nothing outside the reports directory reachable."""

from __future__ import annotations

import argparse
import http.client
import threading
from pathlib import Path

import pytest

from flows import cli
from flows.commands import serve as serve_cmd
from reports.serve import HOST, make_server


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A reports dir with a night, a secret next to it, and symlinks pointing out; served on a free port."""
    base = tmp_path_factory.mktemp("serve")
    root = base / "reports"
    (root / "2026-11-25").mkdir(parents=True)
    (root / "index.html").write_text("<h1>nights</h1>", encoding="utf-8")
    (root / "2026-11-25" / "index.html").write_text("<h1>night</h1>", encoding="utf-8")
    (root / "empty").mkdir()
    (base / "secret.txt").write_text("TOP SECRET", encoding="utf-8")
    (root / "leak.txt").symlink_to(base / "secret.txt")
    (root / "outside").symlink_to(base)
    (root / "inside.html").symlink_to(root / "index.html")
    server = make_server(root, port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _request(server, method: str, path: str) -> tuple[int, dict, bytes]:
    """A raw request: http.client sends the path as given (no normalisation of '..')."""
    conn = http.client.HTTPConnection(HOST, server.server_port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_binds_loopback_only(site):
    assert site.server_address[0] == "127.0.0.1"


@pytest.mark.parametrize(
    "path, status, body",
    [
        ("/", 200, b"nights"),
        ("/index.html", 200, b"nights"),
        ("/2026-11-25/", 200, b"night"),
        ("/2026-11-25/index.html?x=1", 200, b"night"),
        ("/inside.html", 200, b"nights"),  # a symlink that stays inside is fine
    ],
)
def test_serves_files(site, path, status, body):
    code, headers, data = _request(site, "GET", path)
    assert code == status and body in data
    assert headers.get("X-Content-Type-Options") == "nosniff"


def test_directory_without_slash_redirects_and_no_listing(site):
    code, headers, _ = _request(site, "GET", "/2026-11-25")
    assert code == 301 and headers["Location"].endswith("/2026-11-25/")
    assert _request(site, "GET", "/empty/")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/2026-11-25/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/2026-11-25/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "/leak.txt",
        "/outside/secret.txt",
        "/outside/",
        "/%00",
        "/%ff%fe",
    ],
)
def test_nothing_outside_is_reachable(site, path):
    code, _, data = _request(site, "GET", path)
    assert code == 404, (path, code)
    assert b"TOP SECRET" not in data


def test_head_and_read_only(site):
    code, headers, data = _request(site, "HEAD", "/index.html")
    assert code == 200 and data == b"" and int(headers["Content-Length"]) == len("<h1>nights</h1>")
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        code, headers, _ = _request(site, method, "/index.html")
        assert code == 405 and headers["Allow"] == "GET, HEAD", method
    assert (Path(site.RequestHandlerClass.keywords["directory"]) / "index.html").read_text() == "<h1>nights</h1>"


def test_cli_wiring_defaults_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("GRUVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GRUVIZ_REPORTS_BASE_URL", "http://127.0.0.1:9123")
    monkeypatch.delenv("GRUVIZ_REPORTS_DIR", raising=False)
    args = argparse.Namespace(dir=None, port=None)
    assert serve_cmd.resolve(args) == ((tmp_path / "home" / "reports").resolve(), 9123)
    args = argparse.Namespace(dir=tmp_path, port=0)
    assert serve_cmd.resolve(args) == (tmp_path.resolve(), 0)
    # a missing directory is a clear error, not a traceback
    assert cli.main(["serve", "--dir", str(tmp_path / "missing"), "--port", "0"]) == 2


def test_cli_serves_until_interrupted(tmp_path, monkeypatch, capsys):
    (tmp_path / "index.html").write_text("x", encoding="utf-8")
    started = {}

    def fake_forever(self, poll_interval=0.5):
        started["port"] = self.server_address[1]
        raise KeyboardInterrupt

    monkeypatch.setattr("socketserver.BaseServer.serve_forever", fake_forever)
    args = argparse.Namespace(dir=tmp_path, port=0, quiet=True)
    assert serve_cmd.run(args) == 0
    assert f"http://127.0.0.1:{started['port']}/" in capsys.readouterr().out


def test_dotfiles_are_not_served(site):
    root = Path(site.RequestHandlerClass.keywords["directory"])
    (root / ".publish.lock").write_text("lock")
    (root / ".deleted.2026-01-01").mkdir(exist_ok=True)
    (root / ".deleted.2026-01-01" / "index.html").write_text("old")
    (root / "dot.html").symlink_to(root / ".publish.lock")
    for path in ("/.publish.lock", "/.deleted.2026-01-01/index.html", "/%2epublish.lock", "/dot.html"):
        status, _, body = _request(site, "GET", path)
        assert status == 404 and b"lock" not in body and b"old" not in body, path


def test_idle_connection_is_closed(tmp_path):
    import socket
    import time

    (tmp_path / "index.html").write_text("hi")
    server = make_server(tmp_path, port=0, quiet=True, idle_timeout_s=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection((HOST, server.server_port), timeout=10) as sock:
            t0 = time.monotonic()
            assert sock.recv(1024) == b""  # the server hung up on the silent client
            assert time.monotonic() - t0 < 5
    finally:
        server.shutdown()
        server.server_close()


def test_port_in_use_is_a_clear_error(site, tmp_path, capsys):
    rc = cli.main(["serve", "--dir", str(tmp_path), "--port", str(site.server_port), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "already in use" in err and "--port" in err and "Traceback" not in err


@pytest.mark.parametrize("host, status", [
    ("evil.example:{port}", 421), ("evil.example", 421), ("127.0.0.1.evil.example:{port}", 421),
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("LOCALHOST:{port}", 200),
])
def test_answers_only_for_its_own_host(site, host, status):
    """DNS rebinding: a page on another site whose name now points at 127.0.0.1 sends its own Host."""
    conn = http.client.HTTPConnection(HOST, site.server_port, timeout=5)
    try:
        conn.putrequest("GET", "/index.html", skip_host=True)
        conn.putheader("Host", host.format(port=site.server_port))
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    assert r.status == status
    assert (b"nights" in body) == (status == 200)
