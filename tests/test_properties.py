"""Property tests: arbitrary input never raises anything but our own error.

Hypothesis throws arbitrary text and bytes at the parsers a stranger can
reach: subject tags, ranges and dates, command lines, the body/diffstat
splitter and the whole message parser.
"""

from __future__ import annotations

import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.desk.inbound import Mail, command_lines
from bot.digest import ranges
from bot.errors import MailError, RangeError
from bot.parse.body import cut_commit_message, split_body, split_inbody_headers
from bot.parse.message import parse_message
from bot.parse.subject import parse_subject

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
# Text made of the pieces real subjects and ranges are made of, so the
# interesting paths are reached, not just the "no match" one.
PIECES = st.lists(
    st.sampled_from(
        [
            "[",
            "]",
            "PATCH",
            "v2",
            "V",
            "3/7",
            "0/",
            "/",
            "Re:",
            "Aw:",
            " ",
            ",",
            "RFC",
            "GIT PULL",
            "..",
            "abcdef1",
            "0000000",
            "-",
            "\t",
            "\n",
            "Fwd:",
            "since",
            "until",
            "last",
            "days",
            "2021-03-01",
            "From:",
            "---",
            " 1 file changed",
            "diff --git a/x b/x",
            "--- a/x",
            "+++ b/x",
            "-- ",
            ">",
        ]
    ),
    max_size=30,
).map("".join)
ANY_TEXT = st.one_of(TEXT, PIECES)


@given(ANY_TEXT)
def test_subject_parser_accepts_anything(text):
    s = parse_subject(text)
    assert s.version >= 1
    assert "\n" not in s.full and "\n" not in s.title
    assert s.counter is None or s.counter >= 0


def range_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY, commit_id TEXT, received INTEGER)"
    )
    conn.executemany(
        "INSERT INTO messages (commit_id, received) VALUES (?, ?)",
        [("abcdef1" + "0" * 33, 1614592800), ("abcdef2" + "1" * 33, 1614600000)],
    )
    return conn


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT)
def test_range_parser_raises_only_range_error(text):
    conn = range_db()
    try:
        rng = ranges.parse_range(conn, text)
    except RangeError as err:
        assert str(err)
    else:
        assert rng.start_seq <= rng.end_seq


@given(ANY_TEXT)
def test_dates_raise_only_range_error(text):
    try:
        ranges.parse_when(text)
    except RangeError as err:
        assert str(err)


@given(
    ANY_TEXT,
    st.lists(ANY_TEXT, max_size=8),
    st.sampled_from(["kvm-digest@example.org", "kvm-digest+subscribe@example.org", "x+@y"]),
)
def test_command_parser_accepts_anything(subject, lines, rcpt):
    mail = Mail(
        sender="a@b",
        rcpt=rcpt,
        from_addr="a@b",
        subject=subject,
        message_id="",
        references="",
        lines=lines,
        headers={},
    )
    found, _ = command_lines(mail, {"help", "subscribe", "digest", "status"})
    assert len(found) <= 10
    assert all(
        line.split()[0].lower() in {"help", "subscribe", "digest", "status"}
        or line in ("subscribe", "unsubscribe", "help")
        for line in found
    )


@given(st.lists(ANY_TEXT, max_size=4))
def test_body_splitter_accepts_anything(texts):
    body = split_body(texts)
    assert isinstance(body.commit_message, str)
    lines = "\n".join(texts).split("\n")
    cut = cut_commit_message(lines)
    assert len(cut) <= len(lines)
    split_inbody_headers(lines)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=2000),
        PIECES.map(str.encode),
        st.tuples(PIECES, TEXT).map(
            lambda t: f"From: a@b\nSubject: {t[0]}\n\n{t[1]}".encode("utf-8", "surrogatepass")
        ),
    )
)
def test_message_parser_raises_only_mail_error(raw):
    try:
        parsed = parse_message(raw)
    except MailError as err:
        assert str(err)
    else:
        assert parsed.message_id
        assert parsed.kind in ("patch", "cover", "reply", "pull", "other")


CHARSETS = st.sampled_from(
    ["utf-8", "latin-1", "punycode", "idna", "utf-7", "x-unknown", "unicode_escape", "", "utf-16"]
)
HEADER_VALUES = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda cs, q, t: f"=?{cs}?{q}?{t}?=",
        CHARSETS,
        st.sampled_from(["q", "b", "x"]),
        st.text(alphabet="-=0123456789ABCDEFabcdef_+/", max_size=40),
    ),
    st.sampled_from([".@", "@", "<>", "a@b@c", '""@x', "((((((", "=?utf-8?q?=0A?="]),
)


def _hostile_mail(subject: str, sender: str, charset: str, nesting: int, body: bytes) -> bytes:
    head = (
        f"From: {sender}\nTo: kvm@vger.kernel.org\nSubject: {subject}\n"
        "Message-ID: <p@example.org>\nDate: Mon, 1 Mar 2021 10:00:00 +0000\n"
    ).encode("utf-8", "surrogateescape")
    parts = b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1)
        for i in range(nesting)
    )
    ctype = b"Content-Type: multipart/mixed; boundary=b0\n" if nesting else b""
    inner = b"--b%d\n" % nesting if nesting else b""
    return (
        head
        + ctype
        + b"\n"
        + parts
        + inner
        + b"Content-Type: text/plain; charset="
        + charset.encode()
        + b"\n\n"
        + body
    )


@settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    max_examples=150,
)
@given(
    subject=HEADER_VALUES,
    sender=HEADER_VALUES,
    charset=CHARSETS,
    nesting=st.integers(min_value=0, max_value=40),
    body=st.binary(max_size=300),
)
def test_hostile_mail_goes_through_parse_index_and_digest(
    tmp_path_factory, subject, sender, charset, nesting, body
):
    """Whatever the mail, it is stored and rendered, or rejected with MailError."""
    from bot.digest.build import build, environment, render
    from tests.mailfactory import Store

    raw = _hostile_mail(subject, sender, charset, nesting, body)
    try:
        parse_message(raw)
    except MailError:
        return
    store = Store(tmp_path_factory.mktemp("prop"))
    store.add(raw)
    assert store.index.count() == 1
    text = render(build(store.index.conn, ranges.everything(store.index.conn)), environment())
    assert "Top 15 contributors" in text
    store.index.close()
