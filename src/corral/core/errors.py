"""The one error tree of Corral's domain.

Services raise these; the API maps each class to an HTTP status in one place
(`corral.server.api.errors`), and the client maps the status back to the same class,
so the CLI and the agent handle the same exceptions the server raised.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base of every error Corral raises on purpose. ``str(err)`` is one clear line."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class InvalidRequest(CorralError):
    """The request is malformed or asks for something impossible. Nothing was changed."""

    code = "invalid"
    http_status = 422


class NotFound(CorralError):
    """The named thing does not exist (or the caller may not know it does)."""

    code = "not_found"
    http_status = 404


class AlreadyExists(CorralError):
    """A thing with that name exists already."""

    code = "already_exists"
    http_status = 409


class Conflict(CorralError):
    """The request is valid but the current state does not allow it."""

    code = "conflict"
    http_status = 409


class Unauthorized(CorralError):
    """No token, or a token the server does not know."""

    code = "unauthorized"
    http_status = 401


class Forbidden(CorralError):
    """The caller is known but may not do this."""

    code = "forbidden"
    http_status = 403


class PayloadTooLarge(CorralError):
    """The request body is larger than the server accepts."""

    code = "too_large"
    http_status = 413


class Unavailable(CorralError):
    """The server cannot be reached or is not answering (client side only)."""

    code = "unavailable"
    http_status = 503


ERRORS_BY_CODE: dict[str, type[CorralError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        NotFound,
        AlreadyExists,
        Conflict,
        Unauthorized,
        Forbidden,
        PayloadTooLarge,
        Unavailable,
    )
}
