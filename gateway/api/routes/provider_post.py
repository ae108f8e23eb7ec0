"""The shape of a POST that a provider (an SMS gateway, a voice relay) sends us: authenticated by the provider's
signature rather than a bearer token, so it stands outside the OpenAPI surface.  The body is read up to the API's
body limit, handed with the request's headers to a pure handler in a worker thread (it writes the alert store),
and the handler's verdict becomes the answer: a problem document from 400 up, else the handler's JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiohttp import web

from alerts.store import AlertStore
from gateway.api.framework import BODY_LIMIT_KEY, problem_response
from gateway.api.routes.state import STATE_KEY
from gateway.api.runtime import Runtime


class Verdict(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def message(self) -> str: ...


_V = TypeVar("_V", bound=Verdict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Posted:
    """What the handler gets of the request, taken on the event loop."""

    headers: dict[str, str]
    url: str
    body: bytes
    now_ms: int


def provider_post(
    runtime: Runtime,
    *,
    unavailable: str,
    handle: Callable[[AlertStore, Posted], _V],
    answer: Callable[[_V], Mapping[str, Any]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler: 503 ``unavailable`` without a store, 413 over the body limit, else
    ``handle(store, posted)`` off the event loop and ``answer(verdict)`` as the JSON body."""

    async def post(request: web.Request) -> web.StreamResponse:
        store = runtime.store
        if store is None:
            return problem_response(503, detail=unavailable, instance=request.path)
        limit = request.app[BODY_LIMIT_KEY]
        if request.content_length is not None and request.content_length > limit:
            return problem_response(413, detail=f"the limit is {limit} bytes", instance=request.path)
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            return problem_response(413, detail=f"the limit is {limit} bytes", instance=request.path)
        posted = Posted(
            headers=dict(request.headers), url=str(request.url), body=body, now_ms=request.app[STATE_KEY].clock_ms()
        )
        verdict = await asyncio.to_thread(handle, store, posted)
        if verdict.status >= 400:
            return problem_response(verdict.status, detail=verdict.message, instance=request.path)
        return web.json_response(dict(answer(verdict)), status=verdict.status)

    return post
