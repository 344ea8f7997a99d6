"""Model sources: pins, the cache, downloads over HTTP (a loopback server) and PyPI wheels."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import onnx
import pytest

from trtcheck.errors import ModelError
from trtcheck.sources import CACHE_ENV, resolve
from trtcheck.suite import ModelSource
from zoo.build import cnn


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def model_bytes() -> bytes:
    return cnn().SerializeToString()


@pytest.fixture
def server(tmp_path, model_bytes):
    """Serves tmp_path/www on 127.0.0.1 and counts the requests per path."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "cnn.onnx").write_bytes(model_bytes)
    hits: dict[str, int] = {}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def test_path_pin_mismatch_names_both_hashes(tmp_path, model_bytes):
    path = tmp_path / "m.onnx"
    path.write_bytes(model_bytes)
    source = ModelSource("path", str(path), sha256="0" * 64, text="m.onnx")
    with pytest.raises(ModelError, match=f"expected {'0' * 64}, got {sha(model_bytes)}"):
        resolve(source)
    assert resolve(ModelSource("path", str(path), sha256=sha(model_bytes))) == path


def test_package_source():
    import onnx as onnx_package

    member = "backend/test/data/light/light_squeezenet.onnx"
    path = resolve(ModelSource("package", "onnx", member, text=f"package:onnx#{member}"))
    assert path == Path(onnx_package.__file__).parent / member
    with pytest.raises(ModelError, match="not_a_package"):
        resolve(ModelSource("package", "not_a_package", "x.onnx", text="package:not_a_package#x"))


def test_url_downloaded_once_then_cached(cache, server, model_bytes):
    base, hits = server
    source = ModelSource("url", f"{base}/cnn.onnx", sha256=sha(model_bytes), text="url")
    first = resolve(source)
    second = resolve(source)
    assert first == second and first.read_bytes() == model_bytes
    assert first.is_relative_to(cache)
    assert hits == {"/cnn.onnx": 1}
    first.write_bytes(b"corrupted")  # a damaged cache entry is fetched again
    assert resolve(source).read_bytes() == model_bytes
    assert hits == {"/cnn.onnx": 2}


def test_url_hash_mismatch_discards_the_download(cache, server, model_bytes):
    base, _ = server
    source = ModelSource("url", f"{base}/cnn.onnx", sha256="1" * 64, text="url")
    with pytest.raises(ModelError, match=f"expected {'1' * 64}, got {sha(model_bytes)}"):
        resolve(source)
    leftovers = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []


def test_url_that_fails(cache, server):
    base, _ = server
    with pytest.raises(ModelError, match="download failed"):
        resolve(ModelSource("url", f"{base}/missing.onnx", sha256="1" * 64, text="url"))


def _wheel(folder: Path, model: bytes) -> Path:
    """A minimal valid wheel holding toymodels/cnn.onnx."""
    path = folder / "toymodels-1.0-py3-none-any.whl"
    files = {
        "toymodels/__init__.py": b"",
        "toymodels/cnn.onnx": model,
        "toymodels-1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: toymodels\nVersion: 1.0\n",
        "toymodels-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "toymodels-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("toymodels-1.0.dist-info/RECORD", record)
    return path


def test_pypi_wheel_member(cache, tmp_path, monkeypatch, model_bytes):
    index = tmp_path / "index"
    index.mkdir()
    _wheel(index, model_bytes)
    # pip reads a local folder instead of PyPI: the same code path, no network.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    source = ModelSource("pypi", "toymodels==1.0", "toymodels/cnn.onnx", sha(model_bytes),
                         "pypi:toymodels==1.0#toymodels/cnn.onnx")
    path = resolve(source)
    assert path.read_bytes() == model_bytes
    onnx.checker.check_model(str(path))
    missing = ModelSource("pypi", "toymodels==1.0", "toymodels/other.onnx", "2" * 64, "pypi:x")
    with pytest.raises(ModelError, match="no member 'toymodels/other.onnx'.*toymodels/cnn.onnx"):
        resolve(missing)
    unknown = ModelSource("pypi", "toymodels==9.9", "toymodels/cnn.onnx", "3" * 64, "pypi:y")
    with pytest.raises(ModelError, match="pip download failed"):
        resolve(unknown)
