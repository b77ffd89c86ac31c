"""keyseed.server.admin_api
~~~~~~~~~~~~~~~~~~~~~~~~~~~

The admin API (the setup PC's side of 201/202, 208/209 and 401/402, and the cooking orders of
the microwave demo), under ``/v1/admin``,
token-protected (``Authorization: Bearer <token>``). FastAPI builds its OpenAPI document from
the typed routes below (``/openapi.json`` on the admin listener).

Every change of a device record is a compare-and-set through the store, retried a few times
if a device connection changed the record meanwhile, with its audit row in the same
transaction; then the device's live connection, if any, gets the new record. Errors are JSON
``{"error": <code name>, "detail": <text>}``: 401 ``unauthorized``, 404 ``unknown_device``,
409 ``conflict``/``device_exists``/``not_enrolled``/..., 422 ``validation_error``. No response
carries key material, setup codes or anything derived from them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ..apps.microwave import RecipeService
from ..crypto import ct_equal
from ..crypto.suites import DEFAULT_SUITE, SUITES
from ..protocol.admin import AdminError, confirm, order_rekey, register, revoke
from ..protocol.constants import WINDOW_DEFAULT
from ..protocol.errors import ErrorCode, NgCause
from ..protocol.events import AuditEntry
from ..protocol.policy import RekeyPolicy
from ..protocol.records import DeviceRecord
from ..storage.repository import AuditRow
from .apps import app_name, app_status
from .config import POLICY_MAX
from .pairs import pair_service
from .runtime import Runtime

log = logging.getLogger("keyseed.server.admin")

DEVICE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
#: Compare-and-set attempts of an admin change before it answers 409.
CAS_ATTEMPTS = 5


class ApiError(Exception):
    """An admin API error: HTTP status, a code name and a detail without secrets."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


# -- models ---------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="Error code name, e.g. unauthorized, unknown_device.")
    detail: Any = Field(description="What went wrong (never secrets).")


Limit = Annotated[int, Field(gt=0, le=POLICY_MAX, strict=True)]


class PolicyBody(BaseModel):
    """A rekey policy (sent to the device in 206): soft limits make it rekey by itself, hard
    limits stop its key from carrying application data. Needs 0 < soft <= hard."""

    model_config = ConfigDict(extra="forbid")

    soft_messages: Limit = Field(description="Messages under one key before a rekey.")
    hard_messages: Limit = Field(description="Messages under one key, at most.")
    soft_age_s: Limit = Field(description="Key age (seconds) before a rekey.")
    hard_age_s: Limit = Field(description="Key age (seconds), at most.")

    @classmethod
    def of(cls, policy: RekeyPolicy) -> PolicyBody:
        return cls(
            soft_messages=policy.soft_messages,
            hard_messages=policy.hard_messages,
            soft_age_s=policy.soft_age_s,
            hard_age_s=policy.hard_age_s,
        )

    def to_policy(self) -> RekeyPolicy:
        """Raises ApiError 422 when a soft limit is above its hard limit."""
        try:
            return RekeyPolicy(
                soft_messages=self.soft_messages,
                hard_messages=self.hard_messages,
                soft_age_s=self.soft_age_s,
                hard_age_s=self.hard_age_s,
            )
        except ValueError as exc:
            raise ApiError(422, "validation_error", f"policy: {exc}") from None


class RegisterRequest(BaseModel):
    """201: register a device and open its enrolment window."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="[A-Za-z0-9._-]{1,64}")
    suite: str = Field(default=DEFAULT_SUITE, description=f"One of {', '.join(SUITES)}.")
    setup_code: SecretStr | None = Field(
        default=None, description="The code printed on the device: 8 to 32 digits."
    )
    allow_no_code: bool = Field(
        default=False,
        description="Register without a setup code; the device stays unconfirmed until an "
        "admin compares its SAS (POST .../approve).",
    )
    window_s: float = Field(
        default=WINDOW_DEFAULT, gt=0, le=7 * 24 * 3600, description="Enrolment window length."
    )
    policy: PolicyBody | None = Field(
        default=None,
        description="The device's rekey policy; default: the server's (--policy-* settings).",
    )
    tls_reduced: bool = Field(
        default=False,
        description="Profile: over a wss:// connection (and if the device agrees), application "
        "data may travel authenticated-only by keyseed, encrypted by TLS.",
    )


class ProfileBody(BaseModel):
    """A device's profile as set (docs/protocol.md, "Profiles")."""

    suite: str = Field(description=f"PKE suite, one of {', '.join(SUITES)}.")
    policy: PolicyBody
    tls_reduced: bool = Field(description="TLS may reduce the keyseed layer (see register).")


class ProfileRequest(BaseModel):
    """Change a device's profile; what is left out stays. The change reaches the device in
    the 206 of its next exchange; a new suite is used from the 203 after that."""

    model_config = ConfigDict(extra="forbid")

    suite: str | None = Field(default=None, description=f"One of {', '.join(SUITES)}.")
    policy: PolicyBody | None = None
    tls_reduced: bool | None = None


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sas: SecretStr = Field(description="The 6-digit SAS the device shows.")


class AppView(BaseModel):
    """What the server app keeps of a device (the microwave's last status report)."""

    name: str = Field(description="The server app: microwave.")
    state: str | None = Field(description="idle, cooking, done; None before the first report.")
    recipe: str | None = Field(description="The recipe cooking or last cooked.")
    left_s: float | None = Field(description="Cooking seconds left, as last reported.")


class CookRequest(BaseModel):
    """Order the oven to cook a recipe (microwave demo)."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(min_length=1, max_length=64, description="A recipe name.")


class CookResult(BaseModel):
    """``pushed``: the order reached the online oven at once; otherwise it waits in the
    recipe service for the oven's next status report."""

    device_id: str
    recipe: str
    pushed: bool


class DeviceView(BaseModel):
    """A device as the admin sees it: state, never key material."""

    device_id: str
    suite: str
    epoch: int = Field(description="Epoch of the current key (0: none yet).")
    enrolled: bool = Field(description="The server holds a key for the device.")
    confirmed: bool = Field(description="Code-enrolled, or its SAS was compared by an admin.")
    revoked: bool
    online: bool = Field(description="An authenticated connection to this process is open.")
    key_age_s: float | None = Field(description="Age of the current key (database clock).")
    window_open: bool
    window_expires_at: float | None = Field(description="Database time, seconds since 1970.")
    window_failures: int
    code_required: bool | None = Field(description="Whether the open window needs the code.")
    pending_exchange: bool = Field(description="A 204 OK waits for its 205.")
    owed_206: bool = Field(description="The 206 of the current epoch is not acknowledged.")
    order_epoch: int | None = Field(description="Outstanding rekey order (epoch superseded).")
    policy: PolicyBody = Field(description="The rekey policy in force (sent in the last 206).")
    policy_next: PolicyBody | None = Field(
        description="A different policy set for the device, sent with its next 206."
    )
    suite_in_force: str = Field(
        description="The suite of the device's next 203 (``suite`` is its current key's)."
    )
    tls_reduced: bool = Field(description="The TLS setting in force (sent in the last 206).")
    profile: ProfileBody = Field(description="The profile as set; sent with the next 206.")
    app: AppView | None = Field(description="The server app's state of the device, if any.")
    version: int


class RekeyResult(BaseModel):
    """402: the order is stored; ``delivered`` says whether the 403 left at once."""

    device_id: str
    order_epoch: int
    delivered: bool
    already_ordered: bool


class ConfirmResult(BaseModel):
    """209."""

    device_id: str
    ok: bool
    rtt_ms: float | None
    epoch: int
    detail: str = Field(default="", description="offline, timeout, closed, not_open or empty.")


class AuditView(BaseModel):
    id: int
    at: float
    kind: str
    device_id: str
    epoch: int
    cause: str | None = Field(description="NgCause or ErrorCode name, None for success.")
    cause_code: int | None
    detail: str


class SuiteKey(BaseModel):
    suite: str
    public_key: str = Field(description="Wire bytes of the long-term public key, hex.")
    fingerprint: str = Field(description="SHA-256 fingerprint a device pins, hex.")


class _SasMismatch(Exception):
    """The SAS an admin typed is not the device key's."""


# -- helpers --------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="The admin token printed on first start.")


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Bearer-token auth; the token is compared as a hash, in constant time."""
    rt = runtime(request)
    if credentials is None or not rt.secrets.check_token(credentials.credentials):
        raise ApiError(401, "unauthorized", "missing or wrong admin token")


Rt = Annotated[Runtime, Depends(runtime)]
DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="The device ID.")]


def app_view(rt: Runtime, device_id: str) -> AppView | None:
    status = app_status(rt.app, device_id)
    if status is None:
        return None
    return AppView(name=app_name(rt.app), **status)


def device_view(rt: Runtime, rec: DeviceRecord, db_now: float) -> DeviceView:
    w = rec.window
    in_force = rec.policy_in_force
    return DeviceView(
        device_id=rec.device_id,
        suite=rec.suite,
        epoch=rec.epoch,
        enrolled=rec.key is not None,
        confirmed=rec.confirmed,
        revoked=rec.revoked,
        online=rec.device_id in rt.hub,
        key_age_s=None if rec.key is None else round(max(0.0, db_now - rec.key_created_at), 3),
        window_open=w is not None and w.expires_at > db_now,
        window_expires_at=None if w is None else w.expires_at,
        window_failures=0 if w is None else w.failures,
        code_required=None if w is None else w.code_required,
        pending_exchange=rec.pending is not None,
        owed_206=rec.owed_206,
        order_epoch=rec.order_epoch,
        policy=PolicyBody.of(in_force),
        policy_next=None if rec.policy == in_force else PolicyBody.of(rec.policy),
        suite_in_force=rec.suite_in_force,
        tls_reduced=rec.tls_reduced_in_force,
        profile=ProfileBody(
            suite=rec.profile_suite,
            policy=PolicyBody.of(rec.policy),
            tls_reduced=rec.tls_reduced,
        ),
        app=app_view(rt, rec.device_id),
        version=rec.version,
    )


def _cause_name(cause: int | None) -> str | None:
    if cause is None:
        return None
    for enum in (NgCause, ErrorCode):
        try:
            return enum(cause).name
        except ValueError:
            continue
    return str(cause)


def audit_view(row: AuditRow) -> AuditView:
    return AuditView(
        id=row.id,
        at=row.at,
        kind=row.kind,
        device_id=row.device_id,
        epoch=row.epoch,
        cause=_cause_name(row.cause),
        cause_code=row.cause,
        detail=row.detail,
    )


async def load_device(rt: Runtime, device_id: str) -> tuple[DeviceRecord, float]:
    rec, db_now = await rt.store.load(device_id)
    if rec is None:
        raise ApiError(404, "unknown_device", "no device with this ID is registered")
    return rec, db_now


async def update_device(
    rt: Runtime,
    device_id: str,
    change: Callable[[DeviceRecord], DeviceRecord],
    audit: Callable[[DeviceRecord], tuple[AuditEntry, ...]],
) -> tuple[DeviceRecord, DeviceRecord, float]:
    """Apply ``change`` as a compare-and-set, retried if a connection wrote meanwhile.

    Returns:
        (the record before, the record after, the database time). ``after is before`` when
        the change changed nothing (nothing was written).
    """
    for _ in range(CAS_ATTEMPTS):
        rec, db_now = await load_device(rt, device_id)
        try:
            new = change(rec)
        except AdminError as exc:
            raise ApiError(409, "not_allowed", str(exc)) from None
        if new is rec:
            return rec, rec, db_now
        if await rt.store.put(new, rec.version, audit(new)):
            return rec, new, db_now
    raise ApiError(409, "conflict", "the device record kept changing; try again")


# -- routes ---------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The request body is not valid JSON."},
    401: {"model": ErrorBody, "description": "Missing or wrong admin token."},
    422: {"model": ErrorBody, "description": "Validation error."},
}
_DEVICE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    404: {"model": ErrorBody, "description": "Unknown device."},
    409: {"model": ErrorBody, "description": "Not allowed in the device's state."},
}

router = APIRouter(prefix="/v1/admin", dependencies=[Depends(require_token)], tags=["admin"])


@router.post(
    "/devices",
    status_code=201,
    response_model=DeviceView,
    responses={**_ERRORS, 409: {"model": ErrorBody, "description": "Device exists."}},
    summary="201/202: register a device and open its enrolment window",
)
async def register_device(body: RegisterRequest, rt: Rt) -> DeviceView:
    code = None if body.setup_code is None else body.setup_code.get_secret_value()
    policy = rt.config.policy if body.policy is None else body.policy.to_policy()
    for _ in range(CAS_ATTEMPTS):
        existing, db_now = await rt.store.load(body.device_id)
        if existing is not None and not existing.revoked and existing.key is not None:
            raise ApiError(409, "device_exists", "device is enrolled; revoke it first")
        try:
            rec = register(
                existing,
                device_id=body.device_id,
                suite=body.suite,
                setup_code=code,
                window_s=body.window_s,
                db_now=db_now,
                entropy=os.urandom,
                allow_no_code=body.allow_no_code,
                policy=policy,
                tls_reduced=body.tls_reduced,
            )
        except AdminError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None
        if rec.suite not in rt.ctx.keys:
            raise ApiError(422, "validation_error", "suite is not enabled on this server")
        audit = (
            AuditEntry(
                kind="registered",
                device_id=rec.device_id,
                epoch=rec.epoch,
                detail=f"suite={rec.suite} code={'yes' if code else 'no'} "
                f"window={body.window_s:g}s policy={policy.soft_messages}/"
                f"{policy.hard_messages}/{policy.soft_age_s}s/{policy.hard_age_s}s"
                f"{' tls_reduced=yes' if body.tls_reduced else ''}",
            ),
        )
        ok = (
            await rt.store.insert(rec, audit)
            if existing is None
            else await rt.store.put(rec, existing.version, audit)
        )
        if ok:
            log.info("201 device=%s suite=%s", rec.device_id, rec.suite)
            await rt.hub.record_changed(rec, db_now)
            if existing is not None:
                # Re-registered: the device's pair keys die with its old enrolment.
                await pair_service(rt).close_device(rec.device_id, "re-registered")
            return device_view(rt, rec, db_now)
    raise ApiError(409, "conflict", "the device record kept changing; try again")


@router.get("/devices", response_model=list[DeviceView], responses=_ERRORS)
async def list_devices(rt: Rt) -> list[DeviceView]:
    db_now = await rt.store.db_now()
    return [device_view(rt, rec, db_now) for rec in await rt.store.list_devices()]


@router.get("/devices/{device_id}", response_model=DeviceView, responses=_DEVICE_ERRORS)
async def show_device(device_id: DeviceId, rt: Rt) -> DeviceView:
    rec, db_now = await load_device(rt, device_id)
    return device_view(rt, rec, db_now)


@router.post(
    "/devices/{device_id}/rekey",
    status_code=202,
    response_model=RekeyResult,
    responses=_DEVICE_ERRORS,
    summary="401/402: order a rekey by proxy (403 over the device's channel)",
)
async def rekey_device(device_id: DeviceId, rt: Rt) -> RekeyResult:
    before, rec, db_now = await update_device(
        rt,
        device_id,
        order_rekey,
        lambda new: (
            AuditEntry(
                kind="rekey_ordered", device_id=new.device_id, epoch=new.epoch, detail="401"
            ),
        ),
    )
    assert rec.order_epoch is not None
    delivered = await rt.hub.deliver_order(rec, db_now)
    log.info("402 device=%s order_epoch=%d live=%s", device_id, rec.order_epoch, delivered)
    return RekeyResult(
        device_id=device_id,
        order_epoch=rec.order_epoch,
        delivered=delivered,
        already_ordered=rec is before,
    )


@router.post(
    "/devices/{device_id}/confirm",
    response_model=ConfirmResult,
    responses=_DEVICE_ERRORS,
    summary="208/209: arrival confirmation (207 with the device)",
)
async def confirm_device(device_id: DeviceId, rt: Rt) -> ConfirmResult:
    rec, _ = await load_device(rt, device_id)
    if rec.revoked or rec.key is None:
        raise ApiError(409, "not_enrolled", "the device holds no key")
    result = await rt.hub.confirm(rec, rt.config.confirm_timeout)
    outcome = "ok" if result.ok else ("offline" if result.detail == "offline" else "failed")
    rt.metrics.confirmation(outcome)
    detail = f"rtt_ms={result.rtt_ms}" if result.ok else result.detail
    await rt.store.add_audit(
        [
            AuditEntry(
                kind="confirmed" if result.ok else "confirm_failed",
                device_id=device_id,
                epoch=result.epoch,
                detail=detail,
            )
        ]
    )
    return ConfirmResult(
        device_id=device_id,
        ok=result.ok,
        rtt_ms=result.rtt_ms,
        epoch=result.epoch,
        detail=result.detail,
    )


@router.post(
    "/devices/{device_id}/approve",
    response_model=DeviceView,
    responses=_DEVICE_ERRORS,
    summary="Confirm a device enrolled without a code, by its SAS",
)
async def approve_device(device_id: DeviceId, body: ApproveRequest, rt: Rt) -> DeviceView:
    sas = body.sas.get_secret_value().encode("utf-8", "surrogatepass")

    def change(rec: DeviceRecord) -> DeviceRecord:
        if rec.revoked or rec.key is None:
            raise AdminError("only an enrolled device can be approved")
        if not ct_equal(rec.key.sas().encode(), sas):
            raise _SasMismatch
        return confirm(rec)

    try:
        _, rec, db_now = await update_device(
            rt,
            device_id,
            change,
            lambda new: (AuditEntry(kind="approved", device_id=new.device_id, epoch=new.epoch),),
        )
    except _SasMismatch:
        await rt.store.add_audit(
            [AuditEntry(kind="approve_failed", device_id=device_id, epoch=0, detail="SAS")]
        )
        raise ApiError(409, "sas_mismatch", "the SAS does not match the device's key") from None
    await rt.hub.record_changed(rec, db_now)
    return device_view(rt, rec, db_now)


@router.post(
    "/devices/{device_id}/revoke",
    response_model=DeviceView,
    responses=_DEVICE_ERRORS,
    summary="Revoke a device: retire its keys and seeds, fence its connections",
)
async def revoke_device(device_id: DeviceId, rt: Rt) -> DeviceView:
    _, rec, db_now = await update_device(
        rt,
        device_id,
        lambda rec: rec if rec.revoked else revoke(rec),
        lambda new: (AuditEntry(kind="revoked", device_id=new.device_id, epoch=new.epoch),),
    )
    await rt.hub.record_changed(rec, db_now)
    await pair_service(rt).close_device(device_id, "revoked")
    log.info("revoked device=%s", device_id)
    return device_view(rt, rec, db_now)


@router.patch(
    "/devices/{device_id}/profile",
    response_model=DeviceView,
    responses=_DEVICE_ERRORS,
    summary="Change a device's profile (suite, rekey policy, TLS setting); sent in its next 206",
)
async def change_profile(device_id: DeviceId, body: ProfileRequest, rt: Rt) -> DeviceView:
    # Every check before the record is read: bad input changes nothing.
    if body.suite is None and body.policy is None and body.tls_reduced is None:
        raise ApiError(422, "validation_error", "give suite, policy or tls_reduced")
    if body.suite is not None:
        if body.suite not in SUITES:
            raise ApiError(422, "validation_error", f"suite must be one of {', '.join(SUITES)}")
        if body.suite not in rt.ctx.keys:
            raise ApiError(422, "validation_error", "suite is not enabled on this server")
    policy = None if body.policy is None else body.policy.to_policy()

    def change(rec: DeviceRecord) -> DeviceRecord:
        if rec.revoked:
            raise AdminError("the device is revoked; register it again with its profile")
        return rec.with_profile(suite=body.suite, policy=policy, tls_reduced=body.tls_reduced)

    def audit(new: DeviceRecord) -> tuple[AuditEntry, ...]:
        p = new.policy
        return (
            AuditEntry(
                kind="profile_changed",
                device_id=new.device_id,
                epoch=new.epoch,
                detail=f"suite={new.profile_suite} policy={p.soft_messages}/{p.hard_messages}/"
                f"{p.soft_age_s}s/{p.hard_age_s}s tls_reduced={'yes' if new.tls_reduced else 'no'}",
            ),
        )

    before, rec, db_now = await update_device(rt, device_id, change, audit)
    if rec is not before:
        await rt.hub.record_changed(rec, db_now)
        log.info("profile device=%s suite=%s", device_id, rec.profile_suite)
    return device_view(rt, rec, db_now)


def _recipe_service(rt: Runtime) -> RecipeService:
    if not isinstance(rt.app, RecipeService):
        raise ApiError(409, "no_recipe_service", "the server app is not the recipe service")
    return rt.app


@router.post(
    "/devices/{device_id}/cook",
    status_code=202,
    response_model=CookResult,
    responses={
        **_DEVICE_ERRORS,
        409: {"model": ErrorBody, "description": "Not the microwave app, or device revoked."},
        422: {"model": ErrorBody, "description": "Unknown recipe or bad body."},
    },
    summary="Microwave demo: order the oven to cook a recipe",
)
async def cook_device(device_id: DeviceId, body: CookRequest, rt: Rt) -> CookResult:
    rec, _ = await load_device(rt, device_id)
    service = _recipe_service(rt)
    if rec.revoked:
        raise ApiError(409, "not_allowed", "the device is revoked")
    try:
        pushed = await service.order_cook(device_id, body.recipe)
    except KeyError:
        raise ApiError(422, "unknown_recipe", "no recipe with this name") from None
    await rt.store.add_audit(
        [
            AuditEntry(
                kind="cook_ordered",
                device_id=device_id,
                epoch=rec.epoch,
                detail=f"recipe={body.recipe} pushed={'yes' if pushed else 'no'}",
            )
        ]
    )
    log.info("cook device=%s recipe=%s pushed=%s", device_id, body.recipe, pushed)
    return CookResult(device_id=device_id, recipe=body.recipe, pushed=pushed)


@router.get(
    "/devices/{device_id}/app",
    response_model=AppView,
    responses=_DEVICE_ERRORS,
    summary="The server app's state of the device (the oven's last status report)",
)
async def device_app_state(device_id: DeviceId, rt: Rt) -> AppView:
    await load_device(rt, device_id)
    _recipe_service(rt)
    view = app_view(rt, device_id)
    assert view is not None
    return view


@router.get("/audit", response_model=list[AuditView], responses=_ERRORS)
async def read_audit(
    rt: Rt,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1)] = None,
) -> list[AuditView]:
    """The audit log, newest first; page with ``before_id`` = the last id seen."""
    rows = await rt.store.audit(device_id=device_id, limit=limit, before_id=before_id)
    return [audit_view(r) for r in rows]


@router.get("/keys", response_model=list[SuiteKey], responses=_ERRORS)
async def server_keys(rt: Rt) -> list[SuiteKey]:
    """The long-term public keys and the fingerprints devices pin."""
    return public_keys(rt)


def public_keys(rt: Runtime) -> list[SuiteKey]:
    """One entry per enabled suite (also served, without a token, as ``GET /v1/keys`` on
    the device listener)."""
    return [
        SuiteKey(
            suite=name,
            public_key=key.public_key.raw.hex(),
            fingerprint=key.public_key.fingerprint.hex(),
        )
        for name, key in rt.secrets.keys.items()
    ]


__all__ = ["ApiError", "public_keys", "router"]
