"""The exceptions of longrun: one base class, one subclass per kind of the Rust core's
``ErrorKind``, mapped by the one table ``KINDS``. The native module raises through
``from_native``; nothing else decides which exception an error is."""

from __future__ import annotations

from typing import Any, Dict, Optional, Type


class Error(Exception):
    """Base class of every error the client raises.

    ``kind`` is the core's ``ErrorKind`` name; ``status`` the HTTP status behind the error
    (or None); ``problem`` the server's RFC 9457 problem details as a dict (or None);
    ``value`` the terminal event's value for ``RunFailed`` and ``Canceled`` (or None).
    """

    kind: str = ""

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        problem: Optional[Dict[str, Any]] = None,
        value: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.problem = problem
        self.value = value


class NotFound(Error):
    """The object or run does not exist (404)."""

    kind = "NotFound"


class Gone(Error):
    """The run existed but the server no longer keeps it (410)."""

    kind = "Gone"


class Canceled(Error):
    """The run ended ``canceled``; ``value`` is ``{"reason": ...}``."""

    kind = "Canceled"


RunCanceled = Canceled


class RunFailed(Error):
    """The run ended ``error``; ``value`` is the error event's value."""

    kind = "RunFailed"


class Timeout(Error, TimeoutError):
    """A client-side time limit passed. The run itself goes on (cancel it to stop it)."""

    kind = "Timeout"


class Protocol(Error):
    """The server answered something longrun/1 does not allow."""

    kind = "Protocol"


class Transport(Error, ConnectionError):
    """The network failed and reconnecting did not help."""

    kind = "Transport"


class InvalidArgument(Error, ValueError):
    """The request was refused as invalid (400, 413, 415, 422), or a bad argument was given
    to the client itself."""

    kind = "InvalidArgument"


class Server(Error):
    """The server failed or refused for its own reasons (5xx)."""

    kind = "Server"


class Unauthorized(Error, PermissionError):
    """The server needs a token and got none it knows (401): pass ``token=``."""

    kind = "Unauthorized"


class Forbidden(Error, PermissionError):
    """The token does not allow this (403): it lacks the scope for this verb or object."""

    kind = "Forbidden"


class WebhookRejected(Error):
    """A response hook's delivery failed ``verify_webhook``: a header is missing, its
    timestamp is outside the tolerance, or no signature matches (another secret, or the body
    was changed). Answer it with a 4xx and do not act on it."""

    kind = "WebhookRejected"


#: The one table: ``ErrorKind`` name -> exception class.
KINDS: Dict[str, Type[Error]] = {
    cls.kind: cls
    for cls in (
        NotFound,
        Gone,
        Canceled,
        RunFailed,
        Timeout,
        Protocol,
        Transport,
        InvalidArgument,
        Server,
        Unauthorized,
        Forbidden,
        WebhookRejected,
    )
}


def from_native(
    kind: str,
    message: str,
    status: Optional[int],
    problem: Optional[Dict[str, Any]],
    value: Any,
) -> Error:
    """Called by the native module to build the exception of a core error."""
    cls = KINDS.get(kind, Error)
    return cls(message, status=status, problem=problem, value=value)
