"""The gateway's error tree and the one table mapping every domain error to each protocol.

::

    TelgateError (code)                       HTTP  exit  SFTP
    ├── BadRequestError          bad_request   400    65   failure
    │   └── UnsupportedMediaError              415    65   failure
    ├── PayloadTooLargeError                   413    65   failure
    ├── AuthenticationError      unauthenticated 401  77   permission denied
    ├── PermissionDeniedError    forbidden     403    77   permission denied
    ├── NotFoundError            not_found     404    66   no such file
    ├── ConflictError            conflict      409    65   failure
    ├── RateLimitedError         rate_limited  429    69   permission denied
    ├── OverloadedError          overloaded    503    69   failure
    ├── BackendUnavailableError  backend_unavailable 503 69 failure
    └── ConfigError              config        500    78   failure

``gateway.access`` adds ``GrantExpiredError`` and ``GrantUsedError`` (``access.grant_*``, 410).
``ingest`` and ``vault`` keep their own trees (``IngestError``, ``VaultError``); ``describe`` maps
them here by their ``code`` so that no other module needs to know protocol status codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

# Exit codes fixed by INTERFACE.md.
EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_BAD_INPUT: Final = 65
EXIT_NOT_FOUND: Final = 66
EXIT_UNAVAILABLE: Final = 69
EXIT_PERMISSION: Final = 77
EXIT_CONFIG: Final = 78

# SFTP status codes (draft-ietf-secsh-filexfer-02), as paramiko names them.
SFTP_FAILURE: Final = 4
SFTP_NO_SUCH_FILE: Final = 2
SFTP_PERMISSION_DENIED: Final = 3


class TelgateError(Exception):
    """Base of the gateway's errors; ``code`` is stable and documented in docs/errors.md."""

    code = "internal"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class BadRequestError(TelgateError):
    """The request or command is malformed."""

    code = "bad_request"


class UnsupportedMediaError(BadRequestError):
    """The body's content type is not one this endpoint accepts."""

    code = "unsupported_media_type"


class PayloadTooLargeError(TelgateError):
    """The body exceeds the configured size limit."""

    code = "payload_too_large"


class AuthenticationError(TelgateError):
    """Missing or invalid credentials; the message never says which part was wrong."""

    code = "unauthenticated"

    def __init__(self, message: str = "authentication required", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class PermissionDeniedError(TelgateError):
    """The authenticated principal's role does not allow this action."""

    code = "forbidden"


class NotFoundError(TelgateError):
    """The named object does not exist (or is not visible to the caller)."""

    code = "not_found"


class ConflictError(TelgateError):
    """The action conflicts with the current state (duplicate name, already decided, ...)."""

    code = "conflict"


class RateLimitedError(TelgateError):
    """Too many failures from one source; retry after ``retry_after`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class OverloadedError(TelgateError):
    """The gateway sheds load; the client should retry after ``retry_after`` seconds."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BackendUnavailableError(TelgateError):
    """A backend (database, lake, key provider) failed; the detail goes to the log only."""

    code = "backend_unavailable"


class ConfigError(TelgateError):
    """Settings are invalid or a configured backend cannot be used."""

    code = "config"


@dataclass(frozen=True, slots=True)
class ErrorMapping:
    """How one error code shows in each protocol."""

    http_status: int
    exit_code: int
    sftp_status: int


ERROR_TABLE: Final[dict[str, ErrorMapping]] = {
    "internal": ErrorMapping(500, 1, SFTP_FAILURE),
    "bad_request": ErrorMapping(400, EXIT_BAD_INPUT, SFTP_FAILURE),
    "unsupported_media_type": ErrorMapping(415, EXIT_BAD_INPUT, SFTP_FAILURE),
    "payload_too_large": ErrorMapping(413, EXIT_BAD_INPUT, SFTP_FAILURE),
    "unauthenticated": ErrorMapping(401, EXIT_PERMISSION, SFTP_PERMISSION_DENIED),
    "forbidden": ErrorMapping(403, EXIT_PERMISSION, SFTP_PERMISSION_DENIED),
    "not_found": ErrorMapping(404, EXIT_NOT_FOUND, SFTP_NO_SUCH_FILE),
    "conflict": ErrorMapping(409, EXIT_BAD_INPUT, SFTP_FAILURE),
    "rate_limited": ErrorMapping(429, EXIT_UNAVAILABLE, SFTP_PERMISSION_DENIED),
    "overloaded": ErrorMapping(503, EXIT_UNAVAILABLE, SFTP_FAILURE),
    "backend_unavailable": ErrorMapping(503, EXIT_UNAVAILABLE, SFTP_FAILURE),
    "config": ErrorMapping(500, EXIT_CONFIG, SFTP_FAILURE),
    # ingest's tree
    "ingest.unparseable": ErrorMapping(400, EXIT_BAD_INPUT, SFTP_FAILURE),
    "ingest.unsupported_media_type": ErrorMapping(415, EXIT_BAD_INPUT, SFTP_FAILURE),
    "ingest.record_rejected": ErrorMapping(422, EXIT_BAD_INPUT, SFTP_FAILURE),
    "ingest.lake_unavailable": ErrorMapping(503, EXIT_UNAVAILABLE, SFTP_FAILURE),
    # vault's tree
    "vault.corrupt": ErrorMapping(500, 1, SFTP_FAILURE),
    "vault.unsupported_version": ErrorMapping(500, 1, SFTP_FAILURE),
    "vault.key_not_found": ErrorMapping(500, 1, SFTP_FAILURE),
    "vault.keyring": ErrorMapping(500, EXIT_CONFIG, SFTP_FAILURE),
    "vault.blob_not_found": ErrorMapping(404, EXIT_NOT_FOUND, SFTP_NO_SUCH_FILE),
    "vault.recording_not_found": ErrorMapping(404, EXIT_NOT_FOUND, SFTP_NO_SUCH_FILE),
    "vault.recording_shredded": ErrorMapping(404, EXIT_NOT_FOUND, SFTP_NO_SUCH_FILE),
    "vault.recording_conflict": ErrorMapping(409, EXIT_BAD_INPUT, SFTP_FAILURE),
    "vault.recording_too_large": ErrorMapping(413, EXIT_BAD_INPUT, SFTP_FAILURE),
    "vault.key_in_use": ErrorMapping(409, EXIT_BAD_INPUT, SFTP_FAILURE),
    "vault.blob_exists": ErrorMapping(409, EXIT_BAD_INPUT, SFTP_FAILURE),
    # gateway.access (410 Gone: the grant existed and is over; ask again)
    "access.grant_expired": ErrorMapping(410, EXIT_PERMISSION, SFTP_PERMISSION_DENIED),
    "access.grant_used": ErrorMapping(410, EXIT_PERMISSION, SFTP_PERMISSION_DENIED),
}


def error_code(exc: BaseException) -> str:
    """The stable code of any telgate error (from any package), ``internal`` for anything else."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code in ERROR_TABLE else "internal"


def describe(exc: BaseException) -> ErrorMapping:
    """Look up how ``exc`` shows over HTTP, as a CLI exit code and as an SFTP status."""
    return ERROR_TABLE[error_code(exc)]


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one JSON error shape of every HTTP endpoint: ``{error: {code, message, details}}``."""
    return {"error": {"code": code, "message": message, "details": details or {}}}
