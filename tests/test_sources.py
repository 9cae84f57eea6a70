"""Sources: the flowers download (against a loopback server), synthetic data, resolution."""

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from convlab.data.resolve import resolve_data
from convlab.data.sources import fetch_flowers, scan_folder
from convlab.data.synthetic import CLASSES, make_folder
from convlab.errors import ConvlabError


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def flowers_archive(tmp_path) -> bytes:
    """A tiny archive laid out like flower_photos.tgz (class folders + LICENSE.txt)."""
    src = make_folder(tmp_path / "flower_photos", num_classes=2, per_class=3, size=16)
    (src / "LICENSE.txt").write_text("CC-BY")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        tar.add(src, arcname="flower_photos")
    return out.getvalue()


def test_download_is_verified_extracted_and_cached(tmp_path, server):
    www, base = server
    data = flowers_archive(tmp_path)
    (www / "flower_photos.tgz").write_bytes(data)
    cache = tmp_path / "cache"
    folder = fetch_flowers(cache, url=f"{base}/flower_photos.tgz",
                           sha256=hashlib.sha256(data).hexdigest(), expected_bytes=len(data))
    scan = scan_folder(folder)
    assert scan.labels == ["circle", "square"] and len(scan.candidates) == 6
    assert [p.rsplit("/", 1)[1] for p in scan.ignored] == ["LICENSE.txt"]
    # Cached: a second call needs no server.
    (www / "flower_photos.tgz").unlink()
    assert fetch_flowers(cache, url=f"{base}/flower_photos.tgz") == folder


def test_checksum_mismatch_is_refused_and_the_file_removed(tmp_path, server):
    www, base = server
    (www / "flower_photos.tgz").write_bytes(flowers_archive(tmp_path))
    with pytest.raises(ConvlabError, match="sha256 does not match"):
        fetch_flowers(tmp_path / "cache", url=f"{base}/flower_photos.tgz", sha256="0" * 64)
    assert not list((tmp_path / "cache").glob("*.tgz*"))


def test_offline_download_says_how_to_use_a_local_folder(tmp_path):
    # Nothing listens on port 9 of the loopback: the same failure as having no internet.
    with pytest.raises(ConvlabError) as err:
        fetch_flowers(tmp_path, url="http://127.0.0.1:9/flower_photos.tgz")
    message = str(err.value)
    assert "--data" in message and "\n" not in message


def test_synthetic_data_is_deterministic_and_distinct(tmp_path):
    a = make_folder(tmp_path / "a", num_classes=3, per_class=4, size=32, seed=7)
    b = make_folder(tmp_path / "b", num_classes=3, per_class=4, size=32, seed=7)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 12 and [p.parts[0] for p in files[::4]] == list(CLASSES[:3])
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    with pytest.raises(ConvlabError, match="2..6 classes"):
        make_folder(tmp_path / "c", num_classes=9)


def test_resolve_data_prepares_a_folder_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLAB_CACHE", str(tmp_path / "cache"))
    src = make_folder(tmp_path / "src", num_classes=2, per_class=6, size=24)
    first = resolve_data(src, 16, progress=False)
    assert first.parent == tmp_path / "cache" / "prepared"
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert resolve_data(src, 16, progress=False) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert resolve_data(first, 99) == first  # a prepared folder is used as it is
    # A changed source rebuilds its cache entry instead of failing.
    make_folder(src, num_classes=2, per_class=7, size=24)
    assert resolve_data(src, 16, progress=False) == first
    assert (first / "manifest.json").stat().st_mtime_ns != stamp
