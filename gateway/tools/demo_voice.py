"""The demo's stand-in for the voice provider (Aliyun ``SingleCallByTts``) on the demo's local receiver: it checks
each call as the provider would (the ``ACS3-HMAC-SHA256`` signature over the canonical request, a fresh nonce, the
template), prints what the callee hears, shows it on the dashboard's live stream as a ``voice`` event and, a moment
later, "answers" the call by pressing the acknowledge key: it posts the provider's result receipt (a VoiceReport,
signed by the relay's Standard Webhooks secret) to the gateway's ``POST /api/v1/voice/receipts``, which
acknowledges the incident in the callee's name.  Nobody's phone rings: the roster's numbers only reach this
stand-in."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import orjson
from aiohttp import web

from common.webhooks import sign

VOICE_PATH = "/voice/"
_AUTH = re.compile(r"ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]{64})")
_PARAM = re.compile(r"\$\{(\w+)\}")


def _pct(value: str) -> str:
    return quote(value, safe="-_.~")


def _masked(number: str) -> str:
    return number[:3] + "****" + number[-4:] if len(number) >= 7 else number


class DemoVoice:
    def __init__(
        self,
        *,
        out: Callable[[str], None],
        publish: Callable[[str, Any], object],
        press_after_s: float = 3.0,
        ack_key: str = "1",
    ) -> None:
        self.out = out
        self.publish = publish
        self.press_after_s = press_after_s
        self.ack_key = ack_key
        self.access_key_id = "LTAIdemo" + secrets.token_hex(6)
        self.access_key_secret = secrets.token_urlsafe(24)
        self.receipt_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.receipts_url: str | None = None  # the gateway's receipt endpoint, known once it listens
        self.calls = 0
        self._nonces: set[str] = set()
        self._templates: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def voice(self, base_url: str) -> dict[str, Any]:
        """The ``notify.voice`` section pointing at this stand-in (``base_url``: the receiver's http://host:port)."""
        from alerts.config import VoiceConfig

        config = {
            "provider": "aliyun",
            "endpoint": base_url + VOICE_PATH,
            "allow_private": True,
            "timeout_s": 5.0,
            "access_key_id": self.access_key_id,
            "access_key_secret": self.access_key_secret,
            "ack_key": self.ack_key,
            "receipt_secret": self.receipt_secret,
        }
        # What each approved template reads out, to print what the callee hears.
        for template in VoiceConfig.model_validate(config).templates.values():
            self._templates[template.template_id] = template.text
        return config

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(VOICE_PATH, self._call)

    def _refuse(self, code: str, message: str) -> web.Response:
        self.out(f"voice: REJECTED a call ({code}: {message})")
        return web.json_response({"Code": code, "Message": message, "RequestId": str(uuid.uuid4())}, status=400)

    def _check(self, request: web.Request, body: bytes) -> tuple[str, str] | None:
        """``(code, message)`` of the provider's refusal, or None: the request is signed as Aliyun documents."""
        h = {k.lower(): v for k, v in request.headers.items()}
        if h.get("x-acs-action") != "SingleCallByTts" or h.get("x-acs-version") != "2017-05-25":
            return "InvalidAction.NotFound", f"{h.get('x-acs-action')} {h.get('x-acs-version')}"
        nonce = h.get("x-acs-signature-nonce", "")
        if not nonce or nonce in self._nonces:
            return "SignatureNonceUsed", nonce
        if hashlib.sha256(body).hexdigest() != h.get("x-acs-content-sha256"):
            return "InvalidParameter", "x-acs-content-sha256 does not match the body"
        match = _AUTH.fullmatch(h.get("authorization", ""))
        if match is None or match.group(1) != self.access_key_id:
            return "IncompleteSignature", h.get("authorization", "")
        names = match.group(2).split(";")
        if names != sorted(names) or any(n not in h for n in names) or "host" not in names:
            return "IncompleteSignature", f"SignedHeaders {match.group(2)}"
        query = parse_qsl(request.query_string, keep_blank_values=True)
        canonical = "\n".join(
            [
                "POST",
                request.path,
                "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted(query)),
                "".join(f"{n}:{h[n].strip()}\n" for n in names),
                match.group(2),
                h["x-acs-content-sha256"],
            ]
        )
        to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
        expected = hmac.new(self.access_key_secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, match.group(3)):
            return "SignatureDoesNotMatch", "Specified signature is not matched with our calculation."
        self._nonces.add(nonce)
        return None

    async def _call(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = self._check(request, body)
        if problem is not None:
            return self._refuse(*problem)
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        template = self._templates.get(params.get("TtsCode", ""))
        if template is None:
            return self._refuse("isv.TTS_TEMPLATE_ILLEGAL", params.get("TtsCode", ""))
        try:
            values = orjson.loads(params.get("TtsParam", "{}"))
        except orjson.JSONDecodeError:
            return self._refuse("isv.INVALID_JSON_PARAM", params.get("TtsParam", ""))
        heard = _PARAM.sub(lambda m: str(values.get(m.group(1), "")), template)
        number = params.get("CalledNumber", "")
        self.calls += 1
        call_id = f"{116012354148 + self.calls}^1"
        self.out(f"voice: call #{self.calls} to {_masked(number)}: 「{heard}」 x{params.get('PlayTimes', '?')}")
        self.publish(
            "voice",
            {"phone": _masked(number), "text": heard, "call_id": call_id, "received_ms": int(time.time() * 1000)},
        )
        answer = self._answer(self.calls, call_id=call_id, out_id=params.get("OutId", ""), number=number)
        task = asyncio.get_running_loop().create_task(answer)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"Code": "OK", "Message": "OK", "CallId": call_id, "RequestId": str(uuid.uuid4())})

    async def _answer(self, n: int, *, call_id: str, out_id: str, number: str) -> None:
        """The callee listens and presses the acknowledge key; the provider's receipt reaches the gateway signed."""
        await asyncio.sleep(self.press_after_s)
        if self.receipts_url is None:
            return
        receipt = [
            {
                "call_id": call_id,
                "out_id": out_id,
                "callee": number,
                "status_code": "200000",
                "status_msg": "用户听完",
                "dtmf": self.ack_key,
                "duration": "12",
            }
        ]
        body = orjson.dumps(receipt)
        msg_id = f"msg_{uuid.uuid4().hex}"
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(self.receipt_secret, msg_id, stamp, body),
        }
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):  # the demo may be stopping
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.post(self.receipts_url, data=body, headers=headers) as response,
            ):
                answer = await response.json(content_type=None)
                if response.status == 200:
                    acked = len(answer.get("acknowledged", []))
                    self.out(
                        f"voice: {_masked(number)} pressed {self.ack_key} on call #{n}:"
                        f" {answer.get('message')}, {acked} alert(s) acknowledged"
                    )
                else:
                    self.out(f"voice: the receipt of call #{n} was refused: {answer.get('detail')}")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
