from mercato.aggregator.dedup import DedupWindow, dedup_key


def test_window_remembers_at_least_its_capacity_and_stays_bounded():
    window = DedupWindow(capacity=1000)
    assert window.admit([f"k{i}" for i in range(5000)]) == [True] * 5000
    assert len(window) <= 1250
    recent = [f"k{i}" for i in range(4000, 5000)]
    assert window.admit(recent) == [False] * 1000
    assert window.admit(["k0"]) == [True]  # long forgotten
    assert window.dropped == 1000


def test_duplicates_inside_one_call_are_caught():
    window = DedupWindow(capacity=10)
    assert window.admit(["a", "b", "a"]) == [True, True, False]


def test_remember_fills_without_counting_drops():
    window = DedupWindow(capacity=10)
    window.remember(["a", "a"])
    assert window.dropped == 0
    assert "a" in window
    assert window.size_bytes() > 0


def test_keys_keep_merchants_apart():
    assert dedup_key("m1", "e") != dedup_key("m2", "e")
    assert dedup_key("m", "1e") != dedup_key("m1", "e")
