"""The rule behind the hung-request reports: which requests crossed warn_after, each once;
how many workers are past it; how many stacks may be taken; when /healthz fails."""

from hypothesis import given, strategies as st

from gaspar2.producer import metrics
from gaspar2.producer.hung import Crossing, Crossings, Quota


def test_a_request_past_the_threshold_is_reported_once_however_often_it_is_seen():
    crossings = Crossings(30.0)
    assert crossings.check([(1, 7, 100.0), (2, 0, 50.0)], 129.9) == []
    assert crossings.stuck == 0
    assert crossings.check([(1, 7, 100.0), (2, 0, 50.0)], 130.5) == [Crossing(1, 7, 30.5)]
    assert crossings.stuck == 1
    for now in (130.6, 200.0, 10_000.0):
        assert crossings.check([(1, 7, 100.0), (2, 0, 50.0)], now) == []
        assert crossings.stuck == 1


def test_the_next_request_of_the_same_worker_is_news_and_an_idle_worker_is_not_stuck():
    crossings = Crossings(1.0)
    assert crossings.check([(1, 7, 0.0), (2, 8, 0.0)], 2.0) == [Crossing(1, 7, 2.0),
                                                                  Crossing(2, 8, 2.0)]
    assert crossings.stuck == 2
    assert crossings.check([(1, 9, 2.5), (2, 0, 2.5)], 3.0) == []     # 7 done, 9 young
    assert crossings.stuck == 0
    assert crossings.check([(1, 9, 2.5), (2, 0, 2.5)], 4.0) == [Crossing(1, 9, 1.5)]
    assert crossings.stuck == 1


def test_a_worker_gone_is_forgotten_and_zero_means_never():
    crossings = Crossings(1.0)
    assert crossings.check([(1, 7, 0.0)], 2.0) == [Crossing(1, 7, 2.0)]
    assert crossings.check([], 3.0) == [] and crossings.stuck == 0
    off = Crossings(0.0)
    assert off.check([(1, 7, 0.0)], 1e9) == [] and off.stuck == 0


looks = st.lists(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 4),
                                    st.floats(0, 10)), max_size=4), max_size=12)


@given(looks)
def test_every_request_seen_past_the_threshold_is_reported_exactly_once(sequence):
    """Whatever each look sees (workers and requests may repeat, come and go), a request is
    reported at the first look that finds it past the threshold on a worker and not again
    while it stays past it there; ``stuck`` counts the workers past it at each look."""
    crossings = Crossings(5.0)
    previous: dict[int, int] = {}
    for look, seen in enumerate(sequence):
        now = 10.0 + look
        running = list({worker: (worker, request, since)
                        for worker, request, since in seen}.values())    # one slot a worker
        past = {w: r for w, r, since in running if r and now - since > 5.0}
        expected = [Crossing(w, r, now - since) for w, r, since in running
                    if w in past and previous.get(w) != r]
        assert crossings.check(running, now) == expected
        assert crossings.stuck == len(past)
        previous = past


def test_the_quota_lets_a_burst_through_then_one_per_share_of_the_period():
    quota = Quota(10, 60.0)
    assert [quota.take(0.0) for _ in range(11)] == [True] * 10 + [False]
    assert not quota.take(5.9)
    assert quota.take(6.1) and not quota.take(6.2)
    assert sum(quota.take(1000.0) for _ in range(20)) == 10     # never more than the burst


def test_healthz_fails_with_a_reason_only_when_every_worker_is_stuck_and_requests_wait():
    def health(**counts):
        return metrics.health("serving", {"workers": 2, "waiting": 0, "workers_stuck": 0,
                                          **counts})
    assert health()[0] and health(workers_stuck=2)[0] and health(waiting=3)[0]
    assert health(workers_stuck=1, waiting=3)[0]
    healthy, body = health(workers_stuck=2, waiting=3)
    assert not healthy and body["reason"] == ("every worker has run one request past "
                                              "warn_after, and 3 requests wait")
    assert not health(workers=0)[0] and "reason" not in health(workers=0)[1]
