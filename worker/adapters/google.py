"""Google ID tokens from the metadata server, for the AWS web-identity exchange.

google-auth reads ``GCE_METADATA_HOST`` / ``GCE_METADATA_IP`` when it is imported, which
is how the local stack points it at the metadata double.
"""

from __future__ import annotations

import re
import threading

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.auth import compute_engine

from worker.claims import decode_claims
from worker.errors import FederationFailed, Unavailable

# google-auth reports every metadata failure as TransportError (wrapped in RefreshError);
# only a definite 4xx answer (no service account, bad audience) is permanent.
_PERMANENT_STATUS = re.compile(r"Status: 4\d\d")


class FileIdTokenSource:
    """An ID token read from a file on every call (kept fresh by something else, as with
    AWS_WEB_IDENTITY_TOKEN_FILE): for running off Google Cloud."""

    def __init__(self, path: str):
        self._path = path
        self.last_claims: dict = {}

    def __call__(self) -> str:
        try:
            with open(self._path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise FederationFailed(f"cannot read the ID token file {self._path}: {e.strerror}",
                                   details={"step": "id_token"}) from None
        if not token:
            raise FederationFailed(f"the ID token file {self._path} is empty", details={"step": "id_token"})
        self.last_claims = decode_claims(token)
        return token


class _GoogleAuthIdTokenSource:
    """A fresh ID token from google-auth credentials on every call (botocore calls it only when
    STS credentials need refreshing), so a token is never used past its ``exp``."""

    no_credentials_hint = "no Google credentials"

    def __init__(self, audience: str, session: requests.Session | None = None):
        self._audience = audience
        self._request = google.auth.transport.requests.Request(session=session or requests.Session())
        self._credentials = None
        self._lock = threading.Lock()
        self.last_claims: dict = {}

    def _make_credentials(self):
        raise NotImplementedError

    def __call__(self) -> str:
        with self._lock:
            try:
                if self._credentials is None:
                    self._credentials = self._make_credentials()
                self._credentials.refresh(self._request)
            except google.auth.exceptions.DefaultCredentialsError:
                raise FederationFailed(self.no_credentials_hint, details={"step": "id_token"}) from None
            except google.auth.exceptions.GoogleAuthError as e:
                raise _classify(e) from None
            token = self._credentials.token
            self.last_claims = decode_claims(token)
            return token


class ImpersonatedIdTokenSource(_GoogleAuthIdTokenSource):
    """An ID token for another service account, minted with the caller's own Google credentials
    (Application Default Credentials) through the IAM Credentials API: for running off Google
    Cloud as the function's service account. The caller needs roles/iam.serviceAccountOpenIdTokenCreator."""

    no_credentials_hint = "no Google credentials to impersonate with: run `gcloud auth application-default login`"

    def __init__(self, service_account: str, audience: str, session: requests.Session | None = None):
        super().__init__(audience, session)
        self._service_account = service_account

    def _make_credentials(self):
        from google.auth import impersonated_credentials

        scopes = ["https://www.googleapis.com/auth/cloud-platform"]
        source, _ = google.auth.default(scopes=scopes)
        target = impersonated_credentials.Credentials(source_credentials=source,
                                                      target_principal=self._service_account, target_scopes=scopes)
        return impersonated_credentials.IDTokenCredentials(target, target_audience=self._audience, include_email=True)


class MetadataIdTokenSource(_GoogleAuthIdTokenSource):
    """An ID token for the instance's own service account, from the metadata server."""

    def _make_credentials(self):
        return compute_engine.IDTokenCredentials(self._request, target_audience=self._audience,
                                                 use_metadata_identity_endpoint=True)


def token_source(kind: str, audience: str, *, service_account: str | None = None, path: str | None = None):
    """The configured ID token source: ``metadata`` (default), ``impersonate`` or ``file``."""
    if kind == "file":
        return FileIdTokenSource(path or "")
    if kind == "impersonate":
        return ImpersonatedIdTokenSource(service_account or "", audience)
    return MetadataIdTokenSource(audience)


def _classify(error: Exception) -> Exception:
    chain = []
    current: BaseException | None = error
    while current is not None and len(chain) < 5:
        chain.append(str(current))
        current = current.__cause__ or current.__context__
    text = " | ".join(chain)
    # Keep the message short and free of response bodies: only what the user acts on.
    if _PERMANENT_STATUS.search(text):
        status = _PERMANENT_STATUS.search(text).group(0)
        return FederationFailed(f"the metadata server refused an ID token ({status}); does the instance "
                                f"have a service account, and is ID_TOKEN_AUDIENCE set?",
                                details={"step": "id_token"})
    return Unavailable(f"the metadata server did not give an ID token ({type(error).__name__}); "
                       "it is unreachable or unavailable", details={"step": "id_token"})
