#!/usr/bin/env python3
"""A stand-in sign-in provider for `kiln serve` tests: OAuth 2.0 with PKCE in
the shapes of GitHub, Gitea and an OpenID Connect provider, one per path
prefix of the same server.

  /github/login/oauth/authorize, /github/login/oauth/access_token,
  /github/api/user, /github/api/user/orgs           (web = /github, api = /github/api)
  /gitea/login/oauth/authorize, /gitea/login/oauth/access_token,
  /gitea/api/v1/user, /gitea/api/v1/user/orgs       (url = /gitea)
  /oidc/.well-known/openid-configuration, /oidc/authorize, /oidc/token,
  /oidc/userinfo                                    (issuer = /oidc)

authorize checks client_id, response_type=code, code_challenge_method=S256
and a code_challenge, records the challenge and redirect_uri under a fresh
code and redirects (302) straight back to redirect_uri with code and state,
as if the user had agreed. token checks grant_type, the client (in the form
for github and gitea; HTTP Basic for oidc, which its discovery document
requires, with id and secret form-urlencoded as RFC 6749 says), that the code is known and unused, the redirect_uri and that
BASE64URL(SHA256(code_verifier)) is the challenge, then answers an access
token. The user endpoints need that token as `Authorization: Bearer`.
GitHub and Gitea users are --login with organisations --org; the OIDC user
is --oidc-login with groups --group. Anything wrong is answered 4xx with a
message and counted. GET /_test/state shows the codes exchanged with their
PKCE check, and every refusal.

Usage: oauth.py --client-id ID --client-secret SECRET --login NAME
       [--org ORG]... --oidc-login NAME [--group GROUP]...
Binds 127.0.0.1 on a free port and prints the port as its first line.
Python 3 standard library only.
"""

import argparse
import base64
import hashlib
import json
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.args = args
        self.codes = {}  # code -> (kind, challenge, redirect_uri)
        self.tokens = {}  # access token -> kind
        self.exchanged = []
        self.refused = []


def challenge_of(verifier):
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("oauth.py: " + (fmt % args) + "\n")

    def answer(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, code, message):
        with STATE.lock:
            STATE.refused.append({"path": self.path, "code": code, "message": message})
        self.answer(code, {"error": "invalid_request", "error_description": message})

    def base(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/_test/state":
            with STATE.lock:
                return self.answer(200, {"exchanged": STATE.exchanged, "refused": STATE.refused})
        if path == "/oidc/.well-known/openid-configuration":
            b = self.base() + "/oidc"
            return self.answer(200, {
                "issuer": b,
                "authorization_endpoint": b + "/authorize",
                "token_endpoint": b + "/token",
                "userinfo_endpoint": b + "/userinfo",
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "code_challenge_methods_supported": ["S256"],
            })
        if path in ("/github/login/oauth/authorize", "/gitea/login/oauth/authorize", "/oidc/authorize"):
            return self.authorize(path.split("/")[1], query)
        kind = self.bearer()
        if kind is None:
            return self.refuse(401, "no valid access token")
        a = STATE.args
        if path == "/github/api/user" and kind == "github":
            return self.answer(200, {"id": 4242, "login": a.login, "name": "The Octocat"})
        if path == "/github/api/user/orgs" and kind == "github":
            return self.answer(200, [{"login": o, "id": i} for i, o in enumerate(a.org)])
        if path == "/gitea/api/v1/user" and kind == "gitea":
            return self.answer(200, {"id": 7, "login": a.login, "full_name": "Gitea User"})
        if path == "/gitea/api/v1/user/orgs" and kind == "gitea":
            return self.answer(200, [{"id": i, "username": o, "name": o} for i, o in enumerate(a.org)])
        if path == "/oidc/userinfo" and kind == "oidc":
            return self.answer(200, {"sub": "oidc-subject-1", "preferred_username": a.oidc_login,
                                     "name": "OIDC User", "groups": a.group})
        return self.refuse(404, "no such endpoint for a %s token: %s" % (kind, path))

    def bearer(self):
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return None
        with STATE.lock:
            return STATE.tokens.get(auth[len("Bearer "):])

    def authorize(self, kind, q):
        a = STATE.args
        if q.get("client_id") != a.client_id:
            return self.refuse(400, "unknown client_id %r" % q.get("client_id"))
        if q.get("response_type") != "code":
            return self.refuse(400, "response_type must be code")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return self.refuse(400, "PKCE S256 is required")
        if not q.get("state") or not q.get("redirect_uri"):
            return self.refuse(400, "state and redirect_uri are required")
        if kind == "oidc" and "openid" not in q.get("scope", "").split():
            return self.refuse(400, "scope must include openid")
        code = secrets.token_hex(16)
        with STATE.lock:
            STATE.codes[code] = (kind, q["code_challenge"], q["redirect_uri"])
        sep = "&" if "?" in q["redirect_uri"] else "?"
        location = q["redirect_uri"] + sep + urlencode({"code": code, "state": q["state"]})
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        path = urlsplit(self.path).path
        kinds = {"/github/login/oauth/access_token": "github",
                 "/gitea/login/oauth/access_token": "gitea", "/oidc/token": "oidc"}
        if path not in kinds:
            return self.refuse(404, "no such endpoint: " + path)
        kind = kinds[path]
        n = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()}
        a = STATE.args
        auth = self.headers.get("Authorization") or ""
        if kind == "oidc":
            if not auth.startswith("Basic "):
                return self.refuse(401, "client_secret_basic is required")
            # RFC 6749 2.3.1: id and secret are form-urlencoded, then joined.
            user, _, password = base64.b64decode(auth[len("Basic "):]).decode().partition(":")
            if (unquote_plus(user), unquote_plus(password)) != (a.client_id, a.client_secret):
                return self.refuse(401, "wrong client credentials")
            if "client_secret" in form:
                return self.refuse(400, "one client authentication method only")
        elif auth or form.get("client_id") != a.client_id or form.get("client_secret") != a.client_secret:
            return self.refuse(401, "wrong client credentials in the form")
        if form.get("grant_type") != "authorization_code":
            return self.refuse(400, "grant_type must be authorization_code")
        with STATE.lock:
            known = STATE.codes.pop(form.get("code", ""), None)
        if known is None or known[0] != kind:
            return self.refuse(400, "unknown or used code")
        _, challenge, redirect_uri = known
        if form.get("redirect_uri") != redirect_uri:
            return self.refuse(400, "redirect_uri differs from the authorize request's")
        verifier = form.get("code_verifier", "")
        if challenge_of(verifier) != challenge:
            return self.refuse(400, "code_verifier does not match code_challenge")
        token = "at_" + secrets.token_hex(16)
        with STATE.lock:
            STATE.tokens[token] = kind
            STATE.exchanged.append({"kind": kind, "pkce": "checked"})
        self.answer(200, {"access_token": token, "token_type": "bearer", "scope": ""})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret", required=True)
    p.add_argument("--login", required=True)
    p.add_argument("--org", action="append", default=[])
    p.add_argument("--oidc-login", required=True)
    p.add_argument("--group", action="append", default=[])
    global STATE
    STATE = State(p.parse_args())
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
