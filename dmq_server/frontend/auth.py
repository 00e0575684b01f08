"""Authentication (a token names a principal) and authorization (per-queue permissions with name patterns)."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import hmac

from dmq_client.protocol import ErrorCode

from .requests import RequestError

ACTIONS = ("admin", "send", "receive")


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a session acts for. `grants` are (queue pattern, actions); `internal` marks another node of the
    cluster, which may use node-to-node operations and acts on behalf of the principal it names."""

    name: str
    grants: tuple[tuple[str, frozenset[str]], ...]
    internal: bool = False

    def allows(self, action: str | None, queue: str) -> bool:
        """`action` None: any permission on the queue (looking it up, describing it)."""
        for pattern, actions in self.grants:
            if fnmatch.fnmatchcase(queue, pattern) and (action is None or action in actions):
                return True
        return False

    def require(self, action: str | None, queue: str) -> None:
        if not self.allows(action, queue):
            needed = f"'{action}'" if action else "any"
            raise RequestError(ErrorCode.FORBIDDEN, f"principal {self.name!r} has no {needed} permission on queue "
                                                    f"{queue!r}; grant it in the node's [auth] config")


EVERYTHING = (("*", frozenset(ACTIONS)),)
ANONYMOUS = Identity("anonymous", EVERYTHING)
INTERNAL = Identity("cluster", EVERYTHING, internal=True)


def internal_token(secret: str | None) -> str | None:
    """The token nodes present to each other's client port, derived from the cluster secret."""
    if not secret:
        return None
    return hmac.new(secret.encode(), b"dmq node-to-node v1", hashlib.sha256).hexdigest()


class Authenticator:
    def __init__(self, principals: dict[str, Identity], *, anonymous: bool, secret: str | None) -> None:
        self._principals = principals  # token -> identity
        self._anonymous = anonymous
        self._internal = internal_token(secret)

    def identify(self, token: object) -> Identity:
        if token is None:
            if self._anonymous:
                return ANONYMOUS
            raise RequestError(ErrorCode.UNAUTHORIZED, "this node requires a token; pass token=... to the client")
        if not isinstance(token, str) or len(token) > 1024:
            raise RequestError(ErrorCode.UNAUTHORIZED, "a token is text of at most 1024 characters")
        if self._internal is not None and hmac.compare_digest(token.encode(), self._internal.encode()):
            return INTERNAL
        found = None
        for known, identity in self._principals.items():  # compare with every token: no early exit to time
            if hmac.compare_digest(token.encode(), known.encode()):
                found = identity
        if found is None:
            raise RequestError(ErrorCode.UNAUTHORIZED, "unknown token; check the token the client was given")
        return found
