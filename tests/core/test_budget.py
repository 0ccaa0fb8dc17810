"""The CPU budget: threads and DataLoader workers per job, from the cores and RETINASEG_JOBS."""

import pytest

from retinaseg.core.budget import BudgetError, concurrent_jobs, cpu_threads, loader_workers
from retinaseg.core.config import params_from_dict, parse_params_text


def test_threads_are_the_cores_divided_by_the_jobs():
    assert cpu_threads(0, {}, cores=16) == 16
    assert cpu_threads(0, {"RETINASEG_JOBS": "2"}, cores=16) == 8
    assert cpu_threads(0, {"RETINASEG_JOBS": "4"}, cores=2) == 1  # never 0
    assert cpu_threads(3, {"RETINASEG_JOBS": "4"}, cores=16) == 3  # an explicit number wins


def test_torchrun_processes_on_the_node_share_the_cores():
    assert concurrent_jobs({"LOCAL_WORLD_SIZE": "2"}) == 2
    assert cpu_threads(0, {"LOCAL_WORLD_SIZE": "2", "RETINASEG_JOBS": "2"}, cores=16) == 4


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_a_malformed_jobs_variable_is_an_error_naming_it(value):
    with pytest.raises(BudgetError, match=r"RETINASEG_JOBS='" + value.replace(".", r"\.")):
        concurrent_jobs({"RETINASEG_JOBS": value})


def test_auto_workers_use_the_cores_on_cuda_and_none_on_the_cpu():
    assert loader_workers("auto", "cuda", {}, cores=16) == 8  # capped
    assert loader_workers("auto", "cuda", {}, cores=4) == 3  # one core drives the GPU
    assert loader_workers("auto", "cuda", {"RETINASEG_JOBS": "4"}, cores=16) == 3
    assert loader_workers("auto", "cuda", {}, cores=1) == 0
    assert loader_workers("auto", "cpu", {}, cores=16) == 0
    assert loader_workers(2, "cpu", {}, cores=16) == 2


def test_params_accept_auto_or_a_count_for_workers():
    def load(text):
        return params_from_dict(parse_params_text(text))

    assert load("base: {workers: auto}").base.workers == "auto"
    assert load("base: {workers: 3}").base.workers == 3
    with pytest.raises(ValueError, match="base.workers"):
        load("base: {workers: many}")
