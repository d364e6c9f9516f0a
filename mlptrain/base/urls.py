"""Database and tracking URLs as every message shows them: each password masked (a sweep's study storage,
output.mlflow's tracking URI)."""

from __future__ import annotations

import re
import urllib.parse


def shown_url(url: str, unknown: str = "the storage URL") -> str:
    """The URL as every message shows it: each password masked as ***, wherever it sits, in the user-info
    (user:pass@host) or in the query string (?password=..., sslpassword=..., any key that names a secret). Text that
    is not a URL whose password could be found is shown as `unknown`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or "://" not in url:  # not a URL whose password could be found: none of it is shown
        return unknown
    shown = url  # edited in place: urlunsplit would drop the empty host of sqlite:////path
    user_info, at, host = parts.netloc.rpartition("@")
    if at and ":" in user_info:
        shown = shown.replace(parts.netloc, f"{user_info.split(':', 1)[0]}:***@{host}", 1)
    if parts.query:
        query = "&".join(_masked(pair) for pair in parts.query.split("&"))
        shown = shown.replace(f"?{parts.query}", f"?{query}", 1)
    return shown


_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)  # query keys whose values are masked


def _masked(pair: str) -> str:
    key, sep, value = pair.partition("=")
    return f"{key}=***" if sep and value and _SECRET_KEY.search(urllib.parse.unquote(key)) else pair


def _secrets(url: str) -> list[str]:
    """Every password in `url`, as written and unquoted: what shown_url masks."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    found = []
    if "@" in parts.netloc and ":" in parts.netloc.rsplit("@", 1)[0]:
        found.append(parts.netloc.rsplit("@", 1)[0].split(":", 1)[1])
    for pair in parts.query.split("&") if parts.query else []:
        key, sep, value = pair.partition("=")
        if sep and value and _SECRET_KEY.search(urllib.parse.unquote(key)):
            found.append(value)
    return [text for secret in found for text in {secret, urllib.parse.unquote(secret)} if text]


def scrub(text: str, url: str) -> str:
    """`text` (a driver's message) with the URL shown as shown_url shows it, and any password left masked."""
    text = text.replace(url, shown_url(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
