"""Google ID tokens from the metadata server, for the AWS web-identity exchange.

google-auth reads ``GCE_METADATA_HOST`` / ``GCE_METADATA_IP`` when it is imported, which
is how the local stack points it at the metadata double.
"""

from __future__ import annotations

import re
import threading

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.auth import compute_engine

from worker.errors import FederationFailed, Retryable

# google-auth reports every metadata failure as TransportError (wrapped in RefreshError);
# only a definite 4xx answer (no service account, bad audience) is permanent.
_PERMANENT_STATUS = re.compile(r"Status: 4\d\d")


class MetadataIdTokenSource:
    """A zero-argument callable returning a fresh ID token for the instance's service account.

    Each call fetches a new token (botocore calls it only when STS credentials need
    refreshing), so a token is never used past its ``exp``.
    """

    def __init__(self, audience: str, session: requests.Session | None = None):
        self._audience = audience
        self._request = google.auth.transport.requests.Request(session=session or requests.Session())
        self._credentials: compute_engine.IDTokenCredentials | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            try:
                if self._credentials is None:
                    self._credentials = compute_engine.IDTokenCredentials(
                        self._request, target_audience=self._audience, use_metadata_identity_endpoint=True)
                self._credentials.refresh(self._request)
                return self._credentials.token
            except google.auth.exceptions.GoogleAuthError as e:
                raise _classify(e) from None


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
    return Retryable(f"the metadata server did not give an ID token ({type(error).__name__}); "
                     "it is unreachable or unavailable", details={"step": "id_token"})
