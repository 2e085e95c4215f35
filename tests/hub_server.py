"""A stand-in Hugging Face Hub on 127.0.0.1, for testing the real ``huggingface_hub`` client code.

It serves the endpoints that ``hf_hub_download`` and ``HfApi.create_repo/create_branch/create_commit``
call, with the headers the client checks:

* ``HEAD/GET /{repo}/resolve/{revision}/{path}``: ``X-Repo-Commit``, ``ETag`` (git blob hash) and
  ``Content-Length`` for regular files; for LFS files (``*.safetensors``) a 302 to a second, "CDN"
  server on another port, with ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``, as the real Hub does.
  Unknown repository, revision or file answer 404 with ``X-Error-Code`` ``RepoNotFound``,
  ``RevisionNotFound`` or ``EntryNotFound``.
* ``POST /api/repos/create``, ``POST /api/models/{repo}/branch/{branch}``, ``POST /api/validate-yaml``,
  ``POST /api/models/{repo}/preupload/{revision}`` (every file "regular"), ``POST /api/models/{repo}/commit/{revision}``
  (NDJSON with base64 files), ``GET /api/models/{repo}/revision/{revision}``. Writes need the bearer token.

Every request is logged in :attr:`StandInHub.requests` so tests can check what the client did.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pth")


def git_blob_hash(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    private: bool = False


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    authorization: str | None
    server: str  # "hub" or "cdn"


class StandInHub:
    """Two HTTP servers (the Hub and its CDN) sharing in-memory repositories.

    Use as a context manager; :attr:`endpoint` is what ``HF_ENDPOINT`` should be.
    """

    def __init__(self, token: str = "hf_stand_in_token") -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._commit_counter = 0
        self._servers: list[ThreadingHTTPServer] = []

    # repository content -------------------------------------------------------------------------

    def add_commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", message: str = "") -> str:
        """Commit ``files`` (added to or replacing those of the branch head) and return the commit hash."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            parent = repo.branches.get(branch)
            tree = dict(repo.commits[parent]) if parent else {}
            tree.update(files)
            self._commit_counter += 1
            digest = hashlib.sha1(f"{repo_id}\n{parent}\n{message}\n{self._commit_counter}".encode())
            for path in sorted(tree):
                digest.update(path.encode() + git_blob_hash(tree[path]).encode())
            commit = digest.hexdigest()
            repo.commits[commit] = tree
            repo.branches[branch] = commit
            for path, content in files.items():
                if path.endswith(LFS_SUFFIXES):
                    self.blobs[hashlib.sha256(content).hexdigest()] = content
            return commit

    def files_at(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches.get(revision, revision)]

    def requests_to(self, fragment: str) -> list[LoggedRequest]:
        return [r for r in self.requests if fragment in r.path]

    # servers ------------------------------------------------------------------------------------

    def __enter__(self) -> StandInHub:
        hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "hub"))
        cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "cdn"))
        self._servers = [hub, cdn]
        for server in self._servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
        self.cdn = f"http://127.0.0.1:{cdn.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    # request handling ---------------------------------------------------------------------------

    def _commit_of(self, repo: Repo, revision: str) -> str | None:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        matches = [c for c in repo.commits if len(revision) >= 7 and c.startswith(revision)]
        return matches[0] if len(matches) == 1 else None

    def _authorized(self, authorization: str | None) -> bool:
        return authorization == f"Bearer {self.token}"

    def resolve(self, method: str, repo_id: str, revision: str, path: str, authorization: str | None):
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized(authorization)):
            return 404 if repo is None else 401, {"X-Error-Code": "RepoNotFound"}, b"Repository not found"
        commit = self._commit_of(repo, revision)
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound"}, b"Revision not found"
        tree = repo.commits[commit]
        if path not in tree:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"Entry not found"
        content = tree[path]
        if path.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(content).hexdigest()
            headers = {
                "X-Repo-Commit": commit,
                "ETag": f'"{git_blob_hash(content)}"',
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(content)),
                "Location": f"{self.cdn}/blobs/{sha256}?repo={repo_id}",
            }
            return 302, headers, b""
        return 200, {"X-Repo-Commit": commit, "ETag": f'"{git_blob_hash(content)}"'}, content

    def api_post(self, path: str, body: bytes, authorization: str | None):
        parts = path.strip("/").split("/")
        if path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            try:
                front = content.split("---\n", 2)[1] if content.startswith("---\n") else ""
                yaml.safe_load(front)
            except yaml.YAMLError as error:
                return 400, {}, json.dumps({"errors": [{"message": str(error)}]}).encode()
            return 200, {}, json.dumps({"errors": [], "warnings": []}).encode()
        if not self._authorized(authorization):
            return 401, {"X-Error-Message": "Invalid credentials in Authorization header"}, b"Unauthorized"
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.repos:
                answer = {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}
                return 409, {}, json.dumps(answer).encode()
            self.add_commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            self.repos[repo_id].private = payload.get("visibility") == "private"
            return 200, {}, json.dumps({"url": f"{self.endpoint}/{repo_id}", "name": repo_id}).encode()
        if len(parts) >= 6 and parts[:2] == ["api", "models"]:
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], unquote("/".join(parts[5:]))
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found"
            if action == "branch":
                if revision in repo.branches:
                    return 409, {}, b"Branch already exists"
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                repo.branches[revision] = self._commit_of(repo, start)
                return 200, {}, b"{}"
            commit = self._commit_of(repo, revision)
            if commit is None:
                return 404, {"X-Error-Code": "RevisionNotFound"}, b"Revision not found"
            if action == "preupload":
                files = json.loads(body)["files"]
                tree = repo.commits[commit]
                answer = [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_blob_hash(tree[f["path"]]) if f["path"] in tree else None,
                    }
                    for f in files
                ]
                return 200, {}, json.dumps({"files": answer}).encode()
            if action == "commit":
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                files = {}
                for line in lines:
                    if line["key"] == "file":
                        files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    elif line["key"] != "header":
                        return 400, {}, f"unsupported commit operation {line['key']}".encode()
                new_commit = self.add_commit(repo_id, files, branch=revision, message=header["summary"])
                url = f"{self.endpoint}/{repo_id}/commit/{new_commit}"
                return 200, {}, json.dumps({"commitUrl": url, "commitOid": new_commit, "success": True}).encode()
        return 404, {}, b"Not found"

    def api_get(self, path: str):
        parts = path.strip("/").split("/")
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "revision":
            repo_id, revision = f"{parts[2]}/{parts[3]}", unquote("/".join(parts[5:]))
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found"
            commit = self._commit_of(repo, revision)
            if commit is None:
                return 404, {"X-Error-Code": "RevisionNotFound"}, b"Revision not found"
            siblings = [{"rfilename": name} for name in sorted(repo.commits[commit])]
            return 200, {}, json.dumps({"id": repo_id, "sha": commit, "siblings": siblings}).encode()
        return 404, {}, b"Not found"


def _handler(hub: StandInHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, headers: dict[str, str], body: bytes, *, head: bool = False) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Type" not in headers:
                self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _log(self) -> str:
            path = urlsplit(self.path).path
            hub.requests.append(LoggedRequest(self.command, path, self.headers.get("Authorization"), role))
            return path

        def _serve_get(self, head: bool) -> None:
            path = self._log()
            if role == "cdn":
                blob = hub.blobs.get(path.rsplit("/", 1)[-1]) if path.startswith("/blobs/") else None
                if blob is None:
                    self._answer(404, {}, b"no such blob", head=head)
                else:
                    self._answer(200, {"ETag": f'"{hashlib.sha256(blob).hexdigest()}"'}, blob, head=head)
                return
            if path.startswith("/api/"):
                self._answer(*hub.api_get(path), head=head)
                return
            parts = path.strip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id, revision, file_path = f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:]))
                self._answer(
                    *hub.resolve(self.command, repo_id, revision, file_path, self.headers.get("Authorization")),
                    head=head,
                )
                return
            self._answer(404, {}, b"Not found", head=head)

        def do_HEAD(self) -> None:
            self._serve_get(head=True)

        def do_GET(self) -> None:
            self._serve_get(head=False)

        def do_POST(self) -> None:
            path = self._log()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if role == "cdn":
                self._answer(405, {}, b"")
                return
            status, headers, answer = hub.api_post(path, body, self.headers.get("Authorization"))
            self._answer(status, {"Content-Type": "application/json", **headers}, answer)

    return Handler
