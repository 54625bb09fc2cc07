"""URLs as they may be shown: never a password, a token or a webhook's secret path."""

from __future__ import annotations

import urllib.parse

from .errors import ConfigError


def redact_url(url: str, keep_path: bool = True) -> str:
    """A URL fit for logs and errors: no user info (user:password@), no query
    string or fragment, and with keep_path=False (webhooks, whose path is the
    secret) only scheme://host[:port]/..."""
    if "://" not in url:  # a local path, or a URL missing its scheme (then its first segment only)
        head = url.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
        return url if keep_path else head + ("/..." if head != url else "")
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    path = parts.path if keep_path else ("/..." if parts.path.strip("/") else "")
    tail = "?***" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{netloc}{path}{tail}"


def check_http_url(option: str, url: str) -> None:
    """A webhook / Pushgateway URL must be http(s) with a host; the error never echoes it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{option}: not an http(s):// URL with a host name ({redact_url(url, keep_path=False)!r} "
            "shown without its path and query); give the full URL, e.g. https://hooks.example.com/..."
        )
