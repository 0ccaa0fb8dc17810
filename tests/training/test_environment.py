"""The training environment recorded in the model card: stable for one machine type and one lock."""

from __future__ import annotations

import platform

import torch

from retinaseg.training.environment import (
    cpu_model,
    installed_packages,
    packages_sha256,
    training_environment,
)


def test_environment_names_the_software_and_the_machine():
    env = training_environment(torch.device("cpu"))
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["accelerator"] == "none" and env["cpu"] == cpu_model() and env["cpu"]
    assert env["torch_threads"] == str(torch.get_num_threads())
    assert env == training_environment(torch.device("cpu"))  # nothing that changes between calls
    assert all(isinstance(v, str) for v in env.values())


def test_the_package_hash_follows_the_installed_set():
    packages = installed_packages()
    assert packages == sorted(packages) and any(p.startswith("torch==") for p in packages)
    assert any(p.startswith("retinaseg==") for p in packages)
    assert packages_sha256() == packages_sha256(packages) == packages_sha256(list(reversed(packages)))
    bumped = [p.replace("torch==", "torch==0.0.0+") if p.startswith("torch==") else p for p in packages]
    assert packages_sha256(bumped) != packages_sha256(packages)
