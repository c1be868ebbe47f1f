"""Passwords out of everything an operator sees: DSNs in settings and errors, server messages in logs
and /readyz."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_DSN_SECRET_PARAMS = re.compile(r"(?i)(^|&)((?:ssl)?password)=[^&]*")
_KEYWORD_SECRETS = re.compile(r"""(?i)\b((?:ssl)?password)\s*=\s*(?:'(?:[^'\\]|\\.)*'?|\S*)""")


def redact_dsn(dsn: str | None) -> str | None:
    """The DSN without its passwords (user:password@, ?password=, ?sslpassword=, key=value form),
    for logs, errors and repr."""
    if not dsn:
        return dsn
    if "://" not in dsn:  # libpq key=value form: host=db password='x y'
        return _KEYWORD_SECRETS.sub(r"\1=***", dsn)
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "(malformed DSN)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = _DSN_SECRET_PARAMS.sub(r"\1\2=***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


_DSN_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact(text: str, *dsns: str | None) -> str:
    """`text` without passwords: those of the given DSNs, and any DSN- or keyword-style one."""
    for dsn in dsns:
        password = urlsplit(dsn).password if dsn else None
        if password:
            text = text.replace(password, "***")
    text = _DSN_PASSWORD.sub(r"\1***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)
