"""A clone with no `shared/` beside it: the upstream files the tests read are downloaded from their pinned commit,
checked against the pinned sha256, and cached; when neither source works the error is one line (issue 23).

No GitHub is reachable here, so the download is served from 127.0.0.1 by a small HTTP server laid out like
raw.githubusercontent.com (`/<owner>/<repo>/<commit>/<path>`), through GRAFT_UPSTREAM_BASE_URL. What it serves is
the real pinned file, obtained the ordinary way (from shared/ here; downloaded, in a clone without it).
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import kuberay_crds, upstream_files

RAYJOBS = upstream_files.pinned("kuberay", "ray.io_rayjobs.yaml")


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_):  # keep pytest's output to what the tests assert
        pass


@contextmanager
def mirror(root: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve `root` on 127.0.0.1 as a raw.githubusercontent.com stand-in: (base URL, paths requested)."""
    requested: list[str] = []

    class Handler(_Handler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="upstream-mirror", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()


def _publish(root: Path, pin: upstream_files.Pinned, data: bytes) -> str:
    """Lay `data` out where the mirror serves the pinned file; its URL path."""
    target = root / pin.repo / pin.commit / pin.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return f"/{pin.repo}/{pin.commit}/{pin.path}"


@pytest.fixture()
def fresh_clone(tmp_path, monkeypatch):
    """No shared/ beside the repository, an empty download cache; returns the mirror's folder."""
    real = upstream_files.path(RAYJOBS).read_bytes()  # the pinned bytes, read before shared/ goes away
    monkeypatch.setattr(upstream_files, "SHARED_DIR", tmp_path / "no-shared")
    monkeypatch.setattr(upstream_files, "CACHE_DIR", tmp_path / "clone" / ".cache" / "upstream")
    monkeypatch.setattr(kuberay_crds, "KUBERAY_DIR", tmp_path / "no-shared" / "kuberay")
    kuberay_crds._load.cache_clear()
    root = tmp_path / "mirror"
    _publish(root, RAYJOBS, real)
    yield root
    kuberay_crds._load.cache_clear()


def test_without_shared_kuberays_crd_is_downloaded_checked_and_cached(fresh_clone, monkeypatch):
    with mirror(fresh_clone) as (base, requested):
        monkeypatch.setenv(upstream_files.BASE_URL_ENV, base)
        crd = kuberay_crds.crd("ray.io_rayjobs.yaml")  # what the emulated API server installs
        got = upstream_files.path(RAYJOBS)  # again: from the cache, no second download
    assert (crd["kind"], crd["spec"]["names"]["kind"]) == ("CustomResourceDefinition", "RayJob")
    assert requested == [f"/ray-project/kuberay/{RAYJOBS.commit}/ray-operator/config/crd/bases/ray.io_rayjobs.yaml"]
    assert got == upstream_files.CACHE_DIR / "kuberay" / "ray.io_rayjobs.yaml"
    assert list(got.parent.iterdir()) == [got]  # no partial file left behind


def test_a_tampered_download_fails_the_sha256_check_in_one_line_and_is_not_cached(fresh_clone, monkeypatch):
    served = fresh_clone / RAYJOBS.repo / RAYJOBS.commit / RAYJOBS.path
    served.write_bytes(served.read_bytes().replace(b"RayJob", b"RayJab", 1))
    with mirror(fresh_clone) as (base, _), pytest.raises(upstream_files.UpstreamFileMismatch) as caught:
        monkeypatch.setenv(upstream_files.BASE_URL_ENV, base)
        kuberay_crds.crd("ray.io_rayjobs.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"ray.io_rayjobs.yaml from {base}/ray-project/kuberay/{RAYJOBS.commit}/"), message
    assert f"not the pinned {RAYJOBS.sha256}" in message, message
    assert not (upstream_files.CACHE_DIR / "kuberay" / "ray.io_rayjobs.yaml").exists()


def test_a_changed_file_in_shared_fails_the_same_check(tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "kuberay" / "ray.io_rayjobs.yaml"
    shared.parent.mkdir(parents=True)
    shared.write_bytes(upstream_files.path(RAYJOBS).read_bytes() + b"# edited\n")
    monkeypatch.setattr(upstream_files, "SHARED_DIR", tmp_path / "shared")
    with pytest.raises(upstream_files.UpstreamFileMismatch, match=rf"^ray\.io_rayjobs\.yaml from {shared} has sha256"):
        upstream_files.path(RAYJOBS)


UNREACHABLE = {
    "not-on-the-mirror": (lambda base: base + "/elsewhere", "HTTP 404"),
    "no-server": (lambda base: "http://127.0.0.1:9", "Connection refused"),
}


@pytest.mark.parametrize("base_url,why", UNREACHABLE.values(), ids=UNREACHABLE.keys())
def test_with_neither_source_the_error_is_one_line_naming_the_file_and_both_sources(fresh_clone, monkeypatch,
                                                                                      base_url, why):
    with mirror(fresh_clone) as (base, _), pytest.raises(kuberay_crds.KubeRayCRDsMissing) as caught:
        monkeypatch.setenv(upstream_files.BASE_URL_ENV, base_url(base))
        kuberay_crds.crds()
    message = str(caught.value)
    url = f"{base_url(base)}/ray-project/kuberay/{RAYJOBS.commit}/ray-operator/config/crd/bases/ray.io_rayjobs.yaml"
    assert "\n" not in message
    assert message.startswith(f"ray.io_rayjobs.yaml is not at {kuberay_crds.KUBERAY_DIR}/ray.io_rayjobs.yaml and "
                              f"could not be downloaded from {url} ("), message
    assert why in message, message
