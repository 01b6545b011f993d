"""The session splitter shared by the user-activity and daily-report folders."""

from exporter.aggregate.sessions import Sessions


def test_gap_splits_sessions_per_user_across_chunks():
    s = Sessions(gap=100)
    assert s.fold([1, 2, 1], [0, 10, 50]) == []
    assert s.fold([1, None, 2], [151, 160, 200]) == [[0, 50, 2], [10, 10, 1]]  # None rows belong to no one
    assert s.open == {1: [151, 151, 1], 2: [200, 200, 1]}
    assert s.close_idle(now=260) == [[151, 151, 1]]
    assert list(s.open) == [2]


def test_late_rows_join_within_reach_and_stand_alone_beyond_it():
    s = Sessions(gap=100)
    s.fold([1, 1], [1000, 1050])
    assert s.fold([1], [950]) == []  # committed late, 50 s before the session's start: it began earlier
    assert s.open[1] == [950, 1050, 3]
    assert s.fold([1], [500]) == [[500, 500, 1]]  # far earlier: its neighbours were accounted already
    assert s.open[1] == [950, 1050, 3]


def test_state_round_trip():
    s = Sessions(gap=60)
    s.fold(["n:ann", 7], [5, 6])
    restored = Sessions(gap=60)
    restored.load_state(s.state())
    assert restored.open == s.open


def test_every_listener_hears_each_closed_session_once():
    s = Sessions(gap=100)
    heard_a, heard_b = [], []
    s.listeners += [heard_a.extend, heard_b.extend]
    s.fold([1, 1], [0, 500])
    s.close_idle(now=1000)
    assert heard_a == heard_b == [[0, 0, 1], [500, 500, 1]]


def test_a_walk_elsewhere_applied_here_equals_folding_here():
    """The helper process walks chunks from the refresher's open sessions; applying its results must leave
    the same open sessions and tell the listeners the same closed ones as folding the chunks here."""
    import pickle
    import random

    rng = random.Random(5)
    chunks = []
    t = 0.0
    for _ in range(20):
        keys, ts = [], []
        for _ in range(50):
            t += rng.choice([1, 30, 200])
            keys.append(rng.choice([1, 2, 3, "n:ann", None]))
            ts.append(t - rng.choice([0, 0, 0, 150, 1000]))  # some late rows, within reach and beyond
        chunks.append((keys, ts))
    here, applied, heard_here, heard_applied = Sessions(100), Sessions(100), [], []
    here.listeners.append(heard_here.extend)
    applied.listeners.append(heard_applied.extend)
    here.fold([1, 2], [0.0, 5.0])
    applied.load_state(here.state())
    walker = Sessions(100)
    walker.load_state(applied.state())
    for keys, ts in chunks:
        here.fold(keys, ts)
        applied.apply(pickle.loads(pickle.dumps(walker.walk(keys, ts))))  # as it travels from the helper
        assert applied.open == here.open
    assert heard_applied == heard_here and len(heard_here) > 10
