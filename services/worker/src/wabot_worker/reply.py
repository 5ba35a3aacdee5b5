"""Evolution API's send-text endpoint, for the reply sender."""

from __future__ import annotations

import logging
from urllib.parse import quote

import httpx

log = logging.getLogger("wabot.worker.reply")


class EvolutionClient:
    """A small client for ``POST /message/sendText/{instance}``.

    httpx is instrumented, so the request carries ``traceparent`` (and
    ``tracestate``/``baggage``) and the reply shows up in the message's trace.
    """

    def __init__(self, base_url: str, api_key: str, timeout: float) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"apikey": api_key},
            timeout=timeout,
        )

    async def send_text(self, instance: str, remote_jid: str, text: str) -> httpx.Response:
        """Send ``text`` to the chat; raises ``httpx.HTTPError`` on failure."""
        # Evolution takes a bare number for people and the full JID for groups.
        number = (
            remote_jid.split("@", 1)[0] if remote_jid.endswith("@s.whatsapp.net") else remote_jid
        )
        response = await self._client.post(
            f"/message/sendText/{quote(instance, safe='')}", json={"number": number, "text": text}
        )
        response.raise_for_status()
        return response

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
