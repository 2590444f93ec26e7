"""Queue ordering and limits."""

from __future__ import annotations

from kompression.controller.queueing import Candidate, Limits, decide, order


def test_priority_then_fifo_then_name() -> None:
    a = Candidate("ns", "a", "2025-01-01T00:00:02Z")
    b = Candidate("ns", "b", "2025-01-01T00:00:01Z")
    c = Candidate("ns", "c", "2025-01-01T00:00:09Z", priority=100)
    d = Candidate("ns", "d", "2025-01-01T00:00:01Z")
    assert [x.name for x in order([a, b, c, d])] == ["c", "b", "d", "a"]


def test_global_limit_admits_in_order_and_numbers_the_rest() -> None:
    waiting = [Candidate("ns", n, f"2025-01-01T00:00:0{i}Z") for i, n in enumerate("abcd")]
    decision = decide(waiting, {"ns": 1}, Limits(total=3))
    assert decision.admitted == {("ns", "a"), ("ns", "b")}
    assert decision.positions == {("ns", "c"): 1, ("ns", "d"): 2}


def test_namespace_limit_does_not_block_other_namespaces() -> None:
    waiting = [Candidate("x", "x1", "1"), Candidate("x", "x2", "2"), Candidate("y", "y1", "3")]
    decision = decide(waiting, {"x": 1}, Limits(per_namespace=1))
    assert decision.admitted == {("y", "y1")}
    assert decision.positions == {("x", "x1"): 1, ("x", "x2"): 2}


def test_cpu_jobs_never_wait_and_no_limit_admits_all() -> None:
    waiting = [Candidate("ns", "gpu", "1"), Candidate("ns", "cpu", "2", gpus=0)]
    assert decide(waiting, {"ns": 5}, Limits(total=5)).admitted == {("ns", "cpu")}
    assert decide(waiting, {"ns": 500}, Limits()).admitted == {("ns", "gpu"), ("ns", "cpu")}


def test_deleting_a_waiting_job_moves_the_others_up() -> None:
    waiting = [Candidate("ns", n, str(i)) for i, n in enumerate("abc")]
    before = decide(waiting, {"ns": 1}, Limits(total=1)).positions
    after = decide([w for w in waiting if w.name != "a"], {"ns": 1}, Limits(total=1)).positions
    assert before[("ns", "c")] == 3 and after[("ns", "c")] == 2
