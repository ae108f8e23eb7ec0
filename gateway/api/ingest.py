"""HTTP ingest: other vendors' gateways and the carriers' IoT platforms push telemetry over HTTP.

* ``POST /api/v1/ingest/{building}/{device}/{channel}``: the MQTT contract's payload as the body, a token of role
  ``ingest`` (or ``admin``); a token limited to buildings may push only for those.
* ``GET|POST /api/v1/ingest/onenet``: OneNET's URL verification and its signed data push.
* ``POST /api/v1/ingest/ctwing``: CTWing (AEP) subscription pushes, with the shared token.

Each message goes through the same pipeline as MQTT's and the answer waits for the group commit that makes it durable
(the HTTP counterpart of PUBACK): 200 once committed, 422 with the contract's reason when it was rejected, 503 when
the gateway is shutting down or the commit did not come in ``ingest.commit_timeout_s``.  Missing or wrong credentials
are 401/403 and counted as ``bad_signature`` rejections.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.api.auth import AuthError
from gateway.api.framework import AUTH_KEY
from gateway.api.ingest_openapi import ingest_paths
from gateway.api.openapi import EXTRA_PATHS_KEY
from gateway.api.runtime import Runtime
from gateway.config import FiregridConfig
from gateway.ingest.contract import CHANNELS, Reason, Rejected
from gateway.ingest.mqtt import Incoming
from gateway.ingest.platforms import (
    PlatformMap,
    PlatformMessage,
    Translated,
    ctwing_messages,
    onenet_messages,
    onenet_signature,
    raw_member,
    signature_matches,
)

RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("firegrid_ingest_runtime", Runtime)


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class _Ingest:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        config: FiregridConfig = runtime.config
        self.prefix = config.mqtt.topic_prefix
        self.timeout_s = config.ingest.commit_timeout_s
        onenet, ctwing = config.ingest.onenet, config.ingest.ctwing
        self.onenet = onenet
        self.ctwing = ctwing
        self.onenet_map = (
            PlatformMap(config=config, devices=onenet.devices, fields=onenet.datastreams) if onenet else None
        )
        self.ctwing_map = PlatformMap(config=config, devices=ctwing.devices, fields=ctwing.fields) if ctwing else None

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def refuse(self, status: int, source: str, detail: str) -> web.Response:
        rejections = self.runtime.rejections
        if rejections is not None:
            rejections.record(Rejected(Reason.BAD_SIGNATURE, detail), topic=f"ingest/{source}", now_ms=self._now_ms())
        headers = {"WWW-Authenticate": 'Bearer realm="firegrid"'} if status == 401 else None
        response = _json(status, {"error": "unauthorized" if status == 401 else "forbidden", "detail": detail})
        if headers:
            response.headers.update(headers)
        return response

    async def hand_off(self, source: str, messages: list[tuple[str, bytes]]) -> list[Rejected | None] | None:
        """Submit ``(topic, payload)`` messages and wait for their group commit: their verdicts, or None when the
        gateway could not commit them in time (or is shutting down)."""
        pipeline = self.runtime.pipeline
        if pipeline is None or pipeline.closed:
            return None
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Rejected | None]] = []
        received = self._now_ms()
        for topic, payload in messages:
            future: asyncio.Future[Rejected | None] = loop.create_future()

            def committed(verdict: Rejected | None, future: asyncio.Future[Rejected | None] = future) -> None:
                if not future.done():
                    future.set_result(verdict)

            futures.append(future)
            self.runtime.metrics.source_messages.labels(source).inc()
            pipeline.submit(
                Incoming(
                    generation=0,
                    mid=0,
                    qos=0,
                    topic=topic,
                    payload=payload,
                    received_ms=received,
                    on_commit=committed,
                )
            )
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s))
        except TimeoutError:
            return None

    async def platform(self, source: str, translated: Translated) -> web.Response:
        rejections = self.runtime.rejections
        for exc in translated.rejected:
            if rejections is not None:
                rejections.record(exc, topic=f"ingest/{source}", now_ms=self._now_ms())
        verdicts = await self.hand_off(source, [(self._topic(m), m.payload) for m in translated.messages])
        if verdicts is None:
            return _json(503, {"error": "unavailable", "detail": "not committed; send the push again"})
        refused = [v for v in verdicts if v is not None]
        # The platform retries a push that was not answered 2xx; a rejected one would fail again the same way, so
        # it is acknowledged (and counted and listed by /api/v1/rejections).
        return _json(
            200,
            {
                "accepted": len(verdicts) - len(refused),
                "rejected": [{"reason": r.reason.value, "detail": r.detail} for r in (*translated.rejected, *refused)],
            },
        )

    def _topic(self, message: PlatformMessage) -> str:
        return f"{self.prefix}/{message.building}/{message.device}/{message.channel}"

    # --- plain HTTP ----------------------------------------------------------------------------------------------

    async def plain(self, request: web.Request) -> web.Response:
        building = request.match_info["building"]
        device = request.match_info["device"]
        channel = request.match_info["channel"]
        try:
            who = request.app[AUTH_KEY].authenticate(request.headers.get("Authorization"))
        except AuthError as exc:
            return self.refuse(401, "http", str(exc))
        if who.role not in ("ingest", "admin"):
            return self.refuse(403, "http", f"token {who.name!r} has role {who.role}; pushing needs ingest")
        if not who.sees_building(building):
            return self.refuse(403, "http", f"token {who.name!r} may not push for building {building[:64]!r}")
        if channel not in CHANNELS:
            return _json(404, {"error": "not_found", "detail": f"channel must be one of {', '.join(CHANNELS)}"})
        body = await request.read()
        verdicts = await self.hand_off("http", [(f"{self.prefix}/{building}/{device}/{channel}", body)])
        if verdicts is None:
            return _json(503, {"error": "unavailable", "detail": "not committed; send it again"})
        (verdict,) = verdicts
        if verdict is not None:
            return _json(422, {"error": "rejected", "reason": verdict.reason.value, "detail": verdict.detail})
        return _json(200, {"accepted": 1})

    # --- OneNET --------------------------------------------------------------------------------------------------

    async def onenet_verify(self, request: web.Request) -> web.Response:
        if self.onenet is None:
            return _json(404, {"error": "not_found", "detail": "ingest.onenet is not configured"})
        query = request.query
        msg, nonce, signature = query.get("msg"), query.get("nonce"), query.get("signature")
        if msg is None or nonce is None:
            return _json(400, {"error": "bad_request", "detail": "msg and nonce are required"})
        expected = onenet_signature(token=self.onenet.token.get_secret_value(), nonce=nonce, msg=msg)
        if not signature_matches(expected, signature):
            return self.refuse(403, "onenet", "URL verification signature does not match ingest.onenet.token")
        return web.Response(text=msg, content_type="text/plain")

    async def onenet_push(self, request: web.Request) -> web.Response:
        if self.onenet is None or self.onenet_map is None:
            return _json(404, {"error": "not_found", "detail": "ingest.onenet is not configured"})
        body = await request.read()
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            return _json(400, {"error": "bad_request", "detail": "the push must be a JSON object"})
        nonce = document.get("nonce")
        signature = document.get("msg_signature", document.get("signature"))
        msg = document.get("msg")
        # msg as a JSON value (signed as its text in the body) or, in the newer envelope, as a string of JSON (signed
        # as that string, with "signature" instead of "msg_signature")
        msg_text = msg if isinstance(msg, str) else raw_member(body, "msg")
        if not isinstance(nonce, str) or not isinstance(signature, str) or msg_text is None:
            return self.refuse(401, "onenet", "push without msg, nonce or msg_signature")
        expected = onenet_signature(token=self.onenet.token.get_secret_value(), nonce=nonce, msg=msg_text)
        if not signature_matches(expected, signature):
            return self.refuse(403, "onenet", "msg_signature does not match ingest.onenet.token")
        if isinstance(msg, str):
            try:
                msg = orjson.loads(msg)
            except orjson.JSONDecodeError:
                msg = None  # judged below: not an object
        return await self.platform("onenet", onenet_messages(msg, mapping=self.onenet_map))

    # --- CTWing --------------------------------------------------------------------------------------------------

    async def ctwing_push(self, request: web.Request) -> web.Response:
        if self.ctwing is None or self.ctwing_map is None:
            return _json(404, {"error": "not_found", "detail": "ingest.ctwing is not configured"})
        presented = request.query.get("token") or request.headers.get("X-Firegrid-Token")
        if presented is None:
            return self.refuse(401, "ctwing", "push without token")
        if not signature_matches(self.ctwing.token.get_secret_value(), presented):
            return self.refuse(403, "ctwing", "token does not match ingest.ctwing.token")
        body = await request.read()
        document: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(body)
        return await self.platform("ctwing", ctwing_messages(document, mapping=self.ctwing_map))


def add_ingest_routes(app: web.Application, runtime: Runtime) -> None:
    ingest = _Ingest(runtime)
    app.router.add_get("/api/v1/ingest/onenet", ingest.onenet_verify)
    app.router.add_post("/api/v1/ingest/onenet", ingest.onenet_push)
    app.router.add_post("/api/v1/ingest/ctwing", ingest.ctwing_push)
    app.router.add_post("/api/v1/ingest/{building}/{device}/{channel}", ingest.plain)
    if EXTRA_PATHS_KEY in app:  # documented in the app's /openapi.json (gateway/api/ingest_openapi.py)
        app[EXTRA_PATHS_KEY].append(ingest_paths())
