"""Topics by mail: subscribe with a topic over LMTP, receive only matching series."""

from __future__ import annotations

import mailbox

from bot.delivery import periodic, subscribers
from bot.digest.build import environment
from tests.conftest import archive_ids
from tests.mailfactory import DATA, without_footer
from tests.test_commands import bot, command, reply_text  # noqa: F401 (the bot fixture)
from tests.test_delivery import Setup

GICV5 = "[PATCH 0/2] Enable GICv5 Legacy CPUIF trapping & fix TDIR cap test"
VGIC = "dfn:arch/arm64/kvm/vgic/"


def later_mail() -> list[bytes]:
    """Real KVM mail posted after the slice (the reference digest 000's messages)."""
    return [m.as_bytes() for m in mailbox.mbox(DATA / "reference" / "000.mbox")]


def body(received) -> str:
    """A digest's text, without the reader's own footer."""
    return without_footer(received.message.get_payload(decode=True).decode().replace("\r\n", "\n"))


async def test_subscriber_round_trip_receives_only_matching_series(bot, sink):  # noqa: F811
    conn = bot.store.index.conn
    with conn:  # the daemon starts its schedule at the archive head
        periodic.ensure(conn, "daily")
    await bot.ask(command(f"subscribe daily {VGIC}\n"))
    (confirmation,) = sink.wait_for(1)
    text = reply_text(confirmation)
    said = " ".join(text.split())
    assert "to send the daily KVM digest to una@example.org, with only the series" in said
    assert f"\n    {VGIC}\n" in text and text.count(VGIC) == 1  # quoted once
    token = confirmation.message["Subject"].split()[1]
    await bot.ask(command(f"confirm {token}\n"))
    welcome = reply_text(sink.wait_for(2)[1])
    assert "now receives the daily digest." in welcome
    assert f"Topic:  only the series matching\n        {VGIC}\n" in welcome
    assert welcome.count(VGIC) == 1  # quoted once
    await bot.ask(command("status\n"))
    assert f"Topic, only matching series:\n    {VGIC}\n" in reply_text(sink.wait_for(3)[2])
    with conn:
        subscribers.subscribe(conn, "same@example.org", "daily", VGIC)
        subscribers.subscribe(conn, "all@example.org", "daily")
        subscribers.subscribe(conn, "riscv@example.org", "daily", "dfn:arch/riscv/")

    bot.store.importer.run([(str(i), m) for i, m in enumerate(later_mail())], "later")
    result = periodic.run(conn, bot.config, bot.outbox, environment(), "daily")
    # One rendering per (schedule, topic) that matched; riscv matched nothing.
    assert (len(result.digests), result.recipients) == (2, 3)
    await bot.sender.flush()
    digests = {r.recipients[0]: r for r in sink.wait_for(6)[3:]}
    assert sorted(digests) == ["all@example.org", "same@example.org", "una@example.org"]
    mine = body(digests["una@example.org"])
    assert mine == body(digests["same@example.org"])
    assert digests["una@example.org"].message["Subject"].endswith(f" [{VGIC}]")
    assert {line for line in mine.splitlines() if line.startswith("[PATCH")} == {
        GICV5,  # in the patch list and as its entry
        "[PATCH 1/2] KVM: arm64: gic: Enable GICv3 CPUIF trapping on GICv5 hosts if required",
    }
    assert "virtio" not in mine and "vfio" not in mine
    everything = body(digests["all@example.org"])
    assert GICV5 in everything and "[PATCH] vfio/pci: Skip hot reset on Link-Down" in everything
    assert not digests["all@example.org"].message["Subject"].endswith("]")
    rows = conn.execute("SELECT topic FROM digests ORDER BY topic").fetchall()
    assert rows == [("",), (VGIC,)]


async def test_topic_command_changes_and_clears_the_topic(bot, sink):  # noqa: F811
    conn = bot.store.index.conn
    await bot.ask(command("topic s:x86\n"))
    assert "una@example.org is not subscribed; send 'subscribe daily'" in reply_text(
        sink.wait_for(1)[0]
    )
    with conn:
        subscribers.subscribe(conn, "una@example.org", "weekly")

    async def confirmed(ask: str, n: int) -> str:
        """Ask, answer the confirmation, and return the reply to the answer."""
        await bot.ask(command(ask + "\n"))
        asked = sink.wait_for(n)[n - 1].message["Subject"]
        assert asked.startswith("confirm ")
        await bot.ask(command(subject=f"Re: {asked}"))
        return reply_text(sink.wait_for(n + 1)[n])

    wanted = 's:"vgic v5" OR dfn:arch/arm64/'
    said = await confirmed(f"topic {wanted}", 2)
    assert f"now receives only the series matching its topic:\n\n    {wanted}\n" in said
    assert subscribers.get(conn, "una@example.org").topic == wanted
    await bot.ask(command("topic subject:x86\n"))
    assert "subject: is not a search prefix" in reply_text(sink.wait_for(4)[3])
    assert subscribers.get(conn, "una@example.org").topic == wanted
    said = await confirmed("topic none", 5)
    assert "now receives the whole list in its digest." in said
    assert subscribers.get(conn, "una@example.org").topic == ""
    await bot.ask(command("status\n"))
    status = reply_text(sink.wait_for(7)[6])
    assert "Topic: none, the whole list." in status
    assert "only matching series" not in status
    await bot.ask(command("subscribe daily (s:x86\n"))
    assert "a '(' is not closed by a ')'" in reply_text(sink.wait_for(8)[7])
    assert conn.execute("SELECT COUNT(*) FROM tokens").fetchone() == (0,)


async def test_one_off_digest_with_a_query_by_mail(bot, sink):  # noqa: F811
    ids = archive_ids(bot.store.root)
    a, b = ids[10][:9], ids[-1][:9]  # 16 messages: under the limit of 20
    bot.subscribe()  # a digest by mail goes at once to a confirmed subscriber
    await bot.ask(command(f"digest {a}..{b} dfn:arch/arm64/kvm/hyp/nvhe/\n"))
    reply = sink.wait_for(1)[0]
    assert reply.message["Subject"] == (
        f"KVM mailing list update from {a} to {b} [dfn:arch/arm64/kvm/hyp/nvhe/]"
    )
    text = reply_text(reply)
    assert "New:  A couple of EL2 refcounts fixes" in text and "regmap" not in text
    # Two ids, then the query; and a time window, then the query.
    await bot.ask(command(f"digest {a} {b} s:regmap\n"))
    text = reply_text(sink.wait_for(2)[1])
    assert "New:  arm64: KVM: regmap: Mark expected switch fall-through" in text
    assert "refcounts" not in text
    await bot.ask(command("digest since 2021-09-01 s:refcount\n"))
    text = reply_text(sink.wait_for(3)[2])
    assert "New:  A couple of EL2 refcounts fixes" in text and "ITS device" not in text
    await bot.ask(command("digest last 3 days s:(\n"))
    assert "s: needs a subject after it" in reply_text(sink.wait_for(4)[3])


async def test_send_empty_sends_a_topic_that_matched_nothing(tmp_path, sink):
    setup = Setup(tmp_path / "s", sink, send_empty=True)
    with setup.conn:
        subscribers.subscribe(setup.conn, "riscv@example.org", "daily", "dfn:arch/riscv/")
        subscribers.subscribe(setup.conn, "thing@example.org", "daily", "dfn:virt/kvm/")
        # A topic stored by an older version that no longer parses is skipped
        # (and logged); it does not stop the others.
        subscribers.subscribe(setup.conn, "old@example.org", "daily")
        setup.conn.execute("UPDATE subscribers SET topic = 's:' WHERE address = 'old@example.org'")
    setup.post(2)
    result = setup.run()
    assert (len(result.digests), result.recipients) == (2, 2)
    await setup.sender.flush()
    got = {r.recipients[0]: body(r) for r in sink.wait_for(2)}
    assert "New:  change 1" in got["thing@example.org"]
    assert got["riscv@example.org"].endswith(
        "===== Patch list in this time period =====\n\n\n===== Patch Commit Messages ====\n\n"
    )
