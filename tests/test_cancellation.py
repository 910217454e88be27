"""A Cancel click stops the job of its own session and nothing else."""

import threading

from studio.core.cancellation import CancelFlags


def test_cancel_sets_the_flag_of_the_running_job():
    flags = CancelFlags()
    flag = flags.start("alice")

    assert not flag.is_set()
    assert flags.cancel("alice")
    assert flag.is_set()


def test_sessions_are_independent():
    flags = CancelFlags()
    alice, bob = flags.start("alice"), flags.start("bob")

    flags.cancel("alice")

    assert alice.is_set() and not bob.is_set()


def test_cancel_without_a_running_job_does_nothing_and_says_so():
    flags = CancelFlags()
    assert not flags.cancel("nobody")

    flag = flags.start("alice")
    flags.finish("alice", flag)
    assert not flags.cancel("alice")
    assert flags.running() == 0


def test_a_new_job_starts_uncancelled_and_an_old_finish_keeps_it():
    flags = CancelFlags()
    old = flags.start("alice")
    flags.cancel("alice")
    new = flags.start("alice")
    flags.finish("alice", old)  # the old job ends after the new one began

    assert old.is_set() and not new.is_set()
    assert flags.cancel("alice") and new.is_set()


def test_a_worker_thread_stops_when_cancelled():
    flags = CancelFlags()
    flag = flags.start("alice")
    steps = []

    def work():
        while not flag.wait(0.01):
            steps.append(1)

    worker = threading.Thread(target=work)
    worker.start()
    flags.cancel("alice")
    worker.join(timeout=5)

    assert not worker.is_alive()
