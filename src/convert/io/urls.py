"""Database URLs and ``env:`` locations: recognised, resolved, parsed and redacted in one place.

Both edges that open databases (:mod:`convert.sources.readers` reads a CRM, :mod:`convert.io.writers`
writes scores) take their URLs through this module, so a URL means the same thing, and a
password is hidden the same way, wherever it appears.

Redaction parses the URL instead of matching a pattern: the user information ends at the
*last* ``@`` before the host (as :func:`urllib.parse.urlsplit` reads it), so a password
holding a raw ``@`` or ``/`` (``postgres:p@ss@host``) is hidden whole, never in part. The
same reading is used to connect: a raw ``@`` in a password is percent-encoded before
SQLAlchemy parses the URL (SQLAlchemy alone would take ``ss@host`` for the host).

SQLAlchemy is imported lazily (only :func:`engine_url` needs it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus, unquote

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = [
    "ENV_PREFIX",
    "engine_url",
    "is_database_url",
    "redact_url",
    "resolve_env",
    "scrub",
    "secrets_of",
]

ENV_PREFIX = "env:"
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
#: what may follow the user information's ``@``: a host (name, IPv4, [IPv6]) and a port
_HOST_RE = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=\-]*(?:\[[0-9A-Fa-f:.%A-Za-z]*\])?(?::\d*)?")
_PG_SCHEMES = ("postgresql", "postgres")


def is_database_url(text: object) -> bool:
    """Whether *text* is a URL (``sqlite:///crm.db``, ``postgresql://...``), not a path."""
    return isinstance(text, str) and bool(_SCHEME_RE.match(text))


def resolve_env(value: str | os.PathLike[str], flag: str) -> str:
    """``env:NAME`` -> the value of environment variable NAME (e.g. a URL with a password,
    kept off the command line); anything else unchanged.

    Raises :class:`ValueError` naming *flag* when the variable is not set.
    """
    text = os.fspath(value)
    text = os.fsdecode(text) if isinstance(text, bytes) else text
    if not text.startswith(ENV_PREFIX):
        return text
    name = text[len(ENV_PREFIX) :]
    found = os.environ.get(name)
    if not found:
        raise ValueError(f"{flag} env:{name}: the environment variable {name} is not set")
    return found


@dataclass(frozen=True)
class _Parts:
    """A URL cut at its user information: ``scheme://`` + user + ``:`` + password + ``@`` + rest."""

    scheme: str
    user: str
    password: str | None
    rest: str


def _split(text: str) -> _Parts | None:
    """*text* cut at its user information, or ``None`` when it has none (or is no URL).

    The user information ends at the last ``@`` that is followed by something shaped like
    a host and port and then the end, ``/``, ``?`` or ``#``.
    """
    match = _SCHEME_RE.match(text)
    if match is None:
        return None
    scheme, rest = match.group(), text[match.end() :]
    at = _userinfo_end(rest)
    if at < 0:
        return None
    userinfo = rest[:at]
    user, colon, password = userinfo.partition(":")
    return _Parts(scheme, user, password if colon else None, rest[at + 1 :])


def _userinfo_end(rest: str) -> int:
    """Index of the ``@`` ending the user information in *rest* (after ``scheme://``), or -1.

    Preferred: the last ``@`` before the query that is followed by a host (and port) and
    then the end, ``/``, ``?`` or ``#``; then the same over the whole text; else the last
    ``@`` at all (hiding too much rather than too little).
    """
    query = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    for limit in (query, len(rest)):
        end = limit
        while (at := rest.rfind("@", 0, end)) >= 0:
            host = _HOST_RE.match(rest, at + 1)
            after = host.end() if host else at + 1
            if after == len(rest) or rest[after] in "/?#":
                return at
            end = at
    return rest.rfind("@")


def redact_url(text: str) -> str:
    """*text* with the password of its user information replaced by ``***`` (for messages)."""
    parts = _split(text)
    if parts is None or parts.password is None:
        return text
    return f"{parts.scheme}{parts.user}:***@{parts.rest}"


def secrets_of(text: str) -> tuple[str, ...]:
    """Every spelling of *text*'s password (as written, decoded, encoded), longest first,
    to scrub from a driver's messages."""
    parts = _split(text)
    if parts is None or not parts.password:
        return ()
    written = parts.password
    plain = unquote(written)
    spellings = {written, plain, quote(plain, safe=""), quote_plus(plain)}
    return tuple(sorted((s for s in spellings if s), key=len, reverse=True))


def scrub(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    """*text* (a driver's message) with each of *secrets* (see :func:`secrets_of`, longest
    first) replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def engine_url(text: str) -> URL:
    """The SQLAlchemy URL for *text*: ``postgresql://`` and ``postgres://`` are driven by
    psycopg 3 (SQLAlchemy would pick psycopg2, which convert does not install).

    A raw ``@`` (or ``/``) in the password is percent-encoded first, so the URL connects to
    the host the user wrote. Raises :class:`ValueError` (with a redacted URL) when
    SQLAlchemy cannot parse it.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    parts = _split(text)
    if parts is not None and parts.password is not None and any(c in parts.password for c in "@/"):
        encoded = quote(unquote(parts.password), safe="")
        text = f"{parts.scheme}{parts.user}:{encoded}@{parts.rest}"
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise ValueError(f"{redact_url(text)!r} is not a valid database URL") from None
    if url.drivername in _PG_SCHEMES:
        url = url.set(drivername="postgresql+psycopg")
    return url
