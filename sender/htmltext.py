"""The plain-text part of a message, derived from its HTML: blocks become lines, links keep their target.

Linear in the size of the HTML whatever its markup (a message of unclosed tags or of nothing but
entities must not stall the event loop), with regular expressions rather than html.parser, since it
runs once per message on the hot path.
"""

from __future__ import annotations

import re
from html import unescape

_SPACES = re.compile(r"[ \t]+")
_HIDDEN_OPEN = re.compile(r"<(script|style|head|title)\b[^<>]*>", re.IGNORECASE)
_HIDDEN_CLOSE = {tag: re.compile(rf"</{tag}\s*>", re.IGNORECASE) for tag in ("script", "style", "head", "title")}
_LINK_OPEN = re.compile(r"""<a\b[^<>]*?\bhref\s*=\s*(?:"([^"<>]*)"|'([^'<>]*)'|([^\s<>]+))[^<>]*>""", re.IGNORECASE)
_LINK_CLOSE = re.compile(r"</a\s*>", re.IGNORECASE)
_BLOCK_TAGS = re.compile(r"</?(?:p|div|br|li|tr|h[1-6]|table|ul|ol)\b[^<>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^<>]+>")


def _drop_comments(html: str) -> str:
    out, pos = [], 0
    while (start := html.find("<!--", pos)) >= 0:
        out.append(html[pos:start])
        end = html.find("-->", start + 4)
        if end < 0:  # an unclosed comment hides the rest, as in a browser
            return "".join(out)
        pos = end + 3
    out.append(html[pos:])
    return "".join(out)


def _drop_hidden_blocks(html: str) -> str:
    out, pos = [], 0
    while match := _HIDDEN_OPEN.search(html, pos):
        out.append(html[pos:match.start()])
        close = _HIDDEN_CLOSE[match.group(1).lower()].search(html, match.end())
        if close is None:
            return "".join(out)
        pos = close.end()
    out.append(html[pos:])
    return "".join(out)


def _inline_links(html: str) -> str:
    out, pos = [], 0
    while match := _LINK_OPEN.search(html, pos):
        close = _LINK_CLOSE.search(html, match.end())
        if close is None:
            break
        href = match.group(1) or match.group(2) or match.group(3) or ""
        text = html[match.end():close.start()]
        out.append(html[pos:match.start()])
        out.append(f"{text} ({href})" if href.startswith(("http://", "https://", "mailto:")) else text)
        pos = close.end()
    out.append(html[pos:])
    return "".join(out)


def html_to_text(html: str) -> str:
    """A readable plain-text part from HTML: blocks become lines, links keep their target.

    Regular expressions rather than html.parser: this runs once per message on the hot path.
    """
    text = _inline_links(_drop_hidden_blocks(_drop_comments(html)))
    text = _ANY_TAG.sub("", _BLOCK_TAGS.sub("\n", text))
    lines = (_SPACES.sub(" ", line).strip() for line in _unescape(text).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _unescape(text: str) -> str:
    """html.unescape, with the common entities replaced at C speed first: unescape calls Python once
    per entity, and a message of nothing but entities would otherwise stall the loop. Past 10,000 rarer
    entities the rest stay as written (the text part is a readable fallback, not a transcript)."""
    if "&" not in text:
        return text
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"), ("&nbsp;", "\u00a0")):
        text = text.replace(entity, char)
    if text.count("&") > 10_000:
        return text.replace("&amp;", "&")  # last, so "&amp;lt;" stays "&lt;"
    return unescape(text)
