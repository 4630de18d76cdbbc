from actors.common import split_evenly


def test_split_evenly_keeps_order_and_balances():
    assert split_evenly(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert split_evenly([1], 3) == [[1], [], []]
    assert sum(split_evenly(list(range(10)), 4), []) == list(range(10))
