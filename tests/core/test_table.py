"""The core's one bounded LRU table (core_ext.*.table), both builds, against a model."""

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.conftest import load

BUILDS = ("compiled", "pure")
PROP = settings(max_examples=300, deadline=None)


@pytest.fixture(params=BUILDS, scope="module")
def table(request):
    return load(request.param, "table")


def test_get_touches_and_put_evicts_the_least_recent(table):
    t = table.LRUTable(2)
    assert t.put("a", 1) == 0 and t.put("b", 2) == 0
    assert t.get("a") == 1  # a is now the most recent
    assert t.put("c", 3) == 1  # so b goes
    assert t.keys() == ["a", "c"] and "b" not in t and len(t) == 2
    assert t.get("b") is None


def test_put_replaces_and_touches(table):
    t = table.LRUTable(2)
    t.put("a", 1)
    t.put("b", 2)
    assert t.put("a", 10) == 0
    assert t.keys() == ["b", "a"] and t.peek("a") == 10
    t.put("c", 3)
    assert t.keys() == ["a", "c"]


def test_peek_does_not_touch(table):
    t = table.LRUTable(2)
    t.put("a", 1)
    t.put("b", 2)
    assert t.peek("a") == 1 and t.peek("x") is None
    t.put("c", 3)
    assert t.keys() == ["b", "c"]


def test_pop(table):
    t = table.LRUTable(3)
    t.put(("m", 1), "x")
    assert t.pop(("m", 1)) == "x" and t.pop(("m", 1)) is None
    assert len(t) == 0 and t.keys() == []


def test_capacity_zero_keeps_nothing(table):
    t = table.LRUTable(0)
    assert t.put("a", 1) == 1
    assert len(t) == 0 and t.get("a") is None


def test_bad_arguments(table):
    with pytest.raises(ValueError):
        table.LRUTable(-1)
    with pytest.raises(TypeError):
        table.LRUTable(1).put("a", None)
    with pytest.raises(TypeError):
        table.LRUTable(1).put(["unhashable"], 1)


def test_the_users_share_the_table_type():
    import core_ext

    for kind in BUILDS:
        impl = core_ext.implementation(kind)
        assert impl.table.__name__ == f"core_ext.{kind}.table"
    assert core_ext.table is core_ext.implementation("compiled").table


class ModelLRU:
    """The reference: an OrderedDict used the obvious way."""

    def __init__(self, capacity):
        self.capacity, self.d = capacity, OrderedDict()

    def get(self, key):
        if key not in self.d:
            return None
        self.d.move_to_end(key)
        return self.d[key]

    def peek(self, key):
        return self.d.get(key)

    def put(self, key, value):
        self.d[key] = value
        self.d.move_to_end(key)
        evicted = 0
        while len(self.d) > self.capacity:
            self.d.popitem(last=False)
            evicted += 1
        return evicted

    def pop(self, key):
        return self.d.pop(key, None)

    def keys(self):
        return list(self.d)

    def __len__(self):
        return len(self.d)


ops = st.lists(
    st.tuples(
        st.sampled_from(("get", "peek", "put", "pop", "contains")),
        st.sampled_from(("a", "b", "c", "d", "e", ("t", 1))),
        st.integers(0, 9),
    ),
    max_size=60,
)


@PROP
@given(capacity=st.integers(0, 5), ops=ops)
def test_both_builds_match_the_model(capacity, ops):
    tables = [load(kind, "table").LRUTable(capacity) for kind in BUILDS]
    model = ModelLRU(capacity)
    for op, key, value in ops:
        if op == "put":
            expected = model.put(key, value)
            got = [t.put(key, value) for t in tables]
        elif op == "contains":
            expected = key in model.d
            got = [key in t for t in tables]
        else:
            expected = getattr(model, op)(key)
            got = [getattr(t, op)(key) for t in tables]
        assert got == [expected, expected], (op, key)
        for t in tables:
            assert t.keys() == model.keys() and len(t) == len(model) <= capacity
