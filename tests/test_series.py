"""Threading and series, on mail that arrives in any order."""

from __future__ import annotations

import itertools

import pytest

from bot.digest import build as digest
from bot.digest import ranges
from tests.mailfactory import COVER_BODY, PATCH_BODY, Store, mail

ANN = "Ann Author <ann@example.org>"
BOB = "Bob Reviewer <bob@example.org>"


def cover_series(version: int = 1, total: int = 3, prefix: str = "s") -> list[bytes]:
    """A cover letter and its patches, each patch replying to the cover."""
    v = f" v{version}" if version > 1 else ""
    root = f"{prefix}-0@x"
    msgs = [mail(f"[PATCH{v} 0/{total}] the thing", root, body=COVER_BODY)]
    for n in range(1, total + 1):
        msgs.append(
            mail(
                f"[PATCH{v} {n}/{total}] part {n}",
                f"{prefix}-{n}@x",
                irt=root,
                refs=[root],
                minutes=n,
            )
        )
    return msgs


def patch_lines(store: Store) -> list[str]:
    rng = ranges.everything(store.index.conn)
    return [f"{s.subject} | {s.summary}" for s in digest.patch_list(store.index.conn, rng)]


def test_with_cover_letter(store):
    store.add(*cover_series())
    ids = {store.series_of(f"s-{n}@x") for n in range(4)}
    assert len(ids) == 1
    assert patch_lines(store) == ["[PATCH 0/3] the thing | 3/3 patches, cover letter"]


def test_without_cover_patches_reply_to_the_first(store):
    store.add(
        mail("[PATCH 1/3] one", "p1@x"),
        mail("[PATCH 2/3] two", "p2@x", irt="p1@x", refs=["p1@x"]),
        mail("[PATCH 3/3] three", "p3@x", irt="p1@x", refs=["p1@x"]),
    )
    assert patch_lines(store) == ["[PATCH 1/3] one | 3/3 patches"]


def test_deep_threaded_each_patch_replies_to_the_previous(store):
    refs: list[str] = []
    msgs = []
    for n in range(0, 5):
        subject = f"[PATCH {n}/4] " + ("cover" if n == 0 else f"part {n}")
        msgs.append(
            mail(
                subject,
                f"d{n}@x",
                irt=refs[-1] if refs else None,
                refs=list(refs),
                body=COVER_BODY if n == 0 else PATCH_BODY,
            )
        )
        refs.append(f"d{n}@x")
    store.add(*msgs)
    assert patch_lines(store) == ["[PATCH 0/4] cover | 4/4 patches, cover letter"]


def test_no_references_same_sender_within_the_hour(store):
    store.add(
        mail("[PATCH 1/2] one", "n1@x", minutes=0),
        mail("[PATCH 2/2] two", "n2@x", minutes=2),
        # Another sender's 1/2 at the same time is another series.
        mail("[PATCH 1/2] other", "o1@x", frm=BOB, minutes=1),
        # The same sender's 1/2 three hours later, changed, is a new posting.
        mail("[PATCH 1/2] one", "n1-again@x", body="Reworded.\n\n" + PATCH_BODY, minutes=180),
    )
    assert store.series_of("n1@x") == store.series_of("n2@x")
    assert store.series_of("o1@x") != store.series_of("n1@x")
    assert store.series_of("n1-again@x") != store.series_of("n1@x")


def test_v2_in_reply_to_v1_is_a_new_series(store):
    store.add(*cover_series(1, 2, "v1"))
    v2 = cover_series(2, 2, "v2")
    # git send-email --in-reply-to=<v1 cover>
    v2[0] = mail(
        "[PATCH v2 0/2] the thing",
        "v2-0@x",
        irt="v1-0@x",
        refs=["v1-0@x"],
        body=COVER_BODY,
    )
    store.add(*v2)
    assert store.series_of("v1-1@x") == store.series_of("v1-0@x")
    assert store.series_of("v2-1@x") == store.series_of("v2-0@x")
    assert store.series_of("v2-0@x") != store.series_of("v1-0@x")
    assert patch_lines(store) == [
        "[PATCH 0/2] the thing | 2/2 patches, cover letter",
        "[PATCH v2 0/2] the thing | 2/2 patches, cover letter",
    ]


def test_v2_patch_without_cover_replying_to_v1_patch(store):
    store.add(
        mail("[PATCH 1/1] fix", "a1@x"),
        mail("[PATCH v2 1/1] fix", "a2@x", irt="a1@x", refs=["a1@x"]),
    )
    assert store.series_of("a1@x") != store.series_of("a2@x")


def test_patches_in_reply_to_a_pull_request_are_one_series(store):
    store.add(
        mail("[GIT PULL] KVM fixes", "pull@x", body="Please pull.\n"),
        *[
            mail(f"[PATCH {n}/3] fix {n}", f"pp{n}@x", irt="pull@x", refs=["pull@x"])
            for n in (1, 2, 3)
        ],
    )
    assert patch_lines(store) == ["[PATCH 1/3] fix 1 | 3/3 patches"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4)))[::5])
def test_any_arrival_order_gives_the_same_series(tmp_path, order):
    msgs = cover_series()
    msgs.append(
        mail(
            "Re: [PATCH 2/3] part 2",
            "r@x",
            frm=BOB,
            irt="s-2@x",
            refs=["s-0@x", "s-2@x"],
            body="Looks good.\n",
            minutes=30,
        )
    )
    store = Store(tmp_path / "s")
    store.add(*[msgs[i] for i in order], msgs[4])
    series = {store.series_of(f"s-{n}@x") for n in range(4)}
    assert len(series) == 1
    assert store.series_of("r@x") == series.pop()


def test_reply_before_its_parent_is_resolved_when_the_parent_arrives(store):
    store.add(
        mail(
            "Re: [PATCH 1/2] part 1",
            "r1@x",
            frm=BOB,
            irt="s-1@x",
            refs=["s-0@x", "s-1@x"],
            body="Nit.\n",
        )
    )
    assert store.series_of("r1@x") is None
    store.add(*cover_series(1, 2))
    assert store.series_of("r1@x") == store.series_of("s-0@x")
    assert patch_lines(store) == ["[PATCH 0/2] the thing | 2/2 patches, cover letter, 1 reply"]


def test_reply_without_references_finds_its_patch_by_subject(store):
    store.add(*cover_series(1, 2))
    store.add(mail("Re: [PATCH 2/2] part 2", "lost@x", frm=BOB, body="Hm.\n"))
    assert store.series_of("lost@x") == store.series_of("s-0@x")


def test_patch_before_its_cover_letter(store):
    msgs = cover_series(1, 2)
    store.add(msgs[1], msgs[2], msgs[0])
    assert patch_lines(store) == ["[PATCH 0/2] the thing | 2/2 patches, cover letter"]


def test_unnumbered_patches_are_each_their_own_series(store):
    store.add(
        mail("[PATCH] one", "u1@x"),
        mail("[PATCH] two", "u2@x", irt="u1@x", refs=["u1@x"]),
    )
    assert store.series_of("u1@x") != store.series_of("u2@x")
    assert patch_lines(store) == [
        "[PATCH] one | 1/1 patches",
        "[PATCH] two | 1/1 patches",
    ]


def test_thread_ids_follow_the_references_root(store):
    store.add(*cover_series(1, 2))
    store.add(
        mail(
            "Re: [PATCH 1/2] part 1",
            "t@x",
            frm=BOB,
            irt="s-1@x",
            refs=["s-0@x", "s-1@x"],
            body="Ok.\n",
        )
    )
    assert store.row("t@x")["thread_id"] == "s-0@x"
    threads = store.index.conn.execute(
        "SELECT messages FROM threads WHERE thread_id = 's-0@x'"
    ).fetchone()
    assert threads == (4,)


def v2_all_in_reply_to_v1() -> list[bytes]:
    """v1 with its patches, then a v2 cover and v2 patches all answering v1's
    cover (git send-email --in-reply-to=<v1 cover> for the whole v2 set)."""
    msgs = cover_series(1, 2, "v1")
    msgs.append(
        mail(
            "[PATCH v2 0/2] the thing",
            "v2-0@x",
            irt="v1-0@x",
            refs=["v1-0@x"],
            body=COVER_BODY,
            minutes=60,
        )
    )
    for n in (1, 2):
        msgs.append(
            mail(
                f"[PATCH v2 {n}/2] part {n}",
                f"v2-{n}@x",
                irt="v1-0@x",
                refs=["v1-0@x"],
                minutes=60 + n,
            )
        )
    return msgs


@pytest.mark.parametrize("order", [(0, 1, 2, 3, 4, 5), (4, 5, 0, 1, 2, 3), (5, 4, 3, 2, 1, 0)])
def test_v2_cover_and_patches_all_in_reply_to_v1_cover(tmp_path, order):
    msgs = v2_all_in_reply_to_v1()
    store = Store(tmp_path / "s")
    store.add(*[msgs[i] for i in order])
    assert {store.series_of(f"v2-{n}@x") for n in range(3)} == {store.series_of("v2-0@x")}
    assert store.series_of("v2-0@x") != store.series_of("v1-0@x")
    assert sorted(patch_lines(store)) == [
        "[PATCH 0/2] the thing | 2/2 patches, cover letter",
        "[PATCH v2 0/2] the thing | 2/2 patches, cover letter",
    ]


def test_v2_patches_without_a_v2_cover_under_the_v1_cover_are_a_new_series(store):
    store.add(*cover_series(1, 2, "v1"))
    store.add(mail("[PATCH v2 1/2] part 1", "w1@x", irt="v1-0@x", refs=["v1-0@x"]))
    assert store.series_of("w1@x") != store.series_of("v1-0@x")


def test_patches_omitting_the_version_join_their_cover_letter(store):
    # patchwork's convention: [PATCH 1/4] under [PATCH net-next v3 0/4].
    store.add(mail("[PATCH net-next v3 0/4] net: things", "n0@x", body=COVER_BODY))
    for n in range(1, 5):
        store.add(mail(f"[PATCH {n}/4] net: thing {n}", f"n{n}@x", irt="n0@x", refs=["n0@x"]))
    # Another sender's patch answering that cover letter is not part of it.
    store.add(mail("[PATCH 1/4] net: mine", "o1@x", frm=BOB, irt="n0@x", refs=["n0@x"]))
    assert {store.series_of(f"n{n}@x") for n in range(5)} == {store.series_of("n0@x")}
    assert store.series_of("o1@x") != store.series_of("n0@x")
    assert patch_lines(store)[0] == (
        "[PATCH net-next v3 0/4] net: things | 4/4 patches, cover letter"
    )


def test_mercurial_numbering_forms_a_series(store):
    store.add(mail("[PATCH 0 of 2] hg: things", "h0@x", body=COVER_BODY))
    for n in (1, 2):
        store.add(mail(f"[PATCH {n} of 2] hg: thing {n}", f"h{n}@x", irt="h0@x", refs=["h0@x"]))
    assert patch_lines(store) == ["[PATCH 0 of 2] hg: things | 2/2 patches, cover letter"]
    assert store.row("h1@x")["is_entry"] and not store.row("h2@x")["is_entry"]


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (1, 2, 3, 0), (3, 2, 1, 0)])
def test_a_cover_letter_sent_twice_with_patches_on_the_second_copy(tmp_path, order):
    msgs = [
        mail("[PATCH 0/2] the thing", "c1@x", body=COVER_BODY),
        mail("[PATCH 0/2] the thing", "c2@x", body=COVER_BODY, minutes=1),
        mail("[PATCH 1/2] part 1", "c2-1@x", irt="c2@x", refs=["c2@x"], minutes=2),
        mail("[PATCH 2/2] part 2", "c2-2@x", irt="c2@x", refs=["c2@x"], minutes=2),
    ]
    store = Store(tmp_path / "s")
    store.add(*[msgs[i] for i in order])
    assert patch_lines(store) == ["[PATCH 0/2] the thing | 2/2 patches, cover letter"]
    entries = digest.entries(store.index.conn, ranges.everything(store.index.conn))
    # Two cover letters and the 1/2; whichever copy came second is the duplicate.
    assert sorted(e.duplicate for e in entries) == [False, False, True]


def test_a_resend_of_a_whole_series_adds_no_line(store):
    store.add(*cover_series(1, 2, "a"))
    later = [
        mail("[PATCH 0/2] the thing", "b-0@x", body=COVER_BODY, minutes=1440),
        mail("[PATCH 1/2] part 1", "b-1@x", irt="b-0@x", refs=["b-0@x"], minutes=1441),
        mail("[PATCH 2/2] part 2", "b-2@x", irt="b-0@x", refs=["b-0@x"], minutes=1441),
    ]
    store.add(*later)
    # FORMAT.md: a duplicate copy belongs to its original's series.
    assert {store.series_of(f"b-{n}@x") for n in range(3)} == {store.series_of("a-0@x")}
    assert patch_lines(store) == ["[PATCH 0/2] the thing | 2/2 patches, cover letter"]
    # The same subject with changed text a day later is a new posting.
    store.add(mail("[PATCH 0/2] the thing", "c-0@x", body="Changed.\n", minutes=2880))
    assert not store.row("c-0@x")["is_dup"]
    assert store.row("b-0@x")["is_dup"] and store.row("b-1@x")["is_dup"]
