"""Reading the bot's mail from its raw bytes, as RFC 5322 and RFC 2369 say.

Deliberately not the standard library's email package (which wrote the
mail, and hides what a client would see): fields are split and unfolded
here by the RFC's own rules, and list headers are read as `<URL>` lists.
`check(raw)` asserts everything a mail client relies on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LIST_FIELDS = (
    "list-id",
    "list-help",
    "list-subscribe",
    "list-unsubscribe",
    "list-archive",
    "list-post",
    "list-owner",
)
URL_FIELDS = ("list-help", "list-subscribe", "list-unsubscribe", "list-archive", "list-owner")


@dataclass(frozen=True)
class Field:
    name: str
    lines: list[str]
    """The physical lines of the field, without CRLF; the first holds `Name:`."""

    @property
    def raw_value(self) -> str:
        return "\r\n".join(self.lines).split(":", 1)[1]

    @property
    def value(self) -> str:
        """RFC 5322 2.2.3: unfolding removes each CRLF that precedes white space."""
        return re.sub(r"\r\n(?=[ \t])", "", self.raw_value).strip()


def head_and_body(raw: bytes) -> tuple[list[str], bytes]:
    assert b"\r\n\r\n" in raw, "no empty line between the header and the body"
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"\n" not in head.replace(b"\r\n", b""), "a bare LF in the header"
    assert b"\r" not in head.replace(b"\r\n", b""), "a bare CR in the header"
    return head.decode("ascii").split("\r\n"), body


def fields(raw: bytes) -> list[Field]:
    """The header fields in order; a line starting with white space continues one."""
    lines, _ = head_and_body(raw)
    out: list[Field] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            assert out, "the header starts with a continuation line"
            out[-1].lines.append(line)
            continue
        name, colon, _ = line.partition(":")
        assert colon and re.fullmatch(r"[!-9;-~]+", name), f"not a field line: {line!r}"
        out.append(Field(name, [line]))
    return out


def field(raw: bytes, name: str) -> Field | None:
    found = [f for f in fields(raw) if f.name.lower() == name.lower()]
    assert len(found) <= 1, f"{name} appears {len(found)} times"
    return found[0] if found else None


def split_list(value: str) -> list[str]:
    """RFC 2369 list items: split on commas outside angle brackets."""
    items, depth, current = [], 0, ""
    for char in value:
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    items.append(current.strip())
    return items


def urls(raw: bytes, name: str) -> list[str]:
    """The URLs of an RFC 2369 field, each checked to be `<URL>` in plain ASCII."""
    f = field(raw, name)
    assert f is not None, f"no {name} field"
    found = []
    for item in split_list(f.value):
        assert re.fullmatch(r"<[!-;=?-~]+>", item), f"{name}: {item!r} is not <URL>"
        found.append(item[1:-1])
    return found


def check(raw: bytes) -> None:
    """Every rule a client relies on, from the raw bytes; raises AssertionError."""
    lines, body = head_and_body(raw)
    for line in lines:
        assert len(line.encode()) <= 998, f"a header line of {len(line)} octets"
    for line in body.split(b"\r\n"):
        assert len(line) <= 998, f"a body line of {len(line)} octets"
    for f in fields(raw):
        name = f.name.lower()
        first = f.lines[0].split(":", 1)[1]
        assert first.strip(), f"{f.name} folds right after the colon: {f.lines!r}"
        if name in LIST_FIELDS:
            assert "=?" not in f.raw_value, f"{f.name} is RFC 2047-encoded: {f.lines!r}"
        if name in URL_FIELDS:
            urls(raw, f.name)
            # Folded only between URLs: each continuation line starts a new <URL>.
            for line in f.lines[1:]:
                assert re.match(r"^[ \t]+<", line), f"{f.name} folds inside a URL: {f.lines!r}"
            for line in f.lines[:-1]:
                assert line.endswith(","), f"{f.name} folds inside a URL: {f.lines!r}"
        if name == "subject":
            assert f.value == " ".join(f.value.split()), "a subject with doubled white space"
        if name in ("references", "in-reply-to"):
            assert "=?" not in f.raw_value, f"{f.name} is RFC 2047-encoded"
            assert re.fullmatch(r"(<[^<>\s]+>\s*)+", f.value), f"{f.name}: {f.value!r}"
    post = field(raw, "list-unsubscribe-post")
    if post is not None:
        assert post.value == "List-Unsubscribe=One-Click"
        assert any(u.startswith("https://") for u in urls(raw, "List-Unsubscribe"))


def body_text(raw: bytes) -> str:
    """The body as text: 8bit as it is, quoted-printable decoded (plain text only)."""
    import quopri

    _, body = head_and_body(raw)
    encoding = field(raw, "content-transfer-encoding")
    if encoding is not None and encoding.value.lower() == "quoted-printable":
        body = quopri.decodestring(body)
    return body.decode("utf-8").replace("\r\n", "\n")
