"""What of a URL may be shown in a message or a log: never the secrets it may carry."""

from __future__ import annotations

import re

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")


def redacted_url(url: str) -> str:
    """`url` fit for a message or a log: a password (`scheme://user:secret@host`) or a token
    (`scheme://secret@host`) in its authority, and its query string (signed URLs carry
    credentials there), replaced by `***`. What is not a URL (a local path) is shown as it is."""
    if not _URL.match(url):
        return url

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match.group(2).partition(":")
        return f"{match.group(1)}{user}:***@" if colon else f"{match.group(1)}***@"

    head, question, _ = _USERINFO.sub(hide, url).partition("?")
    return f"{head}?***" if question else head
