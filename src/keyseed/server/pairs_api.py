"""keyseed.server.pairs_api
~~~~~~~~~~~~~~~~~~~~~~~~~~

The admin API of pair keys, under ``/v1/admin`` with the admin token like the rest of it
(:mod:`keyseed.server.admin_api`):

* ``GET  /v1/admin/pairs``: every pair the admin named or that asked for a key;
* ``POST /v1/admin/pairs/allow`` ``{"a": ..., "b": ...}``: allow-pair (unordered);
* ``POST /v1/admin/pairs/deny``  ``{"a": ..., "b": ...}``: deny-pair, which also closes the
  live pair (both devices get 505 CLOSED).

Every change is audited on both devices. No view carries key material: the pair ID is public
(it travels in every pair message) and is shown in hex.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..protocol.pair import pair_key_of
from ..storage.repository import PairRow
from .admin_api import _ERRORS, DEVICE_ID_PATTERN, ApiError, require_token, runtime
from .pairs import pair_service
from .runtime import Runtime

Rt = Annotated[Runtime, Depends(runtime)]
PairMember = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, description="A device ID.")]


class PairBody(BaseModel):
    """An unordered pair of device IDs."""

    model_config = ConfigDict(extra="forbid")

    a: PairMember
    b: PairMember


class PairView(BaseModel):
    a: str = Field(description="The lower device ID of the pair.")
    b: str = Field(description="The higher device ID of the pair.")
    allowed: bool = Field(description="Whether allow-pair holds (deny-pair clears it).")
    status: str = Field(description="none, offered, established or closed.")
    mode: str | None = Field(description="relay or e2e (None: never asked for a key).")
    epoch: int = Field(description="The pair epoch (0: never asked for a key).")
    pair_id: str | None = Field(description="The current chain's pair ID, hex (public).")
    initiator: str | None
    responder: str | None
    chained: bool = Field(description="Whether this epoch's key chains to the previous seed.")
    online_a: bool
    online_b: bool
    updated_at: float = Field(description="Database clock of the latest change.")


def pair_view(rt: Runtime, row: PairRow) -> PairView:
    rec = row.record
    return PairView(
        a=row.lo,
        b=row.hi,
        allowed=bool(row.allowed),
        status="none" if rec is None else rec.status.value,
        mode=None if rec is None else rec.mode,
        epoch=0 if rec is None else rec.epoch,
        pair_id=None if rec is None else rec.pair_id.hex(),
        initiator=None if rec is None else rec.initiator,
        responder=None if rec is None else rec.responder,
        chained=False if rec is None else rec.chained,
        online_a=row.lo in rt.hub,
        online_b=row.hi in rt.hub,
        updated_at=row.updated_at,
    )


router = APIRouter(prefix="/v1/admin", dependencies=[Depends(require_token)], tags=["pairs"])


@router.get("/pairs", response_model=list[PairView], responses=_ERRORS)
async def list_pairs(rt: Rt) -> list[PairView]:
    return [pair_view(rt, row) for row in await pair_service(rt).list_pairs()]


async def _set(rt: Runtime, body: PairBody, *, allowed: bool) -> PairView:
    if body.a == body.b:
        raise ApiError(422, "validation_error", "a device does not pair with itself")
    await pair_service(rt).set_policy(body.a, body.b, allowed=allowed)
    lo, hi = pair_key_of(body.a, body.b)
    for row in await pair_service(rt).list_pairs():
        if (row.lo, row.hi) == (lo, hi):
            return pair_view(rt, row)
    raise ApiError(409, "conflict", "the pair changed meanwhile; try again")  # pragma: no cover


@router.post(
    "/pairs/allow",
    response_model=PairView,
    responses=_ERRORS,
    summary="allow-pair: the two devices may obtain a pair key",
)
async def allow_pair(body: PairBody, rt: Rt) -> PairView:
    return await _set(rt, body, allowed=True)


@router.post(
    "/pairs/deny",
    response_model=PairView,
    responses=_ERRORS,
    summary="deny-pair: revoke the permission and close the live pair",
)
async def deny_pair(body: PairBody, rt: Rt) -> PairView:
    return await _set(rt, body, allowed=False)


__all__ = ["PairBody", "PairView", "pair_view", "router"]
