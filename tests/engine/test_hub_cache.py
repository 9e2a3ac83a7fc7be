"""Hub ids come from the user's own Hugging Face cache, as ``make`` leaves it.

A hub-layout cache (``<cache>/models--org--name/snapshots/<commit>/`` plus ``refs/main``
holding the commit) with a tiny LLaVA under ``tiny-org/tiny-llava``: the id loads with only
HF_HOME (or only HF_HUB_CACHE) pointing there, offline, and an id missing from it is one line
naming ``hf download``. huggingface_hub reads these variables when it is imported, so each case
runs in its own Python process, the way a user starts one. The Makefile check asks make itself
which cache and offline setting the book and the tests would run with.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HUB_ID = "tiny-org/tiny-llava"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Run in a fresh process: load a hub id, generate, print what was loaded; then an id the
# cache does not hold, whose error must be ModelNotAvailable in one line.
PROBE = textwrap.dedent("""
    import sys
    from PIL import Image
    import vlmnb
    from vlmnb.engine.loading import ModelNotAvailable

    vlm = vlmnb.load(sys.argv[1])
    gen = vlm.generate(vlm.prepare(Image.new("RGB", (40, 30), (200, 30, 30)), "describe the image"), 3)
    print("LOADED", vlm.name, vlm.family, vlm.revision, len(gen.token_ids))
    try:
        vlmnb.load("tiny-org/not-in-the-cache")
    except ModelNotAvailable as exc:
        print("MISSING", "".join(exc._render_traceback_()).replace(chr(10), "<NL>"))
""")


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """``<root>/hub`` laid out as huggingface_hub does, holding a tiny LLaVA under HUB_ID."""
    from vlmnb.engine import tiny

    root = tmp_path_factory.mktemp("hf_home")
    built = Path(tiny.save("llava", root / "built"))
    repo = root / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    shutil.copytree(built, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.rmtree(built)
    return root


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**overrides) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and k != "XDG_CACHE_HOME"}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.update(overrides)
    return env


def _probe(env: dict, tmp_path: Path) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, HUB_ID], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.stdout.splitlines()
             if line.startswith(("LOADED ", "MISSING "))}
    assert set(lines) == {"LOADED", "MISSING"}, proc.stdout + proc.stderr[-3000:]
    return lines


def assert_loaded_and_missing(lines: dict[str, str]) -> None:
    name, family, revision, n = lines["LOADED"].split()
    assert (name, family, n) == (HUB_ID, "llava", "3")
    assert revision and COMMIT.startswith(revision), revision  # the snapshot's commit
    missing = lines["MISSING"]
    assert "<NL>" not in missing and missing.startswith("ModelNotAvailable:"), missing
    assert "`hf download tiny-org/not-in-the-cache`" in missing and "huggingface-cli" not in missing


def test_cached_hub_id_loads_offline_from_hf_home(hub_cache, tmp_path):
    """HF_HOME points at the cache, HF_HUB_OFFLINE=1: the id loads and generates, nothing else is needed."""
    env = _clean_env(HF_HOME=str(hub_cache), HF_HUB_OFFLINE="1", HOME=str(tmp_path / "home"))
    assert_loaded_and_missing(_probe(env, tmp_path))


def test_cached_hub_id_loads_from_hf_hub_cache_without_offline_mode(hub_cache, tmp_path):
    """Only HF_HUB_CACHE names the cache, offline mode is not set and the hub cannot be reached:
    a cached id still loads (no network asked for), a missing one is ModelNotAvailable."""
    env = _clean_env(HF_HOME=str(tmp_path / "empty_hf_home"), HF_HUB_CACHE=str(hub_cache / "hub"),
                     HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HOME=str(tmp_path / "home"))
    assert_loaded_and_missing(_probe(env, tmp_path))


# ----------------------------------------------------------------------------- the Makefile
def _make_env(**env) -> tuple[str, str]:
    """(HF_HOME, HF_HUB_OFFLINE) as the Makefile exports them to its recipes, for a user
    environment ``env`` (on top of a clean one)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "MAKE", "MFLAGS")) and k != "XDG_CACHE_HOME"}
    base.update(env)
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "--eval",
                           "vlmnb-show-hf: ; @echo \"$$HF_HOME|$${HF_HUB_OFFLINE-unset}|$$HF_HUB_CACHE\"",
                           "vlmnb-show-hf"], env=base, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    home, offline, hub_cache = proc.stdout.strip().split("|")
    return home, offline, hub_cache


def test_makefile_reads_the_users_hf_cache_and_leaves_offline_mode_alone(tmp_path):
    home = tmp_path / "home"
    # nothing set: huggingface_hub's default, ~/.cache/huggingface (not the tree's .cache)
    assert _make_env(HOME=str(home)) == (f"{home}/.cache/huggingface", "unset", "")
    # the user's XDG_CACHE_HOME, as huggingface_hub reads it (make points XDG_CACHE_HOME inside the tree)
    assert _make_env(HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "xdg")) == (
        f"{tmp_path}/xdg/huggingface", "unset", "")
    # the user's HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE pass through untouched
    assert _make_env(HOME=str(home), HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hc"),
                     HF_HUB_OFFLINE="1") == (str(tmp_path / "hf"), "1", str(tmp_path / "hc"))


# ----------------------------------------------------------------------------- a reachable hub
class FakeHub:
    """A minimal Hugging Face hub on 127.0.0.1 serving one model folder as ``repo_id`` at
    ``commit``: the file endpoint (``/<repo>/resolve/<rev>/<file>``, HEAD and GET, with the
    commit and etag headers huggingface_hub reads) and the model-info API. Records the paths
    asked for."""

    def __init__(self, folder: Path, repo_id: str, commit: str):
        import hashlib
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.paths: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None, send_body: bool = True):
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def _route(self, send_body: bool):
                path = self.path.split("?", 1)[0]
                hub.paths.append(f"{self.command} {path}")
                prefix = f"/{repo_id}/resolve/"
                if path.startswith(prefix):
                    _, _, name = path[len(prefix):].partition("/")
                    if name in files:
                        data = files[name]
                        return self._reply(200, data, {"X-Repo-Commit": commit,
                                                       "ETag": '"' + hashlib.sha256(data).hexdigest() + '"'}, send_body)
                    return self._reply(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, send_body)
                if path.startswith(f"/api/models/{repo_id}"):
                    rest = path[len(f"/api/models/{repo_id}"):]
                    if rest.startswith("/tree/"):
                        body = json.dumps([]).encode()
                    else:
                        body = json.dumps({"id": repo_id, "sha": commit,
                                           "siblings": [{"rfilename": n} for n in sorted(files)]}).encode()
                    return self._reply(200, body, {"Content-Type": "application/json"}, send_body)
                return self._reply(404, b"", {"X-Error-Code": "RepoNotFound"}, send_body)

            def do_HEAD(self):  # noqa: N802
                self._route(send_body=False)

            def do_GET(self):  # noqa: N802
                self._route(send_body=True)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_uncached_hub_id_downloads_into_the_users_cache_when_the_hub_is_reachable(hub_cache, tmp_path):
    """Offline mode not set, the id not in the cache, the hub reachable: the model is downloaded
    into HF_HOME and loads; afterwards it loads from there offline."""
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    hub = FakeHub(hub_cache / "hub" / ("models--" + HUB_ID.replace("/", "--")) / "snapshots" / COMMIT,
                  HUB_ID, commit)
    hf_home = tmp_path / "hf_home"
    try:
        env = _clean_env(HF_HOME=str(hf_home), HF_ENDPOINT=hub.url, HOME=str(tmp_path / "home"),
                         HF_HUB_DISABLE_XET="1")
        proc = subprocess.run([sys.executable, "-c", "import sys, vlmnb; vlm = vlmnb.load(sys.argv[1]); "
                               "print('LOADED', vlm.name, vlm.family, vlm.revision)", HUB_ID],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr[-3000:] + "\n" + "\n".join(hub.paths)
    assert any(p.startswith("GET ") and p.endswith("/model.safetensors") for p in hub.paths), hub.paths
    repo = hf_home / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    assert (repo / "refs" / "main").read_text().strip() == commit
    assert (repo / "snapshots" / commit / "model.safetensors").is_file()
    loaded = [line for line in proc.stdout.splitlines() if line.startswith("LOADED ")]
    assert loaded and loaded[0].split()[1:3] == [HUB_ID, "llava"] and commit.startswith(loaded[0].split()[3])
    # now in the cache: loads offline, with the hub gone
    env = _clean_env(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HOME=str(tmp_path / "home"))
    again = subprocess.run([sys.executable, "-c", "import sys, vlmnb; print('LOADED', vlmnb.load(sys.argv[1]).revision)",
                            HUB_ID], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert commit.startswith(again.stdout.split("LOADED ", 1)[1].split()[0])
