#!/usr/bin/env python3
"""A stand-in Gitea API for `kiln serve` tests: commit statuses in Gitea's
shapes (Gitea 1.2x, /api/v1).

POST /api/v1/repos/OWNER/REPO/statuses/SHA requires `Authorization: token
TOKEN` exactly (401 otherwise), a 40-hex SHA, and a JSON body as Gitea's
CreateStatusOption binds it: `state` one of pending, success, error, failure,
warning; `context`, `description` and `target_url` strings when present
(target_url an absolute http(s) URL). Anything wrong gets 4xx with Gitea's
`{"message": ..., "url": ...}` error object. Accepted statuses are answered
201 with a CommitStatus object. GET /_test/state returns every accepted
status in order, every refused request and every git request.

With --git-root DIR, the bare repositories under DIR are served for git
fetches as Gitea serves them (`/OWNER/REPO.git/info/refs`,
`/OWNER/REPO.git/git-upload-pack`, through `git http-backend`), to HTTP
basic auth whose password is the token (any user name, as Gitea takes the
token's owner); without it, 401 with `WWW-Authenticate`, so git asks its
credential helper.

GET /api/v1/repos/OWNER/REPO/pulls?state=open&page=N&limit=L requires the
token too and answers, page by page (pages from 1, L at most 50, default
30, as Gitea's MAX_RESPONSE_ITEMS) with `X-Total-Count`, the pull requests in
the JSON array of the file given with --pulls-file (read at each request;
none when it does not exist) whose `base.repo.full_name` is OWNER/REPO and
whose `state` is `open` when they have one. Every such request is recorded
(method, path and query, and whether the token was right) in the state's
`requests`.

Usage: gitea.py --token TOKEN [--git-root DIR] [--pulls-file PATH]
Binds 127.0.0.1 on a free port and prints the port as its first line.
Python 3 standard library only.
"""

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
import git_http  # noqa: E402

HEX_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
VALID_STATES = ("pending", "success", "error", "failure", "warning")
ROUTE = re.compile(r"^/api/v1/repos/([^/]+)/([^/]+)/statuses/([^/]+)$")
PULLS = re.compile(r"^/api/v1/repos/([^/]+)/([^/]+)/pulls$")
MAX_RESPONSE_ITEMS = 50
DEFAULT_PAGING_NUM = 30


class Recorder:
    def __init__(self, token, git_root, pulls_file):
        self.lock = threading.Lock()
        self.token = token
        self.git_root = git_root
        self.pulls_file = pulls_file
        self.requests = []
        self.accepted = []
        self.refused = []
        self.git = []
        self.counter = 0


class GiteaHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("gitea.py: " + (fmt % args) + "\n")

    def reply(self, code, payload, headers=()):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def reject(self, code, message):
        with REC.lock:
            REC.refused.append({"method": self.command, "path": self.path, "code": code, "message": message})
        self.reply(code, {"message": message, "url": "https://gitea.test/api/swagger"})

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def git_user(self):
        """The basic-auth user when the password is the token, else None."""
        auth = git_http.basic_auth(self)
        return auth[0] if auth is not None and auth[1] == REC.token else None

    def git(self, raw):
        """A git fetch, for a caller holding the token."""
        url = urlsplit(self.path)
        user = self.git_user()
        if REC.git_root is None or user is None:
            code = 404 if REC.git_root is None else 401
            with REC.lock:
                REC.git.append({"path": url.path, "user": user, "status": code})
            return git_http.reply(self, code, b"Unauthorized\n", [("WWW-Authenticate", 'Basic realm="Gitea"')])
        code = git_http.serve(self, REC.git_root, url.path, url.query, raw, user)
        with REC.lock:
            REC.git.append({"path": url.path, "user": user, "status": code})

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/_test/state":
            with REC.lock:
                state = {"statuses": REC.accepted, "refused": REC.refused, "git": REC.git, "requests": REC.requests}
                return self.reply(200, state)
        if git_http.is_git(path):
            return self.git(b"")
        match = PULLS.match(path)
        if match is not None:
            return self.pulls("/".join(match.groups()))
        self.reject(404, "Not Found")

    def pulls(self, full_name):
        """One page of the open pull requests of `full_name`."""
        authorised = self.headers.get("Authorization") == "token " + REC.token
        with REC.lock:
            REC.requests.append({"method": self.command, "target": self.path, "authorised": authorised})
        if not authorised:
            return self.reject(401, "token is required")
        query = parse_qs(urlsplit(self.path).query)
        try:
            page = max(int(query.get("page", ["1"])[0]), 1)
            limit = int(query.get("limit", [str(DEFAULT_PAGING_NUM)])[0])
        except ValueError:
            return self.reject(422, "page and limit must be integers")
        limit = min(limit, MAX_RESPONSE_ITEMS) if limit > 0 else DEFAULT_PAGING_NUM
        if query.get("state", ["open"])[0] != "open":
            return self.reject(422, "only state=open is served")
        try:
            with open(REC.pulls_file or "", encoding="utf-8") as f:
                pulls = json.load(f)
        except FileNotFoundError:
            pulls = []
        mine = [
            p
            for p in pulls
            if ((p.get("base") or {}).get("repo") or {}).get("full_name") == full_name and p.get("state", "open") == "open"
        ]
        start = (page - 1) * limit
        self.reply(200, mine[start : start + limit], [("X-Total-Count", str(len(mine)))])

    def do_POST(self):
        raw = self.read_body()
        if git_http.is_git(urlsplit(self.path).path):
            return self.git(raw)
        match = ROUTE.match(urlsplit(self.path).path)
        if match is None:
            return self.reject(404, "Not Found")
        if self.headers.get("Authorization") != "token " + REC.token:
            return self.reject(401, "token is required")
        owner, repo, sha = match.groups()
        if not HEX_SHA.match(sha):
            return self.reject(422, "invalid commit SHA: " + sha)
        try:
            body = json.loads(raw)
        except ValueError:
            return self.reject(422, "invalid JSON body")
        if not isinstance(body, dict):
            return self.reject(422, "body is not a JSON object")
        state = body.get("state")
        if state not in VALID_STATES:
            return self.reject(422, "state must be one of " + ", ".join(VALID_STATES))
        for field in ("context", "description", "target_url"):
            if field in body and not isinstance(body[field], str):
                return self.reject(422, field + " must be a string")
        target = body.get("target_url", "")
        if target and not re.match(r"^https?://[^/]+", target):
            return self.reject(422, "target_url is not a URL")
        with REC.lock:
            REC.counter += 1
            record = {
                "id": REC.counter,
                "repository": owner + "/" + repo,
                "sha": sha,
                "state": state,
                "context": body.get("context", ""),
                "description": body.get("description", ""),
                "target_url": target,
                "at": time.time(),
            }
            REC.accepted.append(record)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record["at"]))
        self.reply(
            201,
            {
                "id": record["id"],
                "status": state,
                "target_url": target,
                "description": record["description"],
                "context": record["context"],
                "url": "http://%s/api/v1/repos/%s/%s/statuses/%s" % (self.headers.get("Host", ""), owner, repo, sha),
                "created_at": stamp,
                "updated_at": stamp,
            },
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--token", required=True)
    parser.add_argument("--git-root")
    parser.add_argument("--pulls-file")
    args = parser.parse_args()
    global REC
    REC = Recorder(args.token, args.git_root, args.pulls_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), GiteaHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
