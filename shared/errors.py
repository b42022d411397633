"""Typed errors that every layer raises and the menus turn into clear messages.

Each error carries a one-line ``hint`` that tells a person what to do next; the menus and
subcommands print ``str(error)`` followed by the hint and exit non-zero, never a traceback.
"""

from __future__ import annotations


class FLError(Exception):
    """Base of every error this project raises on purpose."""

    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint if hint is not None else self.default_hint


class ConfigError(FLError):
    """A settings file or environment override is missing, malformed or out of range."""

    default_hint = "Check the TOML file named by FL_CONFIG and the FL_* environment variables."


class UsageError(FLError):
    """An option or argument value that cannot work (a negative count, shares above 100%)."""

    default_hint = "Run the command with --help to see the accepted values."


class DatasetError(FLError):
    """A dataset folder does not have the expected ``<root>/<class>/*.jpg`` layout."""

    default_hint = (
        "Point at a folder with one sub-folder per class: glioma, meningioma, notumor, pituitary."
    )


class TargetNotEmptyError(FLError):
    """A command would overwrite files in a folder that already holds some."""

    default_hint = "Choose an empty folder or pass --force to replace its contents."


class StoreError(FLError):
    """The version store or request queue refused an operation."""


class StorageWriteError(StoreError):
    """A file could not be written: disk full, quota or file-size limit, permissions."""

    default_hint = "Free disk space (or raise the quota) where the store keeps its files, then retry."


class HeadMovedError(StoreError):
    """A session's result was built on a head version that is no longer the head."""

    default_hint = "Merge the result into the new head and commit again (server.sessions.merge)."


class IllegalTransitionError(StoreError):
    """A state change that the request/session life cycle does not allow."""


class NotFoundError(StoreError):
    """A request, session, site or version that does not exist."""


class DuplicateError(StoreError):
    """Something with that name or number already exists."""


class ReadOnlyStoreError(StoreError):
    """A write was attempted on a store opened read-only (the analysts' view)."""

    default_hint = "Open the store without readonly=True to change it."


class IntegrityError(StoreError):
    """A file or record does not match its recorded checksum or hash chain."""

    default_hint = "The file may be corrupt or tampered with; restore it from a backup."


class AuthError(FLError):
    """Unknown site, wrong token or missing session secret."""

    default_hint = "Check the site name and the enrolment token the admin gave you."


class ProtocolError(FLError):
    """A malformed, oversized or schema-violating frame on the request socket."""


class ConnectionProblem(FLError):
    """The server cannot be reached or the connection dropped."""

    default_hint = "Check that the server is running and the host and port are right."


class PrivacyBudgetExceeded(FLError):
    """A training run would spend more privacy than the site's budget allows."""

    default_hint = "Ask for a larger epsilon budget, fewer rounds or more noise."


class FramingError(ProtocolError):
    """The byte stream can no longer be split into frames (truncated or oversized frame).

    Unlike a malformed frame, the connection cannot be reused: both sides close it.
    """


class FrameTooLarge(FramingError):
    """A frame's length header is above the size cap; its body is never read."""

    default_hint = "Send smaller messages; downloads are already split into chunks under the cap."


class ServerBusy(ConnectionProblem):
    """The request socket is at its connection cap, or a connection or site exceeded its rate."""

    default_hint = "Too many open connections to the server; try again in a few seconds."


class ServerFault(FLError):
    """The server hit an unexpected error while answering; the details are in its log."""

    default_hint = "Try again; if it persists, ask the admin to check the server log."


class RequestNotApproved(FLError):
    """A training request ended rejected, cancelled or failed instead of being approved."""

    default_hint = "Check the reason, adjust the request and send a new one."


class SessionFailedError(FLError):
    """A training session cannot go on: sites missing, too few valid updates, a dead process."""

    default_hint = "The sites' requests can be re-queued once the cause is fixed."
