"""Download cache: a real HTTP server on 127.0.0.1 stands in for the public sources."""
import functools
import http.server
import os
import socket
import threading

import pytest

from gatedrnn.data import fetch
from gatedrnn.data.fetch import default_cache_dir, fetch_music, sha256_file
from gatedrnn.data.music import load_music
from gatedrnn.data.sources import MUSIC
from gatedrnn.errors import UserError

JSB = MUSIC["jsb"]


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def serve():
    """serve(directory) -> (base URL, list of requested paths); servers stop after the test."""
    servers = []

    def start(directory):
        hits = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", hits

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_fetch_verifies_caches_and_loads(polyphonic_dir, serve, tmp_path, monkeypatch):
    url, hits = serve(polyphonic_dir)
    monkeypatch.setenv("GATEDRNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GATEDRNN_DATA_URL", url)
    monkeypatch.delenv("GATEDRNN_DATA_DIR", raising=False)
    seen = []
    path = fetch_music("jsb", progress=lambda u, done, total: seen.append((u, done, total)))
    assert path == tmp_path / "cache" / "polyphonic" / "JSB_Chorales.mat"
    assert sha256_file(path) == JSB.sha256
    assert hits == ["/JSB_Chorales.mat"]
    assert seen[-1] == (url + "/JSB_Chorales.mat", 96095, 96095)
    assert os.listdir(path.parent) == ["JSB_Chorales.mat"]  # no temporary file left behind
    assert [len(v) for v in load_music("jsb").values()] == [229, 76, 77]
    assert fetch_music("jsb") == path and len(hits) == 1  # cached: the server is not asked again


def test_corrupted_cache_is_refetched(polyphonic_dir, serve, tmp_path):
    url, hits = serve(polyphonic_dir)
    path = tmp_path / "polyphonic" / "JSB_Chorales.mat"
    path.parent.mkdir()
    path.write_bytes(b"stale")
    assert fetch_music("jsb", cache_dir=tmp_path, base_url=url) == path
    assert sha256_file(path) == JSB.sha256 and len(hits) == 1


def test_wrong_checksum_is_refused(polyphonic_dir, serve, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    data = bytearray((polyphonic_dir / "JSB_Chorales.mat").read_bytes())
    data[5000] ^= 0xFF
    (served / "JSB_Chorales.mat").write_bytes(bytes(data))
    url, hits = serve(served)
    with pytest.raises(UserError, match=f"sha256 mismatch for {url}/JSB_Chorales.mat: expected {JSB.sha256}, got"):
        fetch_music("jsb", cache_dir=tmp_path / "cache", base_url=url)
    assert len(hits) == 1
    assert os.listdir(tmp_path / "cache" / "polyphonic") == []


def closed_port_url():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_server(tmp_path):
    url = closed_port_url()
    with pytest.raises(UserError, match=rf"could not download JSB_Chorales.mat: {url}/JSB_Chorales.mat \(.*refused.*GATEDRNN_DATA_DIR"):
        fetch_music("jsb", cache_dir=tmp_path, base_url=url)
    assert os.listdir(tmp_path / "polyphonic") == []


def test_falls_back_to_the_next_source(polyphonic_dir, serve, tmp_path, monkeypatch):
    url, hits = serve(polyphonic_dir)
    monkeypatch.delenv("GATEDRNN_DATA_URL", raising=False)
    monkeypatch.setattr(fetch, "SOURCES", (closed_port_url(), url))
    assert sha256_file(fetch_music("jsb", cache_dir=tmp_path)) == JSB.sha256 and len(hits) == 1


def test_missing_file_on_server(serve, tmp_path):
    url, _ = serve(tmp_path)
    with pytest.raises(UserError, match=r"JSB_Chorales.mat \(HTTP 404"):
        fetch_music("jsb", cache_dir=tmp_path / "cache", base_url=url)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GATEDRNN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "gatedrnn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gatedrnn"
    monkeypatch.setenv("GATEDRNN_CACHE", str(tmp_path / "own"))
    assert default_cache_dir() == tmp_path / "own"
