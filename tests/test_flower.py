"""Tests for fl_lessons.flower: the course's hospitals as Flower apps, in separate processes.

The central claim (notebook 07): with full participation and the same seeds, Flower's FedAvg
over a SuperLink and one SuperNode per hospital ends at the same global weights as
``fl_lessons.run_fedavg`` in one process. The end-to-end tests start real Flower processes
on 127.0.0.1 and check that none survives, whatever happens.
"""

from __future__ import annotations

import inspect
import socket
import time

import numpy as np
import psutil
import pytest
import torch

pytest.importorskip(
    "flwr", reason='Flower is not installed; install the extra with pip install -e ".[flower]" '
                   '(the "test" extra includes it)'
)

import fl_lessons as fl  # noqa: E402
from fl_lessons.data import HospitalSpec, Scanner  # noqa: E402
from fl_lessons.federated import _client_generator  # noqa: E402
from fl_lessons.flower import deploy  # noqa: E402
from fl_lessons.flower import hospital_data  # noqa: E402
from fl_lessons.flower.common import NUM_EXAMPLES_KEY, FlowerSettings, flat_from_arrays  # noqa: E402
from fl_lessons.flower.deploy import APP_DIR, DeploymentError, LoopbackFederation  # noqa: E402
from fl_lessons.flower.hospital_data import check_hospital_id, load_own_hospital  # noqa: E402
from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    Metadata,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg  # noqa: E402

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SMALL_SPECS = (
    HospitalSpec("Alpha", 40, 10, 0.25, Scanner(brightness=0.05)),
    HospitalSpec("Beta", 25, 8, 0.60, Scanner(contrast=0.8, blur_px=0.7)),
    HospitalSpec("Gamma", 13, 5, 0.50, Scanner(noise_sd=0.08, shift_px=(1.0, -1.0))),
)
SMALL_COMMON_TEST = 6

# The end-to-end run: 3 unequal hospitals (100, 60, 35 images), 2 rounds, several minibatches
# per epoch and two epochs, so both the n_k weighting and each client's minibatch stream
# must match run_fedavg's for the weights to agree.
E2E_RUN_CONFIG = {"num-rounds": 2, "local-epochs": 2, "batch-size": 16, "lr": 0.1, "seed": 3,
                  "model-seed": 1, "num-hospitals": 3, "data-seed": 2, "data-scale": 0.05}
WEIGHT_TOLERANCE = 1e-6


def app_run_config_defaults() -> dict:
    with open(APP_DIR / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["tool"]["flwr"]["app"]["config"]


def assert_all_stopped(pids: list[int]) -> None:
    """Every process id is gone (or a zombie no one can use), within a few seconds."""
    assert pids, "the federation should have recorded the processes it started"
    deadline = time.monotonic() + 10
    while True:
        alive = [pid for pid in pids if _is_running(pid)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive, f"processes {alive} were still running after the federation stopped"


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def train_message(model, server_round: int) -> Message:
    """The message Flower's FedAvg sends a ClientApp in a round, built without a SuperLink."""
    metadata = Metadata(run_id=1, message_id="test", src_node_id=0, dst_node_id=11,
                        reply_to_message_id="", group_id=str(server_round), created_at=time.time(),
                        ttl=600.0, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, metadata=metadata)


# ---------------------------------------------------------------------------------------
# One hospital's data, and nothing else
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hospital_id", range(len(SMALL_SPECS)))
def test_own_hospital_is_hospital_k_of_make_hospitals(hospital_id):
    everyone = fl.make_hospitals(seed=4, specs=SMALL_SPECS, common_test_per_hospital=SMALL_COMMON_TEST)
    alone = load_own_hospital(hospital_id, SMALL_SPECS, seed=4, common_test_per_hospital=SMALL_COMMON_TEST)
    expected = everyone.hospitals[hospital_id]
    assert alone.name == expected.name
    for mine, theirs in [(alone.train_x, expected.train_x), (alone.train_y, expected.train_y),
                         (alone.test_x, expected.test_x), (alone.test_y, expected.test_y)]:
        assert torch.equal(mine, theirs)


def test_own_hospital_renders_only_its_own_images(monkeypatch):
    rendered = []
    original = hospital_data.render_chest_xrays

    def spy(labels, scanner, rng):
        rendered.append((len(labels), scanner))
        return original(labels, scanner, rng)

    monkeypatch.setattr(hospital_data, "render_chest_xrays", spy)
    load_own_hospital(1, SMALL_SPECS, seed=0, common_test_per_hospital=SMALL_COMMON_TEST)
    beta = SMALL_SPECS[1]
    assert rendered == [(beta.num_train, beta.scanner), (beta.num_test, beta.scanner)]


def test_unknown_hospital_id_says_which_ids_exist():
    with pytest.raises(ValueError, match=r"hospital-id=3 does not exist.*ids are 0\.\.2"):
        check_hospital_id(3, 3)
    for not_an_id in (-1, 1.0, "1", True):
        with pytest.raises(ValueError, match="does not exist"):
            check_hospital_id(not_an_id, 3)
    assert check_hospital_id(np.int64(2), 3) == 2


# ---------------------------------------------------------------------------------------
# The apps, called in this process
# ---------------------------------------------------------------------------------------


def test_fedavg_weights_by_the_key_our_clientapp_sends():
    from fl_lessons.flower.server_app import EveryHospitalFedAvg

    assert inspect.signature(FedAvg).parameters["weighted_by_key"].default == NUM_EXAMPLES_KEY
    assert EveryHospitalFedAvg(3).weighted_by_key == NUM_EXAMPLES_KEY


def test_app_defaults_are_the_course_defaults():
    from fl_lessons.training import DEFAULT_BATCH_SIZE, DEFAULT_LR

    settings = FlowerSettings.from_run_config(app_run_config_defaults())
    assert settings == FlowerSettings()
    assert (settings.batch_size, settings.lr) == (DEFAULT_BATCH_SIZE, DEFAULT_LR)
    assert settings.num_hospitals == len(fl.DEFAULT_HOSPITALS)


def test_clientapp_reply_is_fl_client_train_on_its_hospital():
    from fl_lessons.flower.client_app import app

    settings = FlowerSettings.from_run_config(E2E_RUN_CONFIG)
    hospital_id, server_round = 1, 2
    model = fl.make_model("cnn", seed=5)
    start = fl.get_flat_weights(model)
    context = Context(run_id=1, node_id=11, node_config={"hospital-id": hospital_id},
                      state=RecordDict(), run_config=E2E_RUN_CONFIG)

    reply = app(train_message(model, server_round), context)

    assert not reply.has_error()
    data = fl.make_hospitals(settings.data_seed, settings.specs(), settings.common_test_per_hospital())
    hospital = data.hospitals[hospital_id]
    expected = fl.Client(hospital.train_x, hospital.train_y, fl.make_model("cnn", seed=None)).train(
        start, settings.local_epochs, settings.batch_size, settings.lr,
        _client_generator(settings.seed, server_round, hospital_id))
    received = flat_from_arrays(fl.make_model("cnn", seed=None), reply.content["arrays"])
    assert torch.equal(received, expected.values)
    assert reply.content["metrics"][NUM_EXAMPLES_KEY] == hospital.num_examples
    assert reply.content["metrics"]["train-loss"] == pytest.approx(expected.loss)


@pytest.mark.parametrize("node_config, message", [
    ({"hospital-id": 7}, r"hospital-id=7 does not exist.*0\.\.2"),
    ({}, r"no hospital-id in its node config.*--node-config 'hospital-id=<k>'"),
])
def test_clientapp_refuses_a_hospital_that_does_not_exist(node_config, message):
    from fl_lessons.flower.client_app import app

    context = Context(run_id=1, node_id=11, node_config=node_config, state=RecordDict(),
                      run_config=E2E_RUN_CONFIG)
    with pytest.raises(ValueError, match=message):
        app(train_message(fl.make_model("cnn", seed=0), 1), context)


def test_serverapp_sums_replies_in_hospital_order_whatever_order_they_arrive():
    from fl_lessons.flower.client_app import app
    from fl_lessons.flower.server_app import EveryHospitalFedAvg

    model = fl.make_model("cnn", seed=0)
    request = train_message(model, 1)
    replies = [app(request, Context(run_id=1, node_id=11, node_config={"hospital-id": k}, state=RecordDict(),
                                    run_config=E2E_RUN_CONFIG))
               for k in range(3)]
    # The n_k-weighted sum as Flower's FedAvg computes it, term by term, hospital 0 first.
    sizes = [reply.content["metrics"][NUM_EXAMPLES_KEY] for reply in replies]
    expected = {}
    for reply, size in zip(replies, sizes):
        for name, array in reply.content["arrays"].items():
            term = array.numpy() * (size / sum(sizes))
            expected[name] = term if name not in expected else expected[name] + term

    arrays, _ = EveryHospitalFedAvg(3).aggregate_train(1, list(reversed(replies)))

    for name, array in arrays.items():
        assert np.array_equal(array.numpy(), expected[name]), f"{name} was not summed in hospital order"


def test_serverapp_stops_when_a_hospital_fails_instead_of_averaging_the_rest():
    from fl_lessons.flower.client_app import app
    from fl_lessons.flower.server_app import EveryHospitalFedAvg

    model = fl.make_model("cnn", seed=0)
    request = train_message(model, 1)
    context = Context(run_id=1, node_id=11, node_config={"hospital-id": 0}, state=RecordDict(),
                      run_config=E2E_RUN_CONFIG)
    good = app(request, context)
    failed = Message(Error(code=0, reason="hospital-id=7 does not exist"), reply_to=request)
    with pytest.raises(RuntimeError, match=r"1 of 2 hospitals failed.*hospital-id=7 does not exist"):
        EveryHospitalFedAvg(2).aggregate_train(1, [good, failed])


# ---------------------------------------------------------------------------------------
# The deployment: real processes on 127.0.0.1
# ---------------------------------------------------------------------------------------


def test_flower_runs_private_offline_and_installs_nothing(tmp_path):
    federation = LoopbackFederation(hospital_ids=[0])
    federation.home = tmp_path  # what start() does with a fresh temporary folder
    environment = federation._environment()
    assert environment["FLWR_HOME"] == str(tmp_path)
    assert environment["FLWR_TELEMETRY_ENABLED"] == "0"
    assert environment["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert environment["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


@pytest.mark.slow
def test_flower_deployment_ends_at_the_weights_of_run_fedavg():
    with LoopbackFederation(hospital_ids=range(3)) as federation:
        home = federation.home
        # Every port any of its processes listens on is on the loopback address only.
        listening = [(process.name(), connection.laddr)
                     for process in federation.processes()
                     for connection in process.net_connections(kind="inet")
                     if connection.status == psutil.CONN_LISTEN]
        assert len(listening) >= 4, listening  # the SuperLink and three SuperNodes, at least
        assert all(address.ip == "127.0.0.1" for _, address in listening), listening
        result = federation.run(E2E_RUN_CONFIG, progress=False)
        pids = federation.pids
    assert_all_stopped(pids)
    assert not home.exists(), "the private FLWR_HOME should be removed with the federation"

    settings = FlowerSettings.from_run_config(E2E_RUN_CONFIG)
    data = fl.make_hospitals(settings.data_seed, settings.specs(), settings.common_test_per_hospital())
    sizes = [hospital.num_examples for hospital in data.hospitals]
    assert len(set(sizes)) == 3, f"n_k must differ to test the weighting, got {sizes}"
    model = fl.make_model(settings.model, seed=settings.model_seed)
    history = fl.run_fedavg(fl.make_clients(data, model), model, data.test_x, data.test_y,
                            settings.fed_config(), progress=False)

    difference = (result.final_weights - history.final_weights).abs().max().item()
    print(f"max |w_N(Flower) - w_N(run_fedavg)| = {difference:.2e}")
    assert difference <= WEIGHT_TOLERANCE
    # The weights moved: agreeing on w_0 alone would not prove anything.
    initial_weights = fl.get_flat_weights(fl.make_model(settings.model, seed=settings.model_seed))
    assert (history.final_weights - initial_weights).abs().max() > 100 * WEIGHT_TOLERANCE
    assert result.rounds == [0, 1, 2]
    assert result.reported == [3, 3]
    np.testing.assert_allclose(result.train_loss, history.train_loss, rtol=1e-5)
    np.testing.assert_allclose(result.test_loss, [history.initial.loss] + history.test_loss, rtol=1e-5)


def test_unknown_hospital_is_refused_before_any_process_starts():
    message = r"hospital-id=9 does not exist: the course has 5 hospitals, ids 0\.\.4"
    with pytest.raises(ValueError, match=message):
        LoopbackFederation(hospital_ids=[0, 1, 9])


@pytest.mark.slow
def test_hospital_outside_the_run_fails_clearly_and_every_process_stops():
    federation = LoopbackFederation(hospital_ids=[0, 2])
    message = r"num-hospitals=2.*hospital ids \[2\] do not exist.*no SuperNode holds \[1\]"
    with pytest.raises(ValueError, match=message):
        with federation:
            federation.run({"num-hospitals": 2, "num-rounds": 1}, progress=False)
    assert_all_stopped(federation.pids)


@pytest.mark.slow
def test_supernode_with_a_hospital_that_does_not_exist_fails_the_run_clearly(monkeypatch):
    # As if a hospital's IT team had started a SuperNode by hand with a wrong id: skip the
    # helper's own check, so the ClientApp and the ServerApp must catch it themselves.
    monkeypatch.setattr(deploy, "_check_supernodes_hold_the_run", lambda hospital_ids, num_hospitals: None)
    federation = LoopbackFederation(hospital_ids=[0, 3])
    with pytest.raises(DeploymentError, match=r"(?s)The Flower run failed: RuntimeError: Round 1: 1 of 2 "
                                              r"hospitals failed.*hospital-id=3 does not exist"):
        with federation:
            federation.run({"num-hospitals": 2, "num-rounds": 1, "model": "logreg", "data-scale": 0.05},
                           progress=False)
    assert_all_stopped(federation.pids)


def test_taken_port_is_refused_before_any_process_starts():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        federation = LoopbackFederation(hospital_ids=[0], superlink_port=taken)
        with pytest.raises(DeploymentError, match=rf"Port {taken} on 127\.0\.0\.1 is already in use"):
            federation.start()
    assert federation.pids == []


@pytest.mark.slow
def test_port_taken_after_the_check_stops_every_process(monkeypatch):
    # Another program may take the port between our check and the SuperLink's start; the
    # SuperLink then exits, and the helper must say so and stop what it started.
    monkeypatch.setattr(deploy, "_port_is_free", lambda port: True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        federation = LoopbackFederation(hospital_ids=[0], superlink_port=taken)
        message = rf"The SuperLink \(pid \d+\) exited during start-up.*Port {taken} on 127\.0\.0\.1 was taken"
        with pytest.raises(DeploymentError, match=message):
            federation.start()
    assert_all_stopped(federation.pids)
