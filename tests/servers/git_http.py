"""Git's smart HTTP protocol for the stand-in forges (`gitea.py`,
`gerrit.py`): fetches answered by `git http-backend` as a CGI program, so
a client meets real git (protocol v0 and v2, `want` checks, packs) behind
the fake forge's own authentication. Pushes are refused: tests push to the
bare repositories directly.

Python 3 standard library only.
"""

import base64
import binascii
import os
import re
import subprocess

# The two requests of a fetch: the ref advertisement and the pack.
FETCH = re.compile(r"^(/.+?)/(info/refs|git-upload-pack)$")


def is_git(path):
    """Whether `path` (no query) is a git fetch request."""
    return FETCH.match(path) is not None


def serve(handler, root, path, query, body, user):
    """Answer `handler`'s request for `path` (`/<repo>/info/refs` or
    `/<repo>/git-upload-pack`) from the bare repositories under `root`,
    as `user` (already authenticated). Returns the HTTP status sent."""
    match = FETCH.match(path)
    if match is None or (match.group(2) == "info/refs" and query != "service=git-upload-pack"):
        return reply(handler, 403, b"only fetches are served\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_PROJECT_ROOT": root,
        "GIT_HTTP_EXPORT_ALL": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": root,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_METHOD": handler.command,
        "CONTENT_TYPE": handler.headers.get("Content-Type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_USER": user,
        "REMOTE_ADDR": handler.client_address[0],
    }
    if handler.headers.get("Content-Encoding"):
        env["HTTP_CONTENT_ENCODING"] = handler.headers["Content-Encoding"]
    if handler.headers.get("Git-Protocol"):
        env["GIT_PROTOCOL"] = handler.headers["Git-Protocol"]
    done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
    head, _, payload = done.stdout.partition(b"\r\n\r\n")
    if not _:
        head, _, payload = done.stdout.partition(b"\n\n")
    status, headers = 200, []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        elif name:
            headers.append((name, value.strip()))
    if done.returncode != 0 and status == 200:
        return reply(handler, 500, done.stderr or b"git http-backend failed\n")
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)
    return status


def basic_auth(handler):
    """The (user, password) of the request's basic auth, or None."""
    scheme, _, encoded = (handler.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def reply(handler, code, text, headers=()):
    """A plain-text answer."""
    handler.send_response(code)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(text)))
    for name, value in headers:
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(text)
    return code
