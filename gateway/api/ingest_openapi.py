"""The ingest endpoints (:mod:`gateway.api.ingest`) in ``/openapi.json``: they are plain aiohttp handlers, not
framework operations, because each keeps the authentication and the answers its sender expects (OneNET's signature
and its plain-text echo, CTWing's shared token, an ``ingest`` token for vendors' gateways, and ``{"error", "detail"}``
bodies rather than problem documents).  Documenting them changes none of that: this module only describes it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, RootModel

from common.ids import ID_SCHEMA
from gateway.api.models import Model
from gateway.api.openapi import ExtraPaths
from gateway.ingest.contract import CHANNELS

TAG = "ingest"
PREFIX = "/api/v1/ingest"


class IngestAccepted(Model):
    accepted: int = Field(description="1: committed (durable) before this answer")


class IngestRejection(Model):
    reason: str = Field(description="the contract's rejection reason, as /api/v1/rejections lists it")
    detail: str


class IngestPlatformAccepted(Model):
    accepted: int = Field(description="messages of the push committed before this answer")
    rejected: list[IngestRejection] = Field(
        description="messages refused (counted and listed by /api/v1/rejections); the push is still acknowledged, "
        "since the platform would send them again unchanged"
    )


class IngestError(Model):
    error: str = Field(description="unauthorized, forbidden, not_found, bad_request, rejected or unavailable")
    detail: str
    reason: str | None = Field(default=None, description="with `rejected`: the contract's rejection reason")


class IngestPayload(RootModel[Any]):
    """The MQTT contract's payload for the channel (docs/telemetry.md): a telemetry or event object, or a status."""


class OneNetPush(Model):
    msg: Any = Field(description="the data point(s): an object, or (newer envelope) a string of JSON")
    nonce: str
    msg_signature: str | None = Field(default=None, description="base64(md5(token + nonce + msg))")
    signature: str | None = Field(default=None, description="the newer envelope's name of msg_signature")


MODELS = (IngestAccepted, IngestRejection, IngestPlatformAccepted, IngestError, IngestPayload, OneNetPush)


def _ref(model: type[Any]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    what = {
        400: "not JSON, or a query parameter missing",
        401: "no credentials, or unknown ones (counted as a bad_signature rejection)",
        403: "wrong signature or token, or a token that may not push for this building (counted)",
        404: "this integration is not configured, or an unknown channel",
        422: "rejected by the MQTT contract (the reason is in the body; counted and listed)",
        503: "not committed in ingest.commit_timeout_s, or the gateway is stopping: send it again",
    }
    return {str(code): _json(IngestError, what[code]) for code in codes}


def _operation(
    operation_id: str, summary: str, description: str, *, responses: dict[str, Any], **more: Any
) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": [TAG],
        "parameters": more.pop("parameters", []),
        "responses": responses,
        **more,
    }


def ingest_paths() -> ExtraPaths:
    """The path items of the four ingest operations."""
    plain = _operation(
        "ingest_push",
        "Push one message of the MQTT contract over HTTP (vendors' gateways)",
        "The body is what would be published on `firegrid/{building}/{device}/{channel}`; the answer comes after "
        "the group commit that makes it durable (the HTTP counterpart of PUBACK), with the same dedup, presence "
        "and rules as MQTT.\n\nNeeds a token of the `ingest` (or `admin`) role, limited to its buildings.",
        parameters=[
            {"name": "building", "in": "path", "required": True, "schema": dict(ID_SCHEMA)},
            {"name": "device", "in": "path", "required": True, "schema": dict(ID_SCHEMA)},
            {
                "name": "channel",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": list(CHANNELS)},
            },
        ],
        requestBody={
            "required": True,
            "content": {
                "application/json": {"schema": _ref(IngestPayload)},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        responses={"200": _json(IngestAccepted, "committed"), **_errors(401, 403, 404, 422, 503)},
        security=[{"bearer": []}],
        **{"x-firegrid-role": "ingest"},
    )
    onenet_verify = _operation(
        "ingest_onenet_verify",
        "OneNET HTTP push: the URL verification handshake",
        "OneNET checks the URL with `?msg&nonce&signature` (signature: base64(md5(token + nonce + msg)) with "
        "`ingest.onenet.token`); the answer is `msg` itself.  No bearer token: the signature authenticates.",
        parameters=[
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in ("msg", "nonce", "signature")
        ],
        responses={
            "200": {"description": "msg, echoed", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(400, 403, 404),
        },
        security=[],
    )
    onenet_push = _operation(
        "ingest_onenet_push",
        "OneNET HTTP push: signed data points",
        "The push's `msg_signature` (or `signature`) is checked against `ingest.onenet.token`; its data points are "
        "mapped to firegrid devices by OneNET device id or IMEI.  No bearer token: the signature authenticates.",
        requestBody={"required": True, "content": {"application/json": {"schema": _ref(OneNetPush)}}},
        responses={"200": _json(IngestPlatformAccepted, "committed"), **_errors(400, 401, 403, 404, 503)},
        security=[],
    )
    ctwing_push = _operation(
        "ingest_ctwing_push",
        "CTWing (AEP) subscription push: data, online/offline and event reports",
        "Authenticated by the shared `ingest.ctwing.token`, in the `token` query parameter or the "
        "`X-Firegrid-Token` header.  No bearer token.",
        parameters=[
            {"name": "token", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "X-Firegrid-Token", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        requestBody={"required": True, "content": {"application/json": {"schema": _ref(IngestPayload)}}},
        responses={"200": _json(IngestPlatformAccepted, "committed"), **_errors(401, 403, 404, 503)},
        security=[],
    )
    return ExtraPaths(
        tag=TAG,
        paths={
            PREFIX + "/onenet": {"get": onenet_verify, "post": onenet_push},
            PREFIX + "/ctwing": {"post": ctwing_push},
            PREFIX + "/{building}/{device}/{channel}": {"post": plain},
        },
        models=MODELS,
    )
