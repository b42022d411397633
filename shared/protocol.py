"""The request-socket wire protocol: one schema for every message and reply (frames: ``framing``).

Server and clients both import this module, so a field can only change in one place.
Requests are strict (unknown fields, wrong types and out-of-range values
are refused); results are parsed leniently on the client so a newer server can add fields.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from shared.errors import ProtocolError
from shared.plain_text import strip_control

ErrorCode = Literal[
    "auth", "protocol", "too_large", "not_found", "illegal", "refused", "rate_limited", "internal"
]
MessageId = Union[
    Annotated[str, StringConstraints(min_length=1, max_length=64)],
    Annotated[int, Field(ge=0, le=2**53)],
]
#: The store's rule for site names (server.store.sites.SITE_NAME), repeated so shared/ imports no server code.
SiteName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Token = Annotated[str, StringConstraints(min_length=1, max_length=512)]
RequestId = Annotated[int, Field(ge=1, le=2**31)]
VersionNumber = Annotated[int, Field(ge=0, le=2**31)]
#: The DP-SGD engines a site may train with (``client.training.dp_engines``), the default first.
DpEngine = Literal["dp-model", "keras-optimizer"]
DP_ENGINES: tuple[str, ...] = get_args(DpEngine)
DEFAULT_DP_ENGINE: DpEngine = "dp-model"

_REQUEST_REF = re.compile(r"(?:REQ-)?([1-9][0-9]{0,9})", re.IGNORECASE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DpSpec(_Strict):
    """Differential-privacy parameters of a request: a target epsilon or a noise multiplier.

    ``noise_multiplier: 0`` asks for training *without* DP (clipping only, no finite epsilon); the
    site's own client refuses it unless its profile explicitly opts out of a budget (``allow_no_dp``).
    """

    target_epsilon: Annotated[float, Field(gt=0, le=1000)] | None = None
    noise_multiplier: Annotated[float, Field(ge=0, le=100)] | None = None
    delta: Annotated[float, Field(gt=0, le=1e-2)]
    l2_norm_clip: Annotated[float, Field(gt=0, le=1e4)]
    #: Which engine trains it; both keep the same clip, noise, sampling and accounting.
    engine: DpEngine = DEFAULT_DP_ENGINE

    @model_validator(mode="after")
    def _exactly_one_noise_source(self) -> DpSpec:
        """The client derives noise from a target epsilon, or takes the multiplier as given."""
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of target_epsilon and noise_multiplier")
        return self


class DataDeclaration(_Strict):
    """What the server plans a site's privacy with; nothing here is data-dependent beyond ``examples``.

    ``examples`` is the site's training-image count, exact when the site declared it public
    (``exact``) and otherwise rounded up to a bucket (``shared.privacy_accounting.bucket_examples``).
    The server derives the sampling rate, steps and (for a target epsilon) the noise from it, so
    none of them reveals more than it. ``budget_*`` is the site's own budget (the server enforces
    the lower of it and the enrolment budget); ``slices_per_patient`` is the declared k of the
    patient-level views.
    """

    examples: Annotated[int, Field(ge=1, le=10**9)]
    exact: bool = False
    budget_epsilon: Annotated[float, Field(gt=0, le=1000)]
    budget_delta: Annotated[float, Field(gt=0, le=1e-2)]
    slices_per_patient: Annotated[int, Field(ge=1, le=10_000)] | None = None


class _Message(_Strict):
    """Fields every request carries: correlation id and the site's credentials."""

    id: MessageId
    site: SiteName
    token: Token


class SubmitRequest(_Message):
    type: Literal["submit_request"]
    rounds: Annotated[int, Field(ge=1, le=1000)]
    local_epochs: Annotated[int, Field(ge=1, le=100)]
    dp: DpSpec
    #: Free text for the admin: control and invisible format characters are stripped on arrival.
    note: Annotated[str, StringConstraints(max_length=500), AfterValidator(strip_control)] = ""
    #: Needed before the admin can approve (the server plans the DP schedule from it).
    declaration: DataDeclaration | None = None


class RequestStatus(_Message):
    type: Literal["request_status"]
    request_id: RequestId


class ListRequests(_Message):
    type: Literal["list_requests"]


class CancelRequest(_Message):
    type: Literal["cancel_request"]
    request_id: RequestId


class ListNotifications(_Message):
    type: Literal["list_notifications"]
    unread_only: bool = False


class Acknowledge(_Message):
    type: Literal["acknowledge"]
    notification_ids: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=1000)]


class ListVersions(_Message):
    type: Literal["list_versions"]


class DownloadVersion(_Message):
    type: Literal["download_version"]
    version: VersionNumber
    chunk: Annotated[int, Field(ge=0, le=2**31)] = 0


class AcknowledgeUpdate(_Message):
    type: Literal["acknowledge_update"]
    version: VersionNumber


class SessionTicketRequest(_Message):
    type: Literal["session_ticket"]
    request_id: RequestId


class RegisterIdentityKey(_Message):
    """A site's Ed25519 identity public key (base64 of the raw 32 bytes), for secure aggregation."""

    type: Literal["register_identity_key"]
    public_key: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{43}=$")]


Message = Annotated[
    Union[
        SubmitRequest,
        RequestStatus,
        ListRequests,
        CancelRequest,
        ListNotifications,
        Acknowledge,
        ListVersions,
        DownloadVersion,
        AcknowledgeUpdate,
        SessionTicketRequest,
        RegisterIdentityKey,
    ],
    Field(discriminator="type"),
]
MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)


# ----------------------------------------------------------------------------- results


class _Result(BaseModel):
    """Server-built results; the client ignores fields it does not know yet."""

    model_config = ConfigDict(extra="ignore", from_attributes=True, frozen=True)


class RequestView(_Result):
    id: int
    label: str
    site: str
    state: str
    rounds: int
    local_epochs: int
    dp: dict[str, Any]
    note: str
    created_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str = ""
    session_id: int | None = None
    declaration: dict[str, Any] = {}


class RequestList(_Result):
    requests: list[RequestView]


class NotificationView(_Result):
    id: int
    kind: str
    message: str
    payload: dict[str, Any]
    created_at: datetime
    read_at: datetime | None = None


class NotificationList(_Result):
    notifications: list[NotificationView]


class Acknowledged(_Result):
    acknowledged: int


class VersionView(_Result):
    """A version as a site sees it: aggregates only. ``participants`` names at most the viewing site
    itself, ``dp_summary`` holds only its own entry, ``sites`` is how many took part; no server paths."""

    number: int
    label: str
    kind: str
    parents: list[int]
    participants: list[str]
    sites: int = 0
    rounds: int
    metrics: dict[str, Any]
    dp_summary: dict[str, Any]
    sha256: str
    size_bytes: int
    created_at: datetime
    note: str = ""
    has_weights: bool = True
    model: dict[str, Any] = {}  # the model spec the site rebuilds the full classifier from


class VersionList(_Result):
    versions: list[VersionView]


class DownloadChunk(_Result):
    """One slice of a version file; ``sha256`` is the whole file's, as recorded in the store."""

    version: int
    chunk: int
    total_chunks: int
    total_size: int
    sha256: str
    chunk_sha256: str
    data: str  # base64


class UpdateAccepted(_Result):
    version: int
    recorded: bool


class SessionTicket(_Result):
    """How an approved site joins its Flower session; ``port`` is None while it is starting."""

    request_id: int
    session_id: int
    session_state: str
    host: str
    port: int | None
    secret: str
    config: dict[str, Any]
    #: Every participant of the session (this site too) with its registered identity key (base64):
    #: the only sites this site masks with in secure aggregation, and the keys their keys must be signed by.
    peers: dict[str, str] = {}


class IdentityKeyRegistered(_Result):
    fingerprint: str
    newly_registered: bool


#: The result model of each message type: the server builds it, the client parses it.
RESULT_MODELS: dict[str, type[_Result]] = {
    "submit_request": RequestView,
    "request_status": RequestView,
    "list_requests": RequestList,
    "cancel_request": RequestView,
    "list_notifications": NotificationList,
    "acknowledge": Acknowledged,
    "list_versions": VersionList,
    "download_version": DownloadChunk,
    "acknowledge_update": UpdateAccepted,
    "session_ticket": SessionTicket,
    "register_identity_key": IdentityKeyRegistered,
}


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    code: ErrorCode
    message: str
    hint: str = ""


def result_json(result: BaseModel) -> bytes:
    """A result serialised once, so the server can keep it and answer several ids with it."""
    return result.model_dump_json().encode()


def error_reply(message_id: Any, code: ErrorCode, message: str, hint: str = "") -> dict[str, Any]:
    """The reply to a message that failed; ``message_id`` is None when it could not be read."""
    return {"id": message_id, "ok": False, "error": {"code": code, "message": message, "hint": hint}}


def parse_message(obj: dict[str, Any]) -> Message:
    """Validate a decoded frame against the message schema, naming each problem."""
    try:
        return MESSAGE_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(f"invalid message: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """A short, one-line summary of a pydantic ValidationError that never echoes the input."""
    problems = [_describe_problem(err) for err in exc.errors(include_input=False, include_url=False)[:limit]]
    extra = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {extra} more)" if extra > 0 else "")


def _describe_problem(err: Any) -> str:
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):  # their text quotes the input
        return f"type: must be one of {', '.join(RESULT_MODELS)}"
    where = ".".join(str(part) for part in err["loc"]) or "message"
    return f"{where}: {err['msg'][:200]}"


def message_id_of(obj: Any) -> Any:
    """The correlation id of a frame that failed validation, if it has a usable one."""
    if not isinstance(obj, dict):
        return None
    candidate = obj.get("id")
    if isinstance(candidate, str) and 0 < len(candidate) <= 64:
        return candidate
    if isinstance(candidate, int) and not isinstance(candidate, bool) and 0 <= candidate <= 2**53:
        return candidate
    return None


def parse_request_ref(ref: str | int) -> int:
    """Turn ``"REQ-3"``, ``"3"`` or ``3`` into the request id the wire carries."""
    if isinstance(ref, int) and not isinstance(ref, bool) and ref >= 1:
        return ref
    match = _REQUEST_REF.fullmatch(str(ref).strip())
    if match is None:
        raise ProtocolError(
            f"{ref!r} is not a request reference", hint="Use the label the server gave, e.g. REQ-3."
        )
    return int(match.group(1))
