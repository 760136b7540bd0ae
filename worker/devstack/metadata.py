"""A local double of the GCE metadata server: the parts google-auth uses for ID tokens.

It mints RS256-signed ID tokens with the claims Google puts in them (``iss``, ``aud``,
``azp`` and ``sub`` = the service account's numeric unique ID, ``email``,
``email_verified``, ``iat``, ``exp``), answers google-auth's ``Metadata-Flavor: Google``
ping and ``service-accounts/default/?recursive=true``, and refuses requests without the
``Metadata-Flavor: Google`` header as the real server does. ``/_double/stats`` counts the
tokens issued and ``/_double/certs`` serves the public key as a JWKS, for tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

from worker.claims import ISSUER

PREFIX = "/computeMetadata/v1/"
SA_PATH = PREFIX + "instance/service-accounts/default/"


class MetadataDouble:
    """Serves the metadata endpoints on 127.0.0.1 in a background thread."""

    def __init__(self, *, email: str = "summary-worker@demo-project.iam.gserviceaccount.com",
                 unique_id: str = "104729000000000000001", project: str = "demo-project",
                 token_lifetime: int = 3600, port: int = 0):
        self.email = email
        self.unique_id = unique_id
        self.project = project
        self.token_lifetime = token_lifetime
        self.unavailable = False  # when True, answer 503 to everything (fault tests)
        self.tokens_issued: dict[str, int] = {}
        self.minted: list[str] = []  # every token handed out, so leak tests can look for the real values
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        numbers = key.public_key().public_numbers()
        self.key_id = hashlib.sha256(str(numbers.n).encode()).hexdigest()[:40]
        self._signer = crypt.RSASigner.from_string(pem, key_id=self.key_id)
        self._jwks = {"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.key_id,
            "n": _b64int(numbers.n), "e": _b64int(numbers.e),
        }]}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the value of GCE_METADATA_HOST and GCE_METADATA_IP."""
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> MetadataDouble:
        self._thread = threading.Thread(target=self._server.serve_forever, name="metadata-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MetadataDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def mint(self, audience: str, now: int | None = None) -> str:
        """An ID token for ``audience``, signed with this double's key."""
        now = int(time.time()) if now is None else now
        claims = {
            "iss": ISSUER,
            "aud": audience,
            "azp": self.unique_id,
            "sub": self.unique_id,
            "email": self.email,
            "email_verified": True,
            "iat": now,
            "exp": now + self.token_lifetime,
        }
        token = jwt.encode(self._signer, claims).decode("ascii")
        with self._lock:
            self.tokens_issued[audience] = self.tokens_issued.get(audience, 0) + 1
            self.minted.append(token)
        return token


def _b64int(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _handler_for(double: MetadataDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean; tokens are never logged
            pass

        def _send(self, status: int, body: str | bytes, content_type: str = "application/text") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            path = url.path
            if path == "/_double/stats":
                with double._lock:
                    stats = {"tokens_issued": dict(double.tokens_issued)}
                return self._send(200, json.dumps(stats), "application/json")
            if path == "/_double/certs":
                return self._send(200, json.dumps(double._jwks), "application/json")
            if double.unavailable:
                return self._send(503, "metadata server unavailable (double)")
            if path in ("/", ""):
                return self._send(200, "")
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._send(403, "Missing required header: Metadata-Flavor: Google")
            if path == SA_PATH and query.get("recursive") == "true":
                info = {"aliases": ["default"], "email": double.email,
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
                return self._send(200, json.dumps(info), "application/json")
            if path == SA_PATH + "email":
                return self._send(200, double.email)
            if path == SA_PATH + "identity":
                audience = query.get("audience", "")
                if not audience:
                    return self._send(400, "non-empty audience parameter required")
                return self._send(200, double.mint(audience))
            if path == PREFIX + "project/project-id":
                return self._send(200, double.project)
            if path == PREFIX + "instance/id":
                return self._send(200, "4720000000000000001")
            return self._send(404, "not found in the metadata double")

    return Handler
