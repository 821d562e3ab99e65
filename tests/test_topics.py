"""Topics: lei-style queries, diff paths in the index, filtered digests, on real mail."""

from __future__ import annotations

import mailbox
import sqlite3
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.digest import build as digestmod
from bot.digest import query, ranges
from bot.digest.query import And, Not, Or, QueryError, Term
from bot.parse import paths
from bot.parse.paths import touched
from tests.mailfactory import DATA, Store

SLICE = [m.as_bytes() for m in mailbox.mbox(DATA / "kvmarm-slice.mbox")]
REFCOUNT_V1 = "[PATCH 0/2] A couple of EL2 refcounts fixes"
REFCOUNT_V2 = "[PATCH v2 0/2] A couple of EL2 refcounts fixes"
MAINTAINERS = "[PATCH 1/3] MAINTAINERS: KVM: arm/arm64: Remove myself as maintainer"


@pytest.fixture(scope="module")
def kvmarm(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    """The 27-message slice of the real kvmarm list, indexed once."""
    store = Store(tmp_path_factory.mktemp("topics") / "store")
    store.importer.run([(str(i), m) for i, m in enumerate(SLICE)], "slice")
    return store.index.conn


def between(conn: sqlite3.Connection, start: int, end: int) -> ranges.Range:
    """The range (start, end] by archive positions."""
    return ranges.Range(start, end, ranges._id_at(conn, start), ranges._id_at(conn, end))


def digest(conn: sqlite3.Connection, q: str | None, rng: ranges.Range | None = None):
    return digestmod.build(conn, rng or ranges.everything(conn), query=q)


def listed(d: digestmod.Digest) -> list[str]:
    return [s.subject for s in d.series]


def new(d: digestmod.Digest) -> list[str]:
    return [e.subject for e in d.entries]


# -- the parser ------------------------------------------------------------


def test_parse_builds_the_tree_lei_users_expect():
    assert query.parse("dfn:arch/arm64/kvm/ OR s:arm64") == Or(
        (Term("dfn", "arch/arm64/kvm/"), Term("s", "arm64"))
    )
    assert query.parse('s:"vgic v5" -f:maz NOT b:RFC') == And(
        (Term("s", "vgic v5"), Not(Term("f", "maz")), Not(Term("b", "RFC")))
    )
    # AND binds tighter than OR; parentheses group; AND may be written.
    assert query.parse("a b OR (c AND d)") == Or(
        (And((Term("", "a"), Term("", "b"))), And((Term("", "c"), Term("", "d"))))
    )
    assert query.parse('-(s:x86 OR "kvm: x86")') == Not(
        Or((Term("s", "x86"), Term("", "kvm: x86")))
    )
    assert query.parse("S:ARM") == Term("s", "ARM")  # prefixes in any case, values kept
    assert query.parse("or not") == And((Term("", "or"), Term("", "not")))  # lower case: words


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "the query is empty"),
        ("   ", "the query is empty"),
        ("subject:arm64", "subject: is not a search prefix; use s:, f:, b:, dfn:"),
        ("KVM: arm64", 'quote a word that ends in a colon ("KVM:")'),
        ("s:", "s: needs a subject after it"),
        ("dfn: arch/arm64", "dfn: needs a file path after it"),
        ('s:"vgic v5', "is not closed"),
        ("(s:arm64 OR s:x86", "a '(' is not closed by a ')'"),
        ("s:arm64)", "there is a ')' without a matching '('"),
        ("()", "the parentheses '()' hold nothing"),
        ("s:arm64 OR", "OR at the end needs a term after it"),
        ("NOT", "NOT at the end needs a term after it"),
        ("OR s:arm64", "'OR' comes where a term was expected"),
        ("s:a OR OR s:b", "'OR' comes where a term was expected"),
        ("- s:rfc", "a lone '-' must be written against its term"),
        ('""', 'an empty phrase "" matches nothing'),
        ("s:a\rb", "control character"),
        ("x" * 501, "longer than 500 characters"),
        ("(" * 30 + "a" + ")" * 30, "nests deeper than 20 levels"),
        (" ".join(["a"] * 41), "more than 40 terms"),
    ],
)
def test_malformed_queries_say_what_is_wrong_with_an_example(text, says):
    with pytest.raises(QueryError) as err:
        query.parse(text)
    message = str(err.value)
    assert says in message
    assert message.endswith("e.g. 'dfn:arch/arm64/kvm/ OR s:arm64'")
    assert "\n" not in message


_ALPHABET = st.sampled_from(
    [*"()\"-+: \t\nabsfdnORNOTAND\\%_*'\x00\r/é", "s:", "dfn:", " OR ", " NOT ", "\u2028"]
)


@given(st.lists(_ALPHABET, max_size=40).map("".join) | st.text(max_size=80))
def test_any_text_parses_or_raises_our_error_and_never_reaches_sql_as_text(text):
    try:
        tree = query.parse(text)
    except QueryError as err:
        assert str(err).endswith(query.EXAMPLE)
        return
    sql, params = query.compile_sql(tree)
    # Values are bound parameters: the SQL holds only our own fixed text.
    assert sql.count("?") == len(params)
    for param in params:
        stripped = param.strip("%").replace("\\", "")
        if len(stripped) > 2:
            assert stripped not in sql
    conn = sqlite3.connect(":memory:")
    conn.executescript(
        "CREATE TABLE messages (seq INTEGER, subject TEXT, body TEXT,"
        " from_name TEXT, from_addr TEXT);"
        "CREATE TABLE paths (seq INTEGER, path TEXT);"
        "INSERT INTO messages VALUES (1, 'a', 'b', 'c', 'd');"
    )
    conn.execute(f"SELECT seq FROM messages m WHERE {sql}", params).fetchall()
    # The normal form shown in subjects is one line and reads back the same.
    assert query.parse(query.normal(text)) == tree
    assert "\n" not in query.normal(text)


def test_like_wildcards_in_values_match_literally(kvmarm):
    # '%' and '_' are LIKE wildcards; typed in a query they mean themselves.
    assert digest(kvmarm, "s:%").messages == 0
    assert digest(kvmarm, "b:_").messages > 0  # bodies hold underscores ("kvm_host")
    assert digest(kvmarm, "s:PGD_").messages == 0


# -- file paths from diff headers ------------------------------------------


def test_paths_of_real_patches_come_from_their_diffs(kvmarm):
    rows = dict(
        kvmarm.execute(
            "SELECT m.subject, group_concat(p.path, ' ') FROM messages m"
            " JOIN paths p USING (seq) GROUP BY m.seq"
        ).fetchall()
    )
    subject = "[PATCH 3/3] KVM: arm/arm64: Move cc/it checks under hyp's Makefile to avoid "
    assert rows[subject + "instrumentation"] == (
        "arch/arm/kvm/hyp/Makefile arch/arm64/kvm/hyp/Makefile virt/kvm/arm/aarch32.c"
        " virt/kvm/arm/hyp/aarch32.c"
    )  # a rename: both names count
    # The diffstat abbreviates it (.../testing/selftests/...); the diff does not.
    assert rows["[PATCH v3 10/10] KVM: arm64: selftests: Add basic ITS device tests"] == (
        "tools/testing/selftests/kvm/aarch64/vgic_init.c"
    )
    # Cover letters (a diffstat, no diff) and replies have no paths.
    kinds = {
        k for (k,) in kvmarm.execute("SELECT DISTINCT kind FROM messages JOIN paths USING (seq)")
    }
    assert kinds == {"patch"}


def test_paths_of_every_diff_header_shape():
    text = "\n".join(
        [
            "diff --git a/old name.c b/new name.c",
            "similarity index 90%",
            "rename from old name.c",
            "rename to new name.c",
            'diff --git "a/caf\\303\\251.c" "b/caf\\303\\251.c"',
            "new file mode 100644",
            "--- /dev/null",
            '+++ "b/caf\\303\\251.c"',
            "@@ -0,0 +1,3 @@",
            "+--- not/a/header.c",
            "++++ not/either.c",
            "+x",
            "--- linux-5.4.orig/arch/x86/kvm/x86.c\t2021-01-01 00:00:00",
            "+++ linux-5.4/arch/x86/kvm/x86.c\t2021-01-01 00:00:00",
            "@@ -1,2 +1,2 @@",
            "--- removed line that looks like a header",
            "+++ added line that looks like one",
            "diff --git a/gone.c b/gone.c",
            "deleted file mode 100644",
            "--- a/gone.c",
            "+++ /dev/null",
        ]
    )
    assert touched([text, "no diff here\n--- \n"]) == [
        "arch/x86/kvm/x86.c",
        "café.c",
        "gone.c",
        "new name.c",
        "old name.c",
    ]


def test_a_hunk_body_is_skipped_by_its_line_counts():
    """Every line a hunk's counts cover is body, however it reads; the next is a header."""
    body = ["-- looks/like/old.c", "++ looks/like/new.c"] * 200 + [" context", ""]
    text = "\n".join(
        [
            "diff --git a/first.c b/first.c",
            "--- a/first.c",
            "+++ b/first.c",
            "@@ -1,202 +1,202 @@",
            *body,
            "\\ No newline at end of file",
            "--- a/second.c",
            "+++ b/second.c",
            "@@ -1 +1 @@",
            "-x",
            "+y",
            "rename from third.c",
        ]
    )
    assert touched([text]) == ["first.c", "second.c", "third.c"]


class CountedLines(list):
    """Lines that count how many of them any slice copied."""

    copied = 0

    def __getitem__(self, index):
        got = super().__getitem__(index)
        if isinstance(index, slice):
            self.copied += len(got)
        return got


def test_hunks_that_claim_more_lines_than_they_have_cost_the_lines_they_have():
    """A hostile patch of hunk headers claiming 999,999,999 lines each: the scan
    reads each line a bounded number of times (it took 118 s for 1.3 MB when
    every header copied the rest of the mail)."""
    lines = CountedLines(["diff --git a/x.c b/x.c"] + ["@@ -1,999999999 +1 @@", "-x"] * 5000)
    found: set[str] = set()
    paths._scan(lines, found)
    assert found == {"x.c"}
    assert lines.copied <= 8 * len(lines)


def test_reindex_builds_paths_for_an_existing_archive(cli, data_dir, tmp_path):
    mbox = tmp_path / "slice.mbox"
    mbox.write_bytes((DATA / "kvmarm-slice.mbox").read_bytes())
    assert cli("import", mbox).code == 0
    conn = sqlite3.connect(data_dir / "index.sqlite3")
    before = conn.execute("SELECT seq, path FROM paths ORDER BY 1, 2").fetchall()
    conn.execute("DELETE FROM paths")
    conn.commit()
    conn.close()
    assert cli("reindex").code == 0
    conn = sqlite3.connect(data_dir / "index.sqlite3")
    assert conn.execute("SELECT seq, path FROM paths ORDER BY 1, 2").fetchall() == before
    assert len(before) == 40


# -- filtered digests --------------------------------------------------------


def test_unfiltered_output_is_unchanged_by_an_empty_query(kvmarm):
    env = digestmod.environment()
    assert digestmod.render(digest(kvmarm, None), env) == digestmod.render(digest(kvmarm, ""), env)


def test_dfn_prefix_shows_whole_series_and_counts_their_threads(kvmarm):
    d = digest(kvmarm, "dfn:arch/arm64/kvm/hyp/nvhe/")
    assert listed(d) == [REFCOUNT_V1]
    assert new(d) == [REFCOUNT_V1, "[PATCH 1/2] KVM: arm64: Fix host stage-2 PGD refcount"]
    # v2 was posted in reply to v1: its cover letter and Marc's reply are in
    # v1's thread, so they count, though v2 (no diff of its own here) is not listed.
    assert d.messages == 5
    assert dict((who, n) for n, who in d.people) == {
        "Quentin Perret <qperret@google.com>": 4,
        "Marc Zyngier <maz@kernel.org>": 1,
    }
    assert d.subject.endswith(" [dfn:arch/arm64/kvm/hyp/nvhe/]")
    # A prefix is a string prefix of the path, case-sensitive.
    assert listed(digest(kvmarm, "dfn:arch/arm64/kvm/hyp/nv")) == [REFCOUNT_V1]
    assert listed(digest(kvmarm, "dfn:Arch/arm64/kvm/hyp/nvhe/")) == []


def test_a_series_matching_by_one_patch_is_shown_whole(kvmarm):
    # Only patch 3/3 touches virt/kvm/arm/; the series is listed with all
    # three patches and its reply, and the entry is its first patch. The
    # patches were sent in reply to the pull request that carries them.
    d = digest(kvmarm, "dfn:virt/kvm/arm/")
    assert [(s.subject, s.summary) for s in d.series] == [(MAINTAINERS, "3/3 patches, 1 reply")]
    assert new(d) == ["[GIT PULL] KVM/arm updates for 5.2-rc2", MAINTAINERS]
    assert d.messages == 5
    # Only patch 1/3 touches MAINTAINERS: the same series.
    assert listed(digest(kvmarm, "dfn:MAINTAINERS")) == [MAINTAINERS]


def test_a_reply_only_range_is_kept_under_its_matching_series(kvmarm):
    (reply_seq,) = kvmarm.execute(
        "SELECT seq FROM messages WHERE subject = ?", ("Re: " + MAINTAINERS,)
    ).fetchone()
    rng = between(kvmarm, reply_seq - 1, reply_seq)
    d = digest(kvmarm, "dfn:virt/kvm/arm/", rng)
    assert d.messages == 1
    assert d.people == [(1, "Paolo Bonzini <pbonzini@redhat.com>")]
    assert listed(d) == [] and new(d) == []  # the series was posted before the range
    assert digest(kvmarm, "dfn:arch/x86/", rng).messages == 0


def test_subject_sender_body_and_bare_words(kvmarm):
    assert listed(digest(kvmarm, "s:refcount")) == [REFCOUNT_V1, REFCOUNT_V2]
    assert listed(digest(kvmarm, "s:REFCOUNT")) == [REFCOUNT_V1, REFCOUNT_V2]
    assert listed(digest(kvmarm, 'f:"Ricardo Koller"')) == [
        "[PATCH v3 10/10] KVM: arm64: selftests: Add basic ITS device tests"
    ]
    assert listed(digest(kvmarm, "f:ricarkol@google.com")) == listed(digest(kvmarm, "f:Ricardo"))
    # A reply's sender does not make a series match: Paolo only replied.
    assert digest(kvmarm, "f:pbonzini").messages == 0
    # b: reads the stored commit message; "PL031" is in that patch's subject
    # too, "familiarize" only in its body.
    assert new(digest(kvmarm, "b:familiarize")) == ["[PATCH kvm-unit-tests] arm: Add PL031 test"]
    assert listed(digest(kvmarm, "s:familiarize")) == []
    assert listed(digest(kvmarm, "familiarize")) == ["[PATCH kvm-unit-tests] arm: Add PL031 test"]
    # Bare words read the subject or the body (this sve fix names kvmtool).
    assert listed(digest(kvmarm, "kvmtool")) == [
        "[PATCH] KVM: arm64/sve: Fix vq_present() macro to yield a bool",
        "[PATCH kvmtool] Add emulation for CFI compatible flash memory",
        "[PATCH kvmtool v4 6/5] pci: Move legacy IRQ assignment into devices",
    ]
    # A pull request is matched on its own subject and body.
    assert new(digest(kvmarm, 's:"GIT PULL"')) == ["[GIT PULL] KVM/arm updates for 5.2-rc2"]


def test_boolean_combinations(kvmarm):
    everything = set(listed(digest(kvmarm, None)))
    arm64 = set(listed(digest(kvmarm, "dfn:arch/arm64/")))
    kvm = set(listed(digest(kvmarm, "dfn:arch/arm64/kvm/")))
    refcount = set(listed(digest(kvmarm, "s:refcount")))
    assert set(listed(digest(kvmarm, "dfn:arch/arm64/kvm/ OR s:refcount"))) == kvm | refcount
    assert set(listed(digest(kvmarm, "dfn:arch/arm64/kvm/ s:refcount"))) == kvm & refcount
    assert listed(digest(kvmarm, "dfn:arch/arm64/kvm/ AND s:refcount")) == [REFCOUNT_V1]
    # NOT applies per message: arm64 patches that touch nothing under kvm/.
    assert set(listed(digest(kvmarm, "dfn:arch/arm64/ NOT dfn:arch/arm64/kvm/"))) == {
        "[RFC PATCH 0/5] KVM: arm64: Add support for contiguous PTE/PMD hugepages at stage2",
        "[PATCH 02/56] arm64: fpsimd: Always set TIF_FOREIGN_FPSTATE on task state flush",
    }
    assert set(listed(digest(kvmarm, "dfn:arch/arm64/ -dfn:arch/arm64/kvm/"))) == (
        set(listed(digest(kvmarm, "dfn:arch/arm64/ NOT dfn:arch/arm64/kvm/")))
    )
    assert listed(digest(kvmarm, '(s:refcount OR s:regmap) -s:"v2 0/2"')) == [
        "[PATCH 1/2] arm64: KVM: regmap: Mark expected switch fall-through",
        REFCOUNT_V1,
    ]
    # A NOT alone keeps every series with a patch that does not match.
    assert set(listed(digest(kvmarm, "NOT dfn:arch/"))) < everything
    assert arm64 < everything and kvm < arm64


def test_empty_result_is_a_digest_of_nothing_with_the_query_in_its_subject(kvmarm):
    d = digest(kvmarm, "s:riscv")
    assert (d.messages, d.series, d.entries, d.people, d.domains) == (0, [], [], [], [])
    text = digestmod.render(d, digestmod.environment())
    assert "mailing list update from" in text and text.splitlines()[1].endswith("[s:riscv]")


def test_malformed_query_reaches_no_sql(kvmarm):
    with pytest.raises(QueryError, match="s: needs a subject"):
        digest(kvmarm, "s:")
    with pytest.raises(QueryError):
        digest(kvmarm, "s:x') OR 1=1 --")


def test_quotes_and_sql_in_values_are_just_text(kvmarm):
    assert digest(kvmarm, 's:"x\' OR 1=1 --"').messages == 0
    assert digest(kvmarm, "dfn:';DROP TABLE messages;").messages == 0
    assert digest(kvmarm, "s:\"x') OR ('1'='1\"").messages == 0
    assert kvmarm.execute("SELECT COUNT(*) FROM messages").fetchone() == (27,)


def test_cli_query_option(cli, data_dir, tmp_path):
    mbox = tmp_path / "slice.mbox"
    mbox.write_bytes((DATA / "kvmarm-slice.mbox").read_bytes())
    assert cli("import", mbox).code == 0
    out = cli("digest", "--all", "--query", "dfn:arch/arm64/kvm/hyp/nvhe/").out
    assert out.splitlines()[1].endswith(" [dfn:arch/arm64/kvm/hyp/nvhe/]")
    assert "New:  A couple of EL2 refcounts fixes" in out
    assert "regmap" not in out
    bad = cli("digest", "--all", "--query", "subject:x")
    assert bad.code != 0
    assert "subject: is not a search prefix" in bad.err
    assert len(bad.err.strip().splitlines()) == 1


def test_index_stores_paths_as_messages_arrive(tmp_path: Path):
    store = Store(tmp_path / "s")
    first = next(m for m in SLICE if b"Subject: [PATCH 1/2] KVM: arm64: Fix host stage-2" in m)
    store.add(first)
    assert store.index.conn.execute("SELECT path FROM paths ORDER BY path").fetchall() == [
        ("arch/arm64/kvm/hyp/include/nvhe/gfp.h",),
        ("arch/arm64/kvm/hyp/nvhe/mem_protect.c",),
        ("arch/arm64/kvm/hyp/nvhe/page_alloc.c",),
    ]


def test_cli_subscribers_add_with_a_topic_and_list_it(cli):
    assert (
        cli("subscribers", "add", "Maz@Example.org", "--topic", "dfn:arch/arm64/kvm/  -s:RFC").code
        == 0
    )
    listing = cli("subscribers", "list").out
    assert (
        listing
        == "maz@example.org\tdaily\tactive\t0 hard failures\ttopic dfn:arch/arm64/kvm/ -s:RFC\n"
    )
    bad = cli("subscribers", "add", "b@example.org", "--topic", "dfn:")
    assert bad.code != 0 and "dfn: needs a file path after it" in bad.err
    assert "b@example.org" not in cli("subscribers", "list").out


_DIFFY = st.sampled_from(
    [
        "diff --git a/x b/y\n",
        "--- a/p q\n",
        "+++ b/p q\n",
        "@@ -1,2 +1 @@\n",
        "@@ -1,99999999999999999999999 +1 @@\n",
        'rename from "a\\303"\n',
        'diff --git "a/\\377\\" b/c\n',
        "-x\n",
        "+y\n",
        " z\n",
        "\\ No newline\n",
        "\ud800/dev/null\t\n",
        "\n",
    ]
)


@given(st.lists(_DIFFY | st.text(max_size=20), max_size=30).map("".join))
def test_path_extraction_never_raises_and_stores_clean_text(text):
    paths = touched([text])
    assert paths == sorted(set(paths))
    for path in paths:
        assert path and path.encode("utf-8").decode("utf-8") == path


def test_paths_agree_with_gits_own_reading_of_each_patch(kvmarm, tmp_path):
    """git mailinfo + git apply --numstat name the same files (we add a rename's old name)."""
    checked = 0
    for raw in SLICE:
        msg = mailbox.mboxMessage(raw)
        row = kvmarm.execute(
            "SELECT seq FROM messages WHERE message_id = ? AND kind = 'patch'",
            (msg["Message-ID"].strip().strip("<>"),),
        ).fetchone()
        if row is None:
            continue
        ours = {p for (p,) in kvmarm.execute("SELECT path FROM paths WHERE seq = ?", row)}
        subprocess.run(
            ["git", "mailinfo", str(tmp_path / "msg"), str(tmp_path / "patch")],
            input=raw,
            capture_output=True,
            check=True,
        )
        numstat = subprocess.run(
            ["git", "apply", "--numstat", str(tmp_path / "patch")],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        ).stdout
        theirs = {line.split("\t", 2)[2] for line in numstat.splitlines()}
        renamed = {
            line.removeprefix("rename from ")
            for line in (tmp_path / "patch").read_text().splitlines()
            if line.startswith("rename from ")
        }
        assert ours == theirs | renamed
        checked += 1
    assert checked == 16
