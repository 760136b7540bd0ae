"""moto's server, with one correction so that IAM enforcement can stay on.

Real STS answers ``AssumeRoleWithWebIdentity`` without a request signature: the ID token
is the credential, and botocore sends the call unsigned. moto 5.2, when it enforces IAM
(``INITIAL_NO_AUTH_ACTION_COUNT``), looks for an Authorization header on every action and
fails with 500 on that call. Here the unsigned web-identity call is let through, as AWS
does; every other request is still authenticated and authorized against IAM.

Run as ``python -m worker.devstack.moto_server -H 127.0.0.1 -p PORT``.
"""

from __future__ import annotations

from moto.core.responses import BaseResponse
from moto.server import main

_UNSIGNED_ACTIONS = {"AssumeRoleWithWebIdentity", "AssumeRoleWithSAML"}
_original = BaseResponse._authenticate_and_authorize_normal_action


def _authorize(self: BaseResponse, resource: str = "*") -> None:
    if "Authorization" not in self.headers and self._get_action() in _UNSIGNED_ACTIONS:
        return
    _original(self, resource)


BaseResponse._authenticate_and_authorize_normal_action = _authorize

if __name__ == "__main__":
    main()
