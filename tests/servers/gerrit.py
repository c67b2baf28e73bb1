#!/usr/bin/env python3
"""A stand-in Gerrit for `kiln serve` tests: the REST API in Gerrit's shapes
(every JSON answer behind Gerrit's `)]}'` line) and git fetches, both behind
the account's HTTP password on the `/a/` prefix, as Gerrit serves them.

Projects are the bare repositories under --git-root (`infra/widget` is
`ROOT/infra/widget.git`); a change is what the repository holds under
`refs/changes/NN/NUMBER/PATCHSET` (NN the number's last two digits), its
highest patchset current, its target branch --branch, its owner account
1000042 (`ada`, in group --group), its status NEW. Nothing is invented
beyond that: REST answers what git has.

- GET /a/changes/PROJECT~NUMBER[?o=…]: a ChangeInfo with the current
  revision, its commit and the owner (404 `Not found` for no such change).
- GET /a/changes/?q=status:open+project:PROJECT[&o=…][&n=N][&S=SKIP]: the
  project's changes (all open), by number, as ChangeInfos with only their
  current revision (no commit), at most --query-limit (or N) from SKIP, the
  last one with `_more_changes: true` when more follow. Other queries are
  400 `bad query`.
- GET /a/accounts/ID/groups: the owner's groups.
- GET /a/projects/PROJECT/HEAD: the repository's HEAD.
- GET /a/projects/PROJECT/commits/REV: a CommitInfo (404 when absent).
- POST /a/changes/PROJECT~NUMBER/revisions/REV/review: a ReviewInput is
  checked as Gerrit binds it (`message` a string, `labels` label to an
  integer from -2 to +2, `notify` one of NONE, OWNER, OWNER_REVIEWERS, ALL,
  `tag` a string; REV a revision of that change, else 404) and recorded;
  the answer is a ReviewResult with the labels.
- /a/PROJECT/info/refs and /a/PROJECT/git-upload-pack: git fetches,
  through `git http-backend`.

Anything without the account's basic auth is 401 with `WWW-Authenticate`
(so git asks its credential helper), and is recorded as refused. GET
/_test/state returns every review recorded in order, every REST request
(method and target), every git request and every refused one, as plain
JSON.

Usage: gerrit.py --username USER --password PASSWORD --git-root DIR
                 [--branch main] [--group NAME] [--query-limit 500]
Binds 127.0.0.1 on a free port and prints the port as its first line.
Python 3 standard library only.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
import git_http  # noqa: E402

XSSI = b")]}'\n"
OWNER = {"_account_id": 1000042, "name": "Ada Example", "email": "ada@example.org", "username": "ada"}
NOTIFY = ("NONE", "OWNER", "OWNER_REVIEWERS", "ALL")
CHANGE = re.compile(r"^/a/changes/([^/~]+)~(\d+)$")
REVIEW = re.compile(r"^/a/changes/([^/~]+)~(\d+)/revisions/([^/]+)/review$")
GROUPS = re.compile(r"^/a/accounts/(\d+)/groups$")
HEAD = re.compile(r"^/a/projects/([^/]+)/HEAD$")
COMMIT = re.compile(r"^/a/projects/([^/]+)/commits/([^/]+)$")


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.username = args.username
        self.password = args.password
        self.root = os.path.abspath(args.git_root)
        self.branch = args.branch
        self.group = args.group
        self.query_limit = args.query_limit
        self.reviews = []
        self.requests = []
        self.git = []
        self.refused = []


def git(project, *args):
    """`git ARGS` in the project's repository: stdout, or None on failure."""
    done = subprocess.run(
        ["git", "-C", repository(project), *args],
        capture_output=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1", "HOME": STATE.root},
    )
    return done.stdout.decode() if done.returncode == 0 else None


def repository(project):
    return os.path.join(STATE.root, project + ".git")


def known(project):
    """Whether `project` names a repository under the root (no escape)."""
    if ".." in project.split("/") or project.startswith("/"):
        return False
    return os.path.isfile(os.path.join(repository(project), "HEAD"))


def commit_info(project, rev):
    """A CommitInfo, or None when the repository lacks `rev`."""
    text = git(project, "log", "-1", "--format=%H%n%P%n%an%n%ae%n%s%n%B", rev + "^{commit}", "--")
    if text is None:
        return None
    sha, parents, name, email, subject, message = text.split("\n", 5)
    return {
        "commit": sha,
        "parents": [{"commit": p} for p in parents.split()],
        "author": {"name": name, "email": email},
        "subject": subject,
        "message": message.rstrip("\n") + "\n",
    }


def change_numbers(project):
    """The numbers of the changes `project` holds, ascending."""
    refs = git(project, "for-each-ref", "--format=%(refname)", "refs/changes/")
    numbers = set()
    for ref in (refs or "").splitlines():
        parts = ref.split("/")
        if len(parts) == 5 and parts[3].isdigit() and parts[4].isdigit():
            numbers.add(int(parts[3]))
    return sorted(numbers)


def change_info(project, number):
    """The ChangeInfo of change `number`, or None when it has no patchset."""
    prefix = "refs/changes/%02d/%d/" % (number % 100, number)
    refs = git(project, "for-each-ref", "--format=%(objectname) %(refname)", prefix)
    patchsets = {}
    for line in (refs or "").splitlines():
        sha, ref = line.split(" ", 1)
        tail = ref[len(prefix):]
        if tail.isdigit():
            patchsets[int(tail)] = (sha, ref)
    if not patchsets:
        return None
    revisions = {}
    for n, (sha, ref) in patchsets.items():
        revisions[sha] = {"_number": n, "ref": ref, "kind": "REWORK", "uploader": OWNER, "fetch": {}}
    current_number = max(patchsets)
    current = patchsets[current_number][0]
    commit = commit_info(project, current)
    revisions[current]["commit"] = commit
    change_id = "I" + hashlib.sha1(("%s~%d" % (project, number)).encode()).hexdigest()
    return {
        "id": "%s~%d" % (project.replace("/", "%2F"), number),
        "project": project,
        "branch": STATE.branch,
        "change_id": change_id,
        "subject": commit["subject"],
        "status": "NEW",
        "_number": number,
        "owner": OWNER,
        "current_revision_number": current_number,
        "current_revision": current,
        "revisions": revisions,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("gerrit.py: " + (fmt % args) + "\n")

    def json(self, payload, code=200, prefix=XSSI):
        data = prefix + json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, code, message):
        """Gerrit's errors are plain text."""
        with STATE.lock:
            STATE.refused.append({"method": self.command, "path": self.path, "code": code, "message": message})
        headers = [("WWW-Authenticate", 'Basic realm="Gerrit Code Review"')] if code == 401 else []
        git_http.reply(self, code, (message + "\n").encode(), headers)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def authorised(self):
        return git_http.basic_auth(self) == (STATE.username, STATE.password)

    def answer(self, raw):
        url = urlsplit(self.path)
        if url.path == "/_test/state":
            with STATE.lock:
                state = {"reviews": STATE.reviews, "requests": STATE.requests, "git": STATE.git, "refused": STATE.refused}
                return self.json(state, prefix=b"")
        if not url.path.startswith("/a/"):
            return self.refuse(404, "Not found: " + url.path)
        if not self.authorised():
            return self.refuse(401, "Unauthorized")
        if git_http.is_git(url.path):
            project = git_http.FETCH.match(url.path[2:]).group(1).strip("/")
            if not known(project):
                return self.refuse(404, "Repository not found")
            code = git_http.serve(self, STATE.root, url.path[2:], url.query, raw, STATE.username)
            with STATE.lock:
                STATE.git.append({"path": url.path, "status": code})
            return None
        with STATE.lock:
            STATE.requests.append({"method": self.command, "target": self.path})
        if self.command == "POST":
            return self.review(url.path, raw)
        return self.read(url.path)

    def query(self, raw_query):
        """`GET /a/changes/?q=status:open+project:P`, one page."""
        query = parse_qs(raw_query)
        terms = query.get("q", [""])[0].split()
        project = next((t[len("project:") :] for t in terms if t.startswith("project:")), None)
        if sorted(t.split(":", 1)[0] for t in terms) != ["project", "status"] or "status:open" not in terms:
            return self.refuse(400, "bad query: only status:open+project:P is served")
        try:
            limit = int(query.get("n", [str(STATE.query_limit)])[0])
            skip = int(query.get("S", ["0"])[0])
        except ValueError:
            return self.refuse(400, "n and S must be integers")
        limit = min(limit, STATE.query_limit) if limit > 0 else STATE.query_limit
        numbers = change_numbers(project) if known(project) else []
        page = []
        for number in numbers[skip : skip + limit]:
            change = change_info(project, number)
            current = change["revisions"][change["current_revision"]]
            current.pop("commit", None)
            change["revisions"] = {change["current_revision"]: current}
            page.append(change)
        if page and skip + limit < len(numbers):
            page[-1]["_more_changes"] = True
        return self.json(page)

    def read(self, path):
        if path == "/a/changes/":
            return self.query(urlsplit(self.path).query)
        m = CHANGE.match(path)
        if m:
            project, number = unquote(m.group(1)), int(m.group(2))
            change = change_info(project, number) if known(project) else None
            if change is None:
                return self.refuse(404, "Not found: %s~%d" % (m.group(1), number))
            return self.json(change)
        m = GROUPS.match(path)
        if m:
            mine = int(m.group(1)) == OWNER["_account_id"] and STATE.group
            uuid = hashlib.sha1((STATE.group or "").encode()).hexdigest()
            return self.json([{"id": uuid, "name": STATE.group, "group_id": 7}] if mine else [])
        m = HEAD.match(path)
        if m and known(unquote(m.group(1))):
            return self.json(git(unquote(m.group(1)), "symbolic-ref", "HEAD").strip())
        m = COMMIT.match(path)
        if m and known(unquote(m.group(1))):
            info = commit_info(unquote(m.group(1)), unquote(m.group(2)))
            if info is not None:
                return self.json(info)
        return self.refuse(404, "Not found: " + path)

    def review(self, path, raw):
        m = REVIEW.match(path)
        if m is None:
            return self.refuse(404, "Not found: " + path)
        project, number, rev = unquote(m.group(1)), int(m.group(2)), unquote(m.group(3))
        change = change_info(project, number) if known(project) else None
        if change is None or rev not in change["revisions"]:
            return self.refuse(404, "Not found: %s~%d revision %s" % (m.group(1), number, rev))
        try:
            review = json.loads(raw)
        except ValueError:
            return self.refuse(400, "Invalid JSON")
        if not isinstance(review, dict) or not isinstance(review.get("message", ""), str):
            return self.refuse(400, "message must be a string")
        labels = review.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and -2 <= v <= 2 for v in labels.values()
        ):
            return self.refuse(400, "labels must map a label to a vote from -2 to +2")
        if review.get("notify", "ALL") not in NOTIFY:
            return self.refuse(400, "notify must be one of " + ", ".join(NOTIFY))
        if not isinstance(review.get("tag", ""), str):
            return self.refuse(400, "tag must be a string")
        with STATE.lock:
            STATE.reviews.append(
                {
                    "project": project,
                    "change": number,
                    "revision": rev,
                    "patchset": change["revisions"][rev]["_number"],
                    "message": review.get("message", ""),
                    "labels": labels,
                    "tag": review.get("tag"),
                    "notify": review.get("notify"),
                    "at": time.time(),
                }
            )
        return self.json({"labels": labels, "ready": False})

    def do_GET(self):
        self.answer(b"")

    def do_POST(self):
        self.answer(self.body())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--git-root", required=True)
    parser.add_argument("--branch", default="main")
    parser.add_argument("--group")
    parser.add_argument("--query-limit", type=int, default=500)
    args = parser.parse_args()
    global STATE
    STATE = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
