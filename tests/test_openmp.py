"""The CLI's OpenMP wait policy: /proc/stat parsing, the load arithmetic, the choice and who wins."""

import sys

import pytest

from nexusgen import openmp

# user nice system idle iowait irq softirq steal guest guest_nice
STAT = "cpu  100 5 45 800 50 0 0 0 30 0\ncpu0 50 2 20 400 25 0 0 0 15 0\n"


def test_cpu_times_counts_idle_and_iowait_as_not_busy(tmp_path):
    path = tmp_path / "stat"
    path.write_text(STAT)
    assert openmp.cpu_times(str(path)) == (150, 1000)  # guest is inside user already: not added again
    assert openmp.cpu_times(str(tmp_path / "missing")) is None
    path.write_text("intr 1 2 3\n")
    assert openmp.cpu_times(str(path)) is None
    path.write_text("cpu  100 5 x 800\n")  # unreadable: the command then waits passively, it does not fail
    assert openmp.cpu_times(str(path)) is None


def test_busy_cores_is_the_busy_share_of_all_cores():
    assert openmp.busy_cores((100, 1000), (150, 1100), cores=2) == pytest.approx(1.0)
    assert openmp.busy_cores((100, 1000), (100, 1100), cores=2) == 0.0
    assert openmp.busy_cores(None, (100, 1100), cores=2) is None
    assert openmp.busy_cores((100, 1000), (100, 1000), cores=2) is None  # no tick passed: unknown


@pytest.mark.parametrize("load, policy", [(None, "PASSIVE"), (0.0, None), (0.3, None), (0.5, "PASSIVE"),
                                          (1.7, "PASSIVE")])
def test_passive_only_when_other_work_runs_or_the_load_is_unknown(load, policy):
    assert openmp.choose_wait_policy(load) == policy


@pytest.fixture
def torch_not_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # restored after the test


@pytest.mark.parametrize("busy_ticks, expected", [(10, None), (60, "PASSIVE")])
def test_configure_sets_the_variable_from_the_sampled_load(torch_not_loaded, monkeypatch, busy_ticks, expected):
    samples = iter([(0, 100), (busy_ticks, 200)])
    monkeypatch.setattr(openmp, "cpu_times", lambda: next(samples))
    monkeypatch.setattr(openmp.os, "cpu_count", lambda: 2)
    environ: dict = {}
    assert openmp.configure(environ, sample_seconds=0) == expected
    assert environ == ({} if expected is None else {"OMP_WAIT_POLICY": "PASSIVE"})


def test_configure_keeps_the_users_value(torch_not_loaded, monkeypatch):
    monkeypatch.setattr(openmp, "cpu_times", lambda: pytest.fail("the load is not sampled"))
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert openmp.configure(environ) == "ACTIVE" and environ == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_configure_does_nothing_once_torch_is_loaded(monkeypatch):
    import torch  # noqa: F401  (libgomp has read the variable already: setting it now would change nothing)

    monkeypatch.setattr(openmp, "cpu_times", lambda: pytest.fail("the load is not sampled"))
    environ: dict = {}
    assert openmp.configure(environ) is None and environ == {}
