"""``ReadyQueue``: priority order, FIFO ties, aging, removal, and freedom from starvation."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import ReadyQueue


@dataclass(eq=False)
class Item:
    """A queued thing; ``eq=False`` so that two items with the same fields stay distinct."""

    name: str
    priority: int = 0
    urgency: float = 0.0
    enqueued_at: float = 0.0
    sequence: int = field(default=0, repr=False)


def drain(queue: ReadyQueue[Item]) -> list[str]:
    names = []
    while queue:
        names.append(queue.pop().name)
    return names


def test_higher_priority_first_then_fifo_without_aging() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    for time, (name, priority) in enumerate([("a", 1), ("b", 5), ("c", 1), ("d", 5), ("e", -3), ("f", 1)]):
        queue.push(Item(name), priority, enqueued_at=float(time))
    assert [item.name for item in queue.ordered()] == ["b", "d", "a", "c", "f", "e"]
    assert drain(queue) == ["b", "d", "a", "c", "f", "e"]


def test_ties_keep_arrival_order_even_at_the_same_instant() -> None:
    queue: ReadyQueue[Item] = ReadyQueue(aging_per_second=0.5)
    for name in "abcdef":
        queue.push(Item(name), 3, enqueued_at=10.0)
    assert drain(queue) == list("abcdef")


def test_urgency_raises_an_item() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    queue.push(Item("plain"), 2, enqueued_at=0.0)
    queue.push(Item("event"), 1, enqueued_at=1.0, urgency=1.5)
    assert drain(queue) == ["event", "plain"]


def test_aging_lets_a_waiting_item_overtake() -> None:
    queue: ReadyQueue[Item] = ReadyQueue(aging_per_second=1.0)
    old = Item("old")
    queue.push(old, 0, enqueued_at=0.0)
    # 10 priority points newer but pushed 10.5 s later: the old item has aged past it.
    queue.push(Item("late"), 10, enqueued_at=10.5)
    # Pushed 9.5 s later: still ahead of the old item.
    queue.push(Item("early"), 10, enqueued_at=9.5)
    assert queue.effective_priority(old, now=12.0) == 12.0
    assert drain(queue) == ["early", "old", "late"]


def test_pop_peek_and_len() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    assert queue.peek() is None and len(queue) == 0 and not queue
    with pytest.raises(IndexError, match="pop from an empty ReadyQueue"):
        queue.pop()
    first, second = Item("first"), Item("second")
    queue.push(first, 1, 0.0)
    queue.push(second, 2, 0.0)
    assert queue.peek() is second and len(queue) == 2 and second in queue
    assert queue.pop() is second and queue.pop() is first
    assert repr(queue) == "ReadyQueue(aging_per_second=0, queued=0)"


def test_remove_by_identity() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    a, b, twin = Item("a"), Item("b"), Item("b")
    queue.push(a, 5, 0.0)
    queue.push(b, 1, 0.0)
    assert not queue.remove(twin)  # equal fields, different object
    assert queue.remove(a) and not queue.remove(a)
    assert a not in queue and len(queue) == 1
    assert queue.peek() is b and queue.ordered() == [b]
    queue.push(a, 0, 1.0)  # may be queued again once removed
    assert drain(queue) == ["b", "a"]


def test_an_item_is_queued_once() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    item = Item("x")
    queue.push(item, 1, 0.0)
    with pytest.raises(ValueError, match=r"^item: already queued: Item\(name='x'"):
        queue.push(item, 2, 0.0)


def test_heavy_removal_does_not_grow_the_heap() -> None:
    queue: ReadyQueue[Item] = ReadyQueue()
    keep = Item("keep")
    queue.push(keep, 0, 0.0)
    for n in range(1000):
        churn = Item(f"churn{n}")
        queue.push(churn, 1, float(n))
        assert queue.remove(churn)
    assert len(queue._heap) <= 3  # dead entries are swept once they outnumber live ones
    assert drain(queue) == ["keep"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ReadyQueue(aging_per_second=-1), "aging_per_second: must not be negative, got -1"),
        (lambda: ReadyQueue(aging_per_second=float("nan")), "aging_per_second: must be a finite number"),
        (
            lambda: ReadyQueue[Item]().push(Item("x"), 1.5, 0.0),  # type: ignore[arg-type]
            "priority: expected a whole number, got 1.5",
        ),
        (
            lambda: ReadyQueue[Item]().push(Item("x"), True, 0.0),
            "priority: expected a whole number, got True",
        ),
        (lambda: ReadyQueue[Item]().push(Item("x"), 1, float("inf")), "enqueued_at: must be a finite number"),
        (
            lambda: ReadyQueue[Item]().push(Item("x"), 1, 0.0, urgency="hi"),  # type: ignore[arg-type]
            "urgency: expected a number, got 'hi'",
        ),
    ],
)
def test_invalid_arguments_name_the_field(call: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        call()  # type: ignore[operator]
    assert str(caught.value).startswith(message)


def test_effective_priority_of_an_unknown_item() -> None:
    with pytest.raises(KeyError):
        ReadyQueue[Item]().effective_priority(Item("x"), 0.0)


# Operations for the property tests: push an item, or pop one, with time moving forward by a
# whole number of seconds. Whole priorities, urgencies in quarters, times in whole seconds and
# aging rates that are powers of two keep every effective priority exact in binary floating
# point, so the test compares the queue with exact arithmetic, not with tolerances.
_push = st.tuples(
    st.just("push"),
    st.integers(-5, 5),
    st.integers(0, 8).map(lambda quarters: quarters / 4),
    st.integers(0, 4),
)
_pop = st.tuples(st.just("pop"), st.just(0), st.just(0.0), st.integers(0, 4))
_operations = st.lists(st.one_of(_push, _push, _pop), min_size=1, max_size=60)
_aging = st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0, 2.0])


@settings(max_examples=300, deadline=None)
@given(operations=_operations, aging=_aging)
def test_pop_returns_the_highest_effective_priority(
    operations: list[tuple[str, int, float, int]], aging: float
) -> None:
    """At every pop, the item returned has the highest effective priority at that instant;
    among equals, the one pushed first."""
    queue: ReadyQueue[Item] = ReadyQueue(aging)
    waiting: list[Item] = []
    now = 0.0
    for sequence, (kind, priority, urgency, step) in enumerate(operations):
        now += step
        if kind == "push":
            item = Item(f"i{sequence}", priority, urgency, now, sequence)
            queue.push(item, priority, now, urgency)
            waiting.append(item)
        elif waiting:
            best = max(
                waiting,
                key=lambda i: (i.priority + i.urgency + aging * (now - i.enqueued_at), -i.sequence),
            )
            assert queue.pop() is best
            waiting.remove(best)
        assert len(queue) == len(waiting)


@settings(max_examples=300, deadline=None)
@given(operations=_operations, aging=st.sampled_from([0.125, 0.25, 0.5, 1.0, 2.0]))
def test_aging_prevents_starvation(operations: list[tuple[str, int, float, int]], aging: float) -> None:
    """With aging, an item A is popped before every item B pushed later than
    ``A.enqueued_at + (B.priority + B.urgency - A.priority - A.urgency) / aging``:
    however low A's priority, only items pushed within a bounded window can overtake it."""
    queue: ReadyQueue[Item] = ReadyQueue(aging)
    popped: list[Item] = []
    pushed: list[Item] = []
    now = 0.0
    for sequence, (kind, priority, urgency, step) in enumerate(operations):
        now += step
        if kind == "push":
            item = Item(f"i{sequence}", priority, urgency, now, sequence)
            queue.push(item, priority, now, urgency)
            pushed.append(item)
        elif queue:
            popped.append(queue.pop())
    while queue:
        popped.append(queue.pop())
    assert sorted(popped, key=lambda i: i.sequence) == pushed
    position = {id(item): index for index, item in enumerate(popped)}
    for a in pushed:
        for b in pushed:
            # Only later arrivals count: one pushed earlier may have left before A came.
            if b.sequence <= a.sequence:
                continue
            bound = a.enqueued_at + (b.priority + b.urgency - a.priority - a.urgency) / aging
            if b.enqueued_at > bound:
                assert position[id(a)] < position[id(b)], (a, b)


def test_starvation_bound_example() -> None:
    """A priority-0 item waits for at most 10 s of priority-5 arrivals at aging 0.5/s."""
    queue: ReadyQueue[Item] = ReadyQueue(aging_per_second=0.5)
    low = Item("low")
    queue.push(low, 0, enqueued_at=0.0)
    for second in range(1, 30):
        queue.push(Item(f"high{second}"), 5, enqueued_at=float(second))
    order = [item.name for item in queue.ordered()]
    assert order.index("low") == 9  # high1 .. high9 overtake (pushed before t = 10); high10 ties, FIFO


def test_taking_items_out_and_back_keeps_their_places() -> None:
    queue: ReadyQueue[str] = ReadyQueue(aging_per_second=0.0)
    for n, name in enumerate("abcde"):
        queue.push(name, priority=0, enqueued_at=float(n))
    first, second = queue.take(), queue.take()
    assert first is not None and second is not None and (first[0], second[0]) == ("a", "b")
    queue.put_back(second[1])
    queue.put_back(first[1])  # in any order: each returns to its own place
    assert [queue.pop() for _ in range(5)] == list("abcde")
    assert queue.take() is None
    with pytest.raises(TypeError, match="token"):
        queue.put_back("a")
