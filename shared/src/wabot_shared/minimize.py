"""Data minimization: what is never kept of a webhook, before it is queued.

* Credentials, anywhere in the envelope: Evolution's ``apikey`` (the instance
  token, which controls the clinic's WhatsApp session) and any field named
  like a credential or a message secret.
* Unless ``STORE_MEDIA_KEYS=true``: the media keys, direct media URLs and
  thumbnails of media messages. A ``mediaKey`` together with its URL is enough
  to download and decrypt a patient's photo; the thumbnail is the photo.

What remains is the raw payload that is queued and stored.
"""

from __future__ import annotations

from typing import Any, Final

# Compared case-insensitively, at any depth.
CREDENTIAL_KEYS: Final = frozenset(
    {
        "apikey",
        "api_key",
        "token",
        "accesstoken",
        "access_token",
        "authorization",
        "password",
        "secret",
        "jwt",
        "jwt_key",
        "messagesecret",  # Baileys' per-message secret (polls, edits)
    }
)
MEDIA_KEYS: Final = frozenset(
    {
        "mediakey",
        "mediakeytimestamp",
        "url",
        "directpath",
        "jpegthumbnail",
        "thumbnaildirectpath",
        "thumbnailsha256",
        "thumbnailencsha256",
        "thumbnailheight",
        "thumbnailwidth",
        "pngthumbnail",
        "streamingsidecar",
    }
)
_MAX_DEPTH = 200


def minimize(body: dict[str, Any], *, keep_media_keys: bool = False) -> dict[str, Any]:
    """A copy of ``body`` without credentials (and media keys unless kept)."""
    result = _walk(body, not keep_media_keys, False, 0)
    assert isinstance(result, dict)
    return result


def _walk(node: Any, drop_media: bool, in_message: bool, depth: int) -> Any:
    # Media keys are dropped inside message content only (Baileys nests it
    # under `message` and `<type>Message`): elsewhere a `url` is just a url.
    if depth > _MAX_DEPTH:
        return None  # deeper than the parser allows; never reached in practice
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            lowered = key.lower()
            if lowered in CREDENTIAL_KEYS or (drop_media and in_message and lowered in MEDIA_KEYS):
                continue
            inner = in_message or lowered == "message" or key.endswith("Message")
            out[key] = _walk(value, drop_media, inner, depth + 1)
        return out
    if isinstance(node, list):
        return [_walk(v, drop_media, in_message, depth + 1) for v in node]
    return node
