"""`catsdogs data download` against a small zip served on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import http.server
import io
import os
import socket
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import photo

from catsdogs.data.download import ARCHIVE_NAME, download_petimages
from catsdogs.errors import DataError


def make_zip() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label, name in ((0, "Cat"), (1, "Dog")):
            for i in range(3):
                img = io.BytesIO()
                Image.fromarray(photo(label, seed=i)).save(img, format="JPEG")
                zf.writestr(f"PetImages/{name}/{i}.jpg", img.getvalue())
        zf.writestr("readme[1].txt", "licence text")
    return buf.getvalue()


class Server:
    """Serves one archive with HTTP Range support; can cut the first response short."""

    def __init__(self, payload: bytes, cut_first_at: int | None = None, ranges: bool = True):
        self.payload, self.cut, self.ranges, self.requests = payload, cut_first_at, ranges, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.headers.get("Range"))
                start = 0
                rng = self.headers.get("Range")
                if rng and outer.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                else:
                    self.send_response(200)
                body = outer.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut is not None:
                    cut, outer.cut = outer.cut, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/{ARCHIVE_NAME}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(*args, **kw):
        servers.append(Server(*args, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_download_verify_extract(tmp_path, serve):
    srv = serve(make_zip())
    target = download_petimages(str(tmp_path), url=srv.url, progress=False, timeout=10)
    assert Path(target) == tmp_path / "PetImages"
    assert sorted(p.name for p in (tmp_path / "PetImages" / "Cat").iterdir()) == \
        ["0.jpg", "1.jpg", "2.jpg"]
    assert not (tmp_path / "readme[1].txt").exists()
    # Second call reuses the extraction without downloading again.
    n = len(srv.requests)
    download_petimages(str(tmp_path), url=srv.url, progress=False)
    assert len(srv.requests) == n


def test_interrupted_download_resumes_with_range(tmp_path, serve):
    payload = make_zip()
    srv = serve(payload, cut_first_at=len(payload) // 3)
    with pytest.raises(DataError, match="ended early"):
        download_petimages(str(tmp_path), url=srv.url, progress=False, timeout=10)
    part = tmp_path / (ARCHIVE_NAME + ".part")
    assert 0 < part.stat().st_size < len(payload)
    download_petimages(str(tmp_path), url=srv.url, progress=False, timeout=10)
    assert srv.requests[-1] == f"bytes={len(payload) // 3}-"
    assert (tmp_path / "PetImages" / "Dog" / "2.jpg").exists()


def test_server_without_ranges_restarts_cleanly(tmp_path, serve):
    payload = make_zip()
    srv = serve(payload, ranges=False)
    (tmp_path / (ARCHIVE_NAME + ".part")).write_bytes(b"stale partial bytes")
    download_petimages(str(tmp_path), url=srv.url, progress=False, timeout=10)
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == payload


def test_corrupt_archive_is_rejected_and_removed(tmp_path, serve):
    payload = bytearray(make_zip())
    payload[200] ^= 0xFF  # flip a byte inside the first member's data
    srv = serve(bytes(payload))
    with pytest.raises(DataError, match="CRC|not a valid zip"):
        download_petimages(str(tmp_path), url=srv.url, progress=False, timeout=10)
    assert not (tmp_path / ARCHIVE_NAME).exists()


def test_sha256_mismatch(tmp_path, serve):
    srv = serve(make_zip())
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download_petimages(str(tmp_path), url=srv.url, sha256="0" * 64, progress=False)


def test_offline_message_says_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError) as info:
        download_petimages(str(tmp_path), url=f"http://127.0.0.1:{port}/x.zip", progress=False,
                           timeout=5)
    assert "--data" in str(info.value) and ARCHIVE_NAME in str(info.value)
    assert not os.path.exists(tmp_path / "PetImages")
