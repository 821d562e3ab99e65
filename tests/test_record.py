"""Records behave as frozen dataclasses do (bot/record.py says why they are not)."""

from __future__ import annotations

import pickle
from typing import ClassVar

import pytest

from bot.record import Record, field, fields, replace


class Point(Record):
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    secret: str = field(default="", repr=False)
    KIND: ClassVar[str] = "point"


class Pair(Record):
    a: int
    b: str = ""


class Labelled(Point):
    label: str = "here"


def test_fields_come_in_annotation_order_a_subclass_after_its_base():
    assert fields(Point) == ("x", "y", "tags", "secret")
    assert fields(Labelled) == ("x", "y", "tags", "secret", "label")
    assert Point.KIND == "point"


def test_a_record_is_built_by_position_or_keyword_with_defaults():
    assert Point(1, 2) == Point(x=1, y=2) == Point(1, y=2)
    assert Point(1).y == 0
    assert Point(1).tags is not Point(1).tags  # a factory makes one for each record


def test_a_record_cannot_be_changed_after_it_is_made():
    p = Point(1)
    with pytest.raises(AttributeError, match="cannot assign to field 'x'"):
        p.x = 2
    with pytest.raises(AttributeError):
        del p.y
    assert replace(p, y=5) == Point(1, 5) and p.y == 0
    with pytest.raises(TypeError, match="has no field z"):
        replace(p, z=5)


def test_records_are_equal_and_hash_alike_by_value_within_one_class():
    assert Point(1, 2) != Point(1, 3)
    assert Point(1) != Labelled(1)  # another class, as with dataclasses
    assert hash(Pair(1, "a")) == hash(Pair(1, "a"))
    assert {Pair(1, "a"): "found"}[Pair(1, "a")] == "found"
    with pytest.raises(TypeError):  # a list inside is unhashable, as in a dataclass
        hash(Point(1))


def test_the_repr_names_each_field_but_one_kept_out():
    shown = repr(Point(1, secret="hunter2"))
    assert shown == "Point(x=1, y=0, tags=[])"
    assert "hunter2" not in repr(Labelled(1, secret="hunter2"))


def test_wrong_construction_is_a_type_error_naming_the_field():
    with pytest.raises(TypeError, match="needs a value for x"):
        Point()
    with pytest.raises(TypeError, match="has no field z"):
        Point(1, z=3)
    with pytest.raises(TypeError, match="two values for x"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="takes 4 fields, not 5"):
        Point(1, 2, [], "", "extra")


def test_a_required_field_after_a_default_is_refused_when_the_class_is_made():
    with pytest.raises(TypeError, match="field b, without a default, follows a"):

        class Bad(Record):
            a: int = 0
            b: int


def test_post_init_checks_every_construction_and_replace():
    class Positive(Record):
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("negative")

    with pytest.raises(ValueError):
        Positive(-1)
    with pytest.raises(ValueError):
        replace(Positive(1), n=-1)


def test_a_record_survives_pickling_as_worker_processes_receive_it():
    p = Labelled(1, 2, ["a"], "s", "there")
    assert pickle.loads(pickle.dumps(p)) == p


def test_a_parsed_message_crosses_to_the_writer_as_its_values_alone():
    from bot.parse.message import parse_message
    from tests.mailfactory import PATCH_BODY, mail

    parsed = parse_message(
        mail(
            "[PATCH v2 1/3] KVM: arm64: a fix",
            "p1@example.org",
            body="From: Jane Roe <jane@example.org>\n\n" + PATCH_BODY,
            irt="cover@example.org",
            headers={"Cc": "Joe <joe@example.org>"},
        )
    )
    data = pickle.dumps(parsed, protocol=5)
    back = pickle.loads(data)
    assert back == parsed
    assert (back.subject, back.notes) == (parsed.subject, parsed.notes)
    assert back.is_entry and back.parent_ids == parsed.parent_ids
    # No field name is written: each instance is its class and a tuple.
    for name in ("commit_message", "author_addr", "addressees", "title", "change_id"):
        assert name.encode() not in data
