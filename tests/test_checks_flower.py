"""Tests for the checks of notebook 07's coding exercises (end of fl_lessons/checks.py).

As in tests/test_checks.py: each check accepts a reference solution, rejects the student
edition's stub with a friendly message, rejects each common wrong answer with the diagnosis
that names it, and draws fresh cases on every call unless seeded. The averaging check must
also accept Flower's own FedAvg arithmetic, since that is what it claims to check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("psutil", reason='the Flower extra is not installed: pip install -e ".[flower]"')

import fl_lessons as fl  # noqa: E402
from fl_lessons import checks  # noqa: E402
from fl_lessons.flower import supernode_command  # noqa: E402
from fl_lessons.student import CODE_STUB  # noqa: E402

NOTEBOOK_07_CHECKS = ["check_average_arrays", "check_supernode_command"]


def stub(*args):
    exec(CODE_STUB)  # exactly the line the student edition puts in place of a solution


# ---------------------------------------------------------------------------------------
# Reference solutions, and the wrong answers learners often give
# ---------------------------------------------------------------------------------------


def average_arrays(arrays, num_examples):
    """Per array name, fl.aggregate over the hospitals' flattened arrays."""
    averaged = {}
    for name in arrays[0]:
        updates = [fl.ClientUpdate(torch.as_tensor(hospital[name]).reshape(-1), n_k, math.nan)
                   for hospital, n_k in zip(arrays, num_examples)]
        averaged[name] = fl.aggregate(updates).numpy().reshape(arrays[0][name].shape)
    return averaged


def supernode(hospital_id, superlink, root_certificates):
    return supernode_command(hospital_id, superlink, root_certificates)


def plain_mean(arrays, num_examples):
    return {name: np.mean([hospital[name] for hospital in arrays], axis=0) for name in arrays[0]}


def unnormalised(arrays, num_examples):
    return {name: sum(n_k * hospital[name] for hospital, n_k in zip(arrays, num_examples))
            for name in arrays[0]}


def divided_by_k(arrays, num_examples):
    return {name: sum(n_k * hospital[name] for hospital, n_k in zip(arrays, num_examples)) / len(arrays)
            for name in arrays[0]}


def in_place(arrays, num_examples):
    total = sum(num_examples)
    result = arrays[0]
    for name in result:
        result[name] *= num_examples[0] / total
        for hospital, n_k in zip(arrays[1:], num_examples[1:]):
            result[name] += hospital[name] * (n_k / total)
    return result


def flattened(arrays, num_examples):
    total = sum(num_examples)
    return {name: sum(hospital[name] * (n_k / total) for hospital, n_k in zip(arrays, num_examples)).reshape(-1)
            for name in arrays[0]}


def first_array_only(arrays, num_examples):
    name = next(iter(arrays[0]))
    return {name: average_arrays(arrays, num_examples)[name]}


def as_list(arrays, num_examples):
    return list(average_arrays(arrays, num_examples).values())


def always_insecure(hospital_id, superlink, root_certificates):
    return ["flower-supernode", "--insecure", "--superlink", superlink,
            "--node-config", f"hospital-id={hospital_id}"]


def insecure_without_certificates(hospital_id, superlink, root_certificates):
    command = ["flower-supernode", "--superlink", superlink, "--node-config", f"hospital-id={hospital_id}"]
    return command + (["--root-certificates", root_certificates] if root_certificates else ["--insecure"])


def underscore_key(hospital_id, superlink, root_certificates):
    command = supernode_command(hospital_id, superlink, root_certificates)
    return [part.replace("hospital-id", "hospital_id") for part in command]


def no_node_config(hospital_id, superlink, root_certificates):
    command = supernode_command(hospital_id, superlink, root_certificates)
    at = command.index("--node-config")
    return command[:at] + command[at + 2:]


def never_insecure(hospital_id, superlink, root_certificates):
    if root_certificates is None and not superlink.startswith(("127.0.0.1", "localhost")):
        raise ValueError("needs certificates")
    command = ["flower-supernode", "--superlink", superlink, "--node-config", f"hospital-id={hospital_id}"]
    return command + (["--root-certificates", root_certificates] if root_certificates else [])


def tls_and_insecure(hospital_id, superlink, root_certificates):
    if root_certificates is None and not superlink.startswith(("127.0.0.1", "localhost")):
        raise ValueError("needs certificates")
    command = ["flower-supernode", "--insecure", "--superlink", superlink,
               "--node-config", f"hospital-id={hospital_id}"]
    return command + (["--root-certificates", root_certificates] if root_certificates else [])


def wrong_program(hospital_id, superlink, root_certificates):
    return ["flower-superlink"] + supernode_command(hospital_id, superlink, root_certificates)[1:]


def one_string(hospital_id, superlink, root_certificates):
    return " ".join(supernode_command(hospital_id, superlink, root_certificates))


def loopback_only_by_ip(hospital_id, superlink, root_certificates):
    if root_certificates is None and not superlink.startswith("127.0.0.1"):
        raise ValueError("needs certificates")
    return supernode_command(hospital_id, superlink, root_certificates)


REFERENCES = {"check_average_arrays": average_arrays, "check_supernode_command": supernode}
MISTAKES = [
    ("check_average_arrays", plain_mean, r"plain mean of the vectors"),
    ("check_average_arrays", unnormalised, r"weights do not sum to one"),
    ("check_average_arrays", divided_by_k, r"divided by the number of clients K"),
    ("check_average_arrays", in_place, r"changed hospital 0's arrays in place"),
    ("check_average_arrays", flattened, r"should keep the shape the hospitals sent"),
    ("check_average_arrays", first_array_only, r"one average for each array name"),
    ("check_average_arrays", as_list, r"returned a list; it should return a dict"),
    ("check_supernode_command", always_insecure, r"never add `--insecure`"),
    ("check_supernode_command", insecure_without_certificates, r"unencrypted to .*another computer"),
    ("check_supernode_command", underscore_key, r"hospital-id`, with a hyphen"),
    ("check_supernode_command", no_node_config, r"told its hospital in its node config"),
    ("check_supernode_command", never_insecure, r"add `--insecure`"),
    ("check_supernode_command", tls_and_insecure, r"never add `--insecure`"),
    ("check_supernode_command", wrong_program, r"`flower-supernode`, not 'flower-superlink'"),
    ("check_supernode_command", one_string, r"as a list of strings"),
    ("check_supernode_command", loopback_only_by_ip, r"raised ValueError: needs certificates"),
]


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------


def test_every_notebook_07_check_is_tested():
    assert sorted(REFERENCES) == NOTEBOOK_07_CHECKS
    assert all(callable(getattr(checks, name)) for name in NOTEBOOK_07_CHECKS)


@pytest.mark.parametrize("name", NOTEBOOK_07_CHECKS)
def test_check_accepts_the_reference_with_one_line(name, capsys):
    assert getattr(checks, name)(REFERENCES[name]) is True
    printed = capsys.readouterr().out
    assert printed.startswith("✅ ") and printed.count("\n") == 1, printed


@pytest.mark.parametrize("name", NOTEBOOK_07_CHECKS)
def test_check_rejects_the_stub_kindly(name):
    with pytest.raises(AssertionError, match=r"^`stub` is not implemented yet: replace the line "
                                             r"`raise NotImplementedError\(\.\.\.\)` with your code") as failure:
        getattr(checks, name)(stub)
    assert "Traceback" not in str(failure.value)


@pytest.mark.parametrize("name, wrong_answer, diagnosis", MISTAKES,
                         ids=[f"{name}-{fn.__name__}" for name, fn, _ in MISTAKES])
def test_check_names_the_mistake(name, wrong_answer, diagnosis, capsys):
    with pytest.raises(AssertionError, match=diagnosis):
        getattr(checks, name)(wrong_answer)
    assert "✅" not in capsys.readouterr().out


@pytest.mark.parametrize("name", NOTEBOOK_07_CHECKS)
def test_check_draws_fresh_cases_unless_seeded(name):
    def cases_given(seed) -> list[str]:
        received = []

        def recording(*args):
            received.append(repr(args))
            return REFERENCES[name](*args)

        getattr(checks, name)(recording, seed=seed)
        return received

    assert cases_given(None) != cases_given(None), "two unseeded calls gave the learner the same cases"
    assert cases_given(7) == cases_given(7), "the same seed should give the same cases"


def test_flowers_own_fedavg_arithmetic_passes_the_averaging_check(capsys):
    flwr_app = pytest.importorskip("flwr.app")
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    def flower_average(arrays, num_examples):
        replies = [flwr_app.RecordDict({"arrays": flwr_app.ArrayRecord({name: flwr_app.Array(array.copy())
                                                                        for name, array in hospital.items()}),
                                        "metrics": flwr_app.MetricRecord({"num-examples": n_k})})
                   for hospital, n_k in zip(arrays, num_examples)]
        return {name: array.numpy() for name, array in aggregate_arrayrecords(replies, "num-examples").items()}

    assert checks.check_average_arrays(flower_average) is True


def test_the_deployment_helper_starts_supernodes_with_the_checked_command():
    command = supernode_command(2, "127.0.0.1:9092", runtime_port=9500)
    assert command[:6] == ["flower-supernode", "--superlink", "127.0.0.1:9092", "--node-config", "hospital-id=2",
                           "--insecure"]
    assert command[6:] == ["--host", "127.0.0.1", "--port", "9500"]
    with pytest.raises(ValueError, match=r"unencrypted.*root_certificates"):
        supernode_command(2, "superlink.example.org:9092")
    for not_an_id in (-1, 1.5, True):
        with pytest.raises(ValueError, match="whole number"):
            supernode_command(not_an_id, "127.0.0.1:9092")
