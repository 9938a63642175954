"""`cserve pull` and Hub model names against a local mock of the Hugging Face Hub.

The mock serves the synthetic checkpoint in build/models/tiny (`make models`) the way the
Hub does: HEAD/GET on /{repo}/resolve/{revision}/{file}, X-Repo-Commit, a git-sha1 ETag for
small files, X-Linked-Etag/X-Linked-Size (the sha256) and a 302 to a "CDN" (a second server
on another port, i.e. another origin) for the LFS file, Range requests, X-Error-Code on
errors. Test knobs cut the connection, corrupt bytes, slow the transfer or require a token.
Standard library only.
"""
import hashlib
import http.server
import os
import pty
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
TINY = ROOT / "build" / "models" / "tiny"
FILES = ["config.json", "generation_config.json", "vocab.json", "merges.txt", "model.safetensors"]
LFS = {"model.safetensors"}
TOKEN = "hf_testsecret123"


def git_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def commit_of(label):
    return hashlib.sha1(label.encode()).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "MockHub/1.0"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(head=True)

    def do_GET(self):
        self.answer(head=False)

    def answer(self, head):
        hub = self.server.hub
        with hub.lock:
            hub.log.append({"role": self.server.role, "method": self.command, "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self.server.role == "cdn":
            return self.cdn(hub, head)
        return self.resolve(hub, head)

    def send(self, status, headers=(), body=b"", head=False):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def error(self, status, code, head, extra=()):
        self.send(status, [("X-Error-Code", code), ("X-Error-Message", code + " (mock)"), *extra],
                  b'{"error": "%s"}' % code.encode(), head)

    def resolve(self, hub, head):
        path = urllib.parse.urlsplit(self.path).path
        if "/resolve/" not in path:
            return self.error(404, "RepoNotFound", head)
        repo, rest = path.lstrip("/").split("/resolve/", 1)
        rev_enc, filename = rest.split("/", 1)
        rev = urllib.parse.unquote(rev_enc)
        if repo in hub.legacy:  # renamed repo: a relative redirect, as the Hub does
            return self.send(307, [("Location", "/%s/resolve/%s/%s" % (hub.legacy[repo], rev_enc, filename))],
                             head=head)
        if repo.startswith("ghost/"):  # what the real Hub answers anonymous users for a missing repo
            return self.error(401, "RepoNotFound", head)
        if repo not in hub.repos:
            return self.error(404, "RepoNotFound", head)
        if repo in hub.private and self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self.send(401, [("X-Error-Message", "Invalid credentials in Authorization header")],
                             b"unauthorized", head)
        revs = hub.repos[repo]
        commit = revs.get(rev, rev if rev in revs.values() else None)
        if commit is None:
            return self.error(404, "RevisionNotFound", head)
        files = hub.commits[commit]
        if filename not in files:
            return self.error(404, "EntryNotFound", head, [("X-Repo-Commit", commit)])
        data = files[filename]
        if filename in LFS:
            digest = sha256(data)
            return self.send(302, [("Location", "%s/cdn/%s?sig=abc" % (hub.cdn_url, digest)),
                                   ("X-Repo-Commit", commit), ("X-Linked-Etag", '"%s"' % digest),
                                   ("X-Linked-Size", str(len(data))), ("ETag", 'W/"%s"' % git_sha1(b"ptr" + data))],
                             head=head)
        self.ranged(data, [("ETag", '"%s"' % git_sha1(data))] + ([] if hub.no_commit else [("X-Repo-Commit", commit)]),
                    head)

    def cdn(self, hub, head):
        digest = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
        data = hub.blobs.get(digest)
        if data is None:
            return self.send(404, body=b"NoSuchKey: no such blob", head=head)
        if hub.corrupt:
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        self.ranged(data, [("ETag", '"%s"' % digest)], head, big=True)

    def ranged(self, data, headers, head, big=False):
        hub = self.server.hub
        start = 0
        rng = None if big and hub.ignore_range else self.headers.get("Range")
        headers = [*headers, ("Accept-Ranges", "bytes")]
        if rng:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                return self.send(416, [("Content-Range", "bytes */%d" % len(data))], head=head)
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data))))
        body = data[start:]
        self.send_response(206 if rng else 200)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        drop = False
        if big:
            with hub.lock:
                if hub.drops_left > 0:
                    hub.drops_left -= 1
                    drop = True
        if drop:  # cut the connection after drop_after bytes
            self.wfile.write(body[:hub.drop_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if big and hub.slow:
            for i in range(0, len(body), 1 << 16):
                self.wfile.write(body[i:i + (1 << 16)])
                time.sleep(hub.slow)
        else:
            self.wfile.write(body)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # cut connections are on purpose


class MockHub:
    def __init__(self):
        base = {f: (TINY / f).read_bytes() for f in FILES}
        v2 = dict(base)
        v2["generation_config.json"] = base["generation_config.json"].replace(b"}", b', "_v2": true}', 1)
        nogen = {k: v for k, v in base.items() if k != "generation_config.json"}
        nomerges = {k: v for k, v in base.items() if k != "merges.txt"}
        self.main, self.v2, self.pr = commit_of("main"), commit_of("v2"), commit_of("pr1")
        self.commits = {self.main: base, self.v2: v2, self.pr: base, commit_of("nogen"): nogen,
                        commit_of("nomerges"): nomerges}
        self.repos = {
            "org/tiny": {"main": self.main, "v2": self.v2, "refs/pr/1": self.pr},
            "distilbert/distilgpt2": {"main": self.main},
            "private/tiny": {"main": self.main},
            "org/nogen": {"main": commit_of("nogen")},
            "org/nomerges": {"main": commit_of("nomerges")},
        }
        self.legacy = {"distilgpt2": "distilbert/distilgpt2"}
        self.private = {"private/tiny"}
        self.blobs = {sha256(d[f]): d[f] for d in self.commits.values() for f in LFS}
        self.files = base
        self.lock = threading.Lock()
        self.log = []
        self.drops_left, self.drop_after = 0, 1 << 20
        self.corrupt, self.slow, self.ignore_range, self.no_commit = False, 0.0, False, False
        self.servers = []
        for role in ("hub", "cdn"):
            s = Server(("127.0.0.1", 0), Handler)
            s.hub, s.role = self, role
            threading.Thread(target=s.serve_forever, daemon=True).start()
            self.servers.append(s)
        self.url = "http://127.0.0.1:%d" % self.servers[0].server_address[1]
        self.cdn_url = "http://127.0.0.1:%d" % self.servers[1].server_address[1]

    def requests(self, role=None, method=None):
        with self.lock:
            return [r for r in self.log if (role is None or r["role"] == role) and (method is None or r["method"] == method)]

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def hub():
    if not (TINY / "model.safetensors").exists():
        pytest.fail("build/models/tiny is missing: run `make models`")
    h = MockHub()
    yield h
    h.close()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def environment(hub=None, cache=None, env=None):
    """The caller's environment without Hub settings or proxies, pointed at the mock Hub."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_")) and "proxy" not in k.lower()}
    e["NO_PROXY"] = e["no_proxy"] = "*"
    e["HF_ENDPOINT"] = hub.url if hub else "http://127.0.0.1:9"  # port 9: nothing listens
    if cache:
        e["HF_HUB_CACHE"] = str(cache)
        e["HF_HOME"] = str(Path(cache).parent / "hf_home")
    e.update(env or {})
    return e


def run(args, hub=None, cache=None, env=None, timeout=120):
    return subprocess.run([BIN, *args], env=environment(hub, cache, env), capture_output=True, text=True,
                          timeout=timeout)


def spawn(args, hub, cache, env=None):
    return subprocess.Popen([BIN, *args], env=environment(hub, cache, env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def check_snapshot(cache, repo, commit, files, hub_files):
    """huggingface_hub's layout: snapshot entries are relative symlinks into blobs/ named by ETag."""
    rd = Path(cache) / ("models--" + repo.replace("/", "--"))
    snap = rd / "snapshots" / commit
    assert sorted(p.name for p in snap.iterdir()) == sorted(files)
    for f in files:
        link = snap / f
        data = hub_files[f]
        etag = sha256(data) if f in LFS else git_sha1(data)
        assert link.is_symlink(), f
        assert os.readlink(link) == "../../blobs/" + etag, f
        assert (rd / "blobs" / etag).read_bytes() == data, f
    assert not list((rd / "blobs").glob("*.incomplete"))
    return rd


def greedy(model, **kw):
    return run(["generate", "--model", str(model), "--greedy", "--ignore-eos", "--max-new-tokens", "8",
                "Once upon a time"], **kw)


# --------------------------------------------------------------------------- tests


def test_pull_layout_then_generate_offline(hub, cache):
    r = run(["pull", "org/tiny"], hub, cache)
    assert r.returncode == 0, r.stderr
    rd = Path(cache) / "models--org--tiny"
    assert r.stdout.strip() == str(rd / "snapshots" / hub.main)
    check_snapshot(cache, "org/tiny", hub.main, FILES, hub.files)
    assert (rd / "refs" / "main").read_text() == hub.main  # no newline, as huggingface_hub writes it
    assert (Path(cache) / ".locks" / "models--org--tiny").is_dir()
    # The big file came from the CDN, without the (absent) token; small files from the Hub.
    gets = hub.requests(method="GET")
    assert [g["role"] for g in gets if "model.safetensors" in g["path"] or "/cdn/" in g["path"]] == ["cdn"]
    assert all("authorization" not in g["headers"] for g in hub.log)
    assert all(g["headers"].get("accept-encoding", "identity") == "identity" for g in hub.log)

    want = greedy(TINY)
    assert want.returncode == 0, want.stderr
    for extra in ({"HF_HUB_OFFLINE": "1"}, {}):  # offline, and online with the Hub unreachable: cache only
        got = greedy("org/tiny", cache=cache, env=extra)
        assert got.returncode == 0, got.stderr
        assert got.stdout == want.stdout
    tok = run(["tokenize", "--model", "org/tiny", "Hello world"], cache=cache, env={"HF_HUB_OFFLINE": "1"})
    assert tok.returncode == 0 and tok.stdout.strip() == "[15496, 995]", tok.stderr


def test_second_pull_downloads_nothing(hub, cache):
    assert run(["pull", "org/tiny"], hub, cache).returncode == 0
    n = len(hub.requests(method="GET"))
    r = run(["pull", "org/tiny"], hub, cache)
    assert r.returncode == 0, r.stderr
    assert len(hub.requests(method="GET")) == n  # metadata only
    assert "downloaded" not in r.stderr
    # Hub unreachable: the cached copy, with a warning.
    r = run(["pull", "org/tiny"], cache=cache)
    assert r.returncode == 0 and r.stdout.strip().endswith(hub.main), r.stderr
    assert "cannot reach the Hub" in r.stderr and "using the cached copy" in r.stderr
    r = run(["pull", "org/other"], cache=cache)
    assert r.returncode == 1 and "cannot reach the Hub at http://127.0.0.1:9" in r.stderr, r.stderr


def test_generate_pulls_missing_model(hub, cache):
    r = greedy("org/tiny", hub=hub, cache=cache)
    assert r.returncode == 0, r.stderr
    assert r.stdout == greedy(TINY).stdout
    check_snapshot(cache, "org/tiny", hub.main, FILES, hub.files)


def test_cache_filled_by_transformers(hub, tmp_path):
    """A cache written the way huggingface_hub writes it is used as it is, offline."""
    cache = tmp_path / "cache"
    rd = cache / "models--openai-community--gpt2"
    commit = commit_of("hf")
    (rd / "blobs").mkdir(parents=True)
    (rd / "refs").mkdir()
    (rd / "snapshots" / commit).mkdir(parents=True)
    (rd / "refs" / "main").write_text(commit)
    for f in FILES:
        data = hub.files[f]
        etag = sha256(data) if f in LFS else git_sha1(data)
        (rd / "blobs" / etag).write_bytes(data)
        os.symlink("../../blobs/" + etag, rd / "snapshots" / commit / f)
    r = greedy("openai-community/gpt2", cache=cache, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == greedy(TINY).stdout
    r = run(["pull", "openai-community/gpt2"], cache=cache, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and r.stdout.strip() == str(rd / "snapshots" / commit), r.stderr
    # HF_HOME/hub is the default cache when HF_HUB_CACHE is unset.
    home = tmp_path / "home"
    home.mkdir()
    os.symlink(cache, home / "hub")
    r = run(["tokenize", "--model", "openai-community/gpt2", "Hello world"],
            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(home)})
    assert r.returncode == 0 and r.stdout.strip() == "[15496, 995]", r.stderr


def test_resume_within_a_run(hub, cache):
    hub.drops_left, hub.drop_after = 1, 1 << 20
    r = run(["pull", "org/tiny"], hub, cache)
    assert r.returncode == 0, r.stderr
    cdn = hub.requests(role="cdn", method="GET")
    assert len(cdn) == 2
    assert "range" not in cdn[0]["headers"]
    assert cdn[1]["headers"]["range"] == "bytes=%d-" % (1 << 20)
    check_snapshot(cache, "org/tiny", hub.main, FILES, hub.files)


def test_resume_on_next_run(hub, cache):
    hub.drops_left, hub.drop_after = 100, 300_000  # every attempt of the first run is cut
    r = run(["pull", "org/tiny"], hub, cache)
    assert r.returncode == 1
    assert "interrupted" in r.stderr and "run the same command again to resume" in r.stderr, r.stderr
    rd = Path(cache) / "models--org--tiny"
    part = list((rd / "blobs").glob("*.incomplete"))
    assert len(part) == 1
    have = part[0].stat().st_size
    assert 0 < have < len(hub.files["model.safetensors"])
    assert not (rd / "snapshots").exists() and not (rd / "refs").exists()  # no partial snapshot
    n_before = len(hub.requests(role="cdn", method="GET"))
    hub.drops_left = 0
    r = run(["pull", "org/tiny"], hub, cache)
    assert r.returncode == 0, r.stderr
    resumed = hub.requests(role="cdn", method="GET")[n_before:]
    assert [g["headers"].get("range") for g in resumed] == ["bytes=%d-" % have]
    check_snapshot(cache, "org/tiny", hub.main, FILES, hub.files)


def test_resume_ignored_by_server(hub, cache):
    """A server that answers a Range request with 200 and the whole file: start over."""
    hub.drops_left, hub.ignore_range = 1, True
    r = run(["pull", "org/tiny"], hub, cache)
    assert r.returncode == 0, r.stderr
    cdn = hub.requests(role="cdn", method="GET")
    assert len(cdn) == 2 and cdn[1]["headers"]["range"] == "bytes=%d-" % hub.drop_after
    check_snapshot(cache, "org/tiny", hub.main, FILES, hub.files)


def test_not_a_hub(hub, cache):
    hub.no_commit = True
    r = run(["pull", "org/tiny"], hub, cache)
    assert r.returncode == 1 and "X-Repo-Commit" in r.stderr and "does not look like a Hugging Face Hub" in r.stderr


def test_checksum_mismatch_rejected(hub, cache):
    hub.corrupt = True
    r = run(["pull", "org/tiny"], hub, cache)
    assert r.returncode == 1
    assert "checksum mismatch" in r.stderr and sha256(hub.files["model.safetensors"]) in r.stderr, r.stderr
    rd = Path(cache) / "models--org--tiny"
    assert not (rd / "snapshots").exists() or not any((rd / "snapshots").rglob("*"))
    assert not (rd / "blobs" / sha256(hub.files["model.safetensors"])).exists()
    assert not list((rd / "blobs").glob("*.incomplete"))
    off = greedy("org/tiny", cache=cache, env={"HF_HUB_OFFLINE": "1"})
    assert off.returncode == 1 and "not in the cache" in off.stderr
    hub.corrupt = False  # a good server afterwards: the pull recovers
    assert run(["pull", "org/tiny"], hub, cache).returncode == 0
    check_snapshot(cache, "org/tiny", hub.main, FILES, hub.files)


def test_not_found_messages(hub, cache):
    r = run(["pull", "nope/nothing"], hub, cache)
    assert r.returncode == 1
    assert "model nope/nothing not found on the Hub (check the name)" in r.stderr, r.stderr
    r = run(["generate", "--model", "nope/nothing", "x"], hub, cache)
    assert r.returncode == 1 and "model nope/nothing not found on the Hub (check the name)" in r.stderr, r.stderr
    r = run(["pull", "ghost/repo"], hub, cache)  # the real Hub's answer to anonymous users: 401 RepoNotFound
    assert r.returncode == 1 and "not found on the Hub (check the name)" in r.stderr and "HF_TOKEN" in r.stderr
    r = run(["pull", "org/tiny@nobranch"], hub, cache)
    assert r.returncode == 1 and "revision 'nobranch' not found" in r.stderr, r.stderr
    r = run(["pull", "org/nomerges"], hub, cache)
    assert r.returncode == 1 and "has no merges.txt" in r.stderr, r.stderr
    assert not (Path(cache) / "models--org--nomerges" / "snapshots").exists()
    for bad in ("a/b/c", "x-", "a--b", "org/tiny@../x", ""):
        r = run(["pull", bad], hub, cache)
        assert r.returncode == 2 and "cserve pull:" in r.stderr, (bad, r.stderr)
    assert not hub.requests(role="cdn")


def test_optional_file_absent(hub, cache):
    r = run(["pull", "org/nogen"], hub, cache)
    assert r.returncode == 0, r.stderr
    commit = commit_of("nogen")
    rd = check_snapshot(cache, "org/nogen", commit, [f for f in FILES if f != "generation_config.json"], hub.files)
    assert (rd / ".no_exist" / commit / "generation_config.json").is_file()
    r = greedy("org/nogen", cache=cache, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr


def test_authentication(hub, cache, tmp_path):
    r = run(["pull", "private/tiny"], hub, cache)
    assert r.returncode == 1
    assert "model private/tiny requires authentication: set HF_TOKEN" in r.stderr, r.stderr
    r = run(["pull", "private/tiny"], hub, cache, env={"HF_TOKEN": "hf_wrong"})
    assert r.returncode == 1 and "refused HF_TOKEN" in r.stderr, r.stderr
    n = len(hub.log)
    r = run(["pull", "private/tiny"], hub, cache, env={"HF_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    check_snapshot(cache, "private/tiny", hub.main, FILES, hub.files)
    new = hub.log[n:]
    assert all(q["headers"].get("authorization") == "Bearer " + TOKEN for q in new if q["role"] == "hub")
    cdn = [q for q in new if q["role"] == "cdn"]
    assert cdn and all("authorization" not in q["headers"] for q in cdn)  # never sent to another host
    # The token file that `huggingface-cli login` writes is used when HF_TOKEN is unset.
    home = Path(cache).parent / "hf_home"
    home.mkdir(exist_ok=True)
    (home / "token").write_text(TOKEN + "\n")
    r = run(["pull", "private/tiny"], hub, tmp_path / "cache2")
    assert r.returncode == 0, r.stderr
    r = run(["pull", "private/tiny"], hub, cache, env={"HF_TOKEN": "bad token\r\nX: y"})
    assert r.returncode == 1 and "HF_TOKEN" in r.stderr


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_missing_model(hub, cache, value):
    for args in (["pull", "org/tiny"], ["generate", "--model", "org/tiny", "x"], ["tokenize", "--model", "org/tiny", "x"]):
        r = run(args, hub, cache, env={"HF_HUB_OFFLINE": value})
        assert r.returncode == 1
        assert ("model org/tiny is not in the cache at %s and HF_HUB_OFFLINE is set: run `cserve pull org/tiny` on a "
                "machine with network access or copy the cache" % cache) in r.stderr, r.stderr
    assert hub.log == []  # the network was never touched


def test_concurrent_pulls(hub, cache):
    hub.slow = 0.01  # ~2 s for the big file, so the pulls overlap
    procs = [spawn(["pull", "org/tiny"], hub, cache) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert len({out for out, _ in outs}) == 1
    check_snapshot(cache, "org/tiny", hub.main, FILES, hub.files)
    assert len(hub.requests(role="cdn", method="GET")) == 1  # the others waited on the lock and reused the blob
    assert sum("waiting for another download" in err for _, err in outs) >= 1


def test_revisions(hub, cache):
    r = run(["pull", "org/tiny@v2"], hub, cache)
    assert r.returncode == 0, r.stderr
    rd = Path(cache) / "models--org--tiny"
    assert r.stdout.strip() == str(rd / "snapshots" / hub.v2)
    assert (rd / "refs" / "v2").read_text() == hub.v2
    assert not (rd / "refs" / "main").exists()
    check_snapshot(cache, "org/tiny", hub.v2, FILES, hub.commits[hub.v2])
    assert run(["pull", "org/tiny"], hub, cache).returncode == 0
    check_snapshot(cache, "org/tiny", hub.main, FILES, hub.files)
    assert len(list((rd / "blobs").iterdir())) == len(FILES) + 1  # only generation_config.json differs
    # A commit hash: no ref written.
    r = run(["pull", "org/tiny@" + hub.main], hub, cache)
    assert r.returncode == 0 and r.stdout.strip() == str(rd / "snapshots" / hub.main)
    assert sorted(p.name for p in (rd / "refs").iterdir()) == ["main", "v2"]
    # A revision with slashes is URL-encoded and stored as nested refs, like huggingface_hub.
    r = run(["pull", "org/tiny@refs/pr/1"], hub, cache)
    assert r.returncode == 0, r.stderr
    assert (rd / "refs" / "refs" / "pr" / "1").read_text() == hub.pr
    assert any("/resolve/refs%2Fpr%2F1/config.json" in q["path"] for q in hub.log)
    for model in ("org/tiny@v2", "org/tiny@" + hub.main, "org/tiny@refs/pr/1"):
        r = greedy(model, cache=cache, env={"HF_HUB_OFFLINE": "1"})
        assert r.returncode == 0, (model, r.stderr)


def test_legacy_name_redirect(hub, cache):
    r = run(["pull", "distilgpt2"], hub, cache)
    assert r.returncode == 0, r.stderr
    check_snapshot(cache, "distilgpt2", hub.main, FILES, hub.files)  # stored under the name as given
    heads = [q["path"] for q in hub.requests(role="hub", method="HEAD")]
    assert "/distilgpt2/resolve/main/config.json" in heads
    assert "/distilbert/distilgpt2/resolve/main/config.json" in heads
    r = greedy("distilgpt2", cache=cache, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr


def test_progress_output(hub, cache, tmp_path):
    r = run(["pull", "org/tiny"], hub, cache)
    assert r.returncode == 0
    assert "downloaded model.safetensors" in r.stderr and "\r" not in r.stderr  # stderr is not a terminal
    r = run(["pull", "--quiet", "org/tiny"], hub, tmp_path / "c2")
    assert r.returncode == 0 and r.stderr == ""
    # On a terminal: a progress bar redrawn with \r.
    master, slave = pty.openpty()
    p = subprocess.Popen([BIN, "pull", "org/tiny"], env=environment(hub, tmp_path / "c3"), stdout=subprocess.PIPE,
                         stderr=slave)
    os.close(slave)
    tty = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    assert p.wait(timeout=60) == 0
    assert b"\r" in tty and b"model.safetensors" in tty and b"100%" in tty, tty[-500:]
    r = run(["pull", "--help"])
    assert r.returncode == 0 and "HF_HUB_OFFLINE" in r.stdout and "HF_TOKEN" in r.stdout and "HF_ENDPOINT" in r.stdout


def screen(data, cols):
    """Replays terminal output on a `cols`-wide screen with automatic margins (a character
    written past the last column goes to the next row). Returns (rows, wrapped)."""
    rows, row, col, wrapped = [[]], 0, 0, False
    text = data.decode("utf-8", "replace")
    i = 0
    while i < len(text):
        ch = text[i]
        if text.startswith("\x1b[K", i):
            del rows[row][col:]
            i += 3
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            col = 0
            if row == len(rows):
                rows.append([])
        else:
            if col == cols:  # auto-wrap: the line did not fit
                wrapped = True
                row, col = row + 1, 0
                if row == len(rows):
                    rows.append([])
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
        i += 1
    return ["".join(r).rstrip() for r in rows], wrapped


def pull_on_pty(hub, cache, cols, env=None):
    """`cserve pull org/tiny` with stderr on a pseudo-terminal `cols` wide (0: size unset)."""
    import fcntl
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    e = environment(hub, cache, env)
    if "COLUMNS" not in (env or {}):
        e.pop("COLUMNS", None)
    p = subprocess.Popen([BIN, "pull", "org/tiny"], env=e, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    tty = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    assert p.wait(timeout=120) == 0, tty[-2000:]
    return tty


@pytest.mark.parametrize("cols,env", [(60, None), (100, None), (0, {"COLUMNS": "40"})])
def test_progress_bar_fits_the_terminal(hub, tmp_path, cols, env):
    hub.slow = 0.01  # several redraws of the bar, not only the last one
    tty = pull_on_pty(hub, tmp_path / "cache", cols, env)
    width = cols or 40
    rows, wrapped = screen(tty, width)
    assert b"\r" in tty and b"model.safetensors" in tty, tty[-500:]
    assert not wrapped, "a progress line wider than %d columns:\n%s" % (width, "\n".join(rows))
    bars = [r for r in rows if r]
    # no fragments: every row left on the screen is one whole, final progress line
    assert bars and all(r.split()[0] in FILES for r in bars), "\n".join(rows)
    assert any(r.startswith("model.safetensors") and "100%" in r for r in bars), "\n".join(rows)
    if width >= 60:
        assert any("[" in r and "#" in r for r in bars), "\n".join(rows)  # room for a bar: drawn
