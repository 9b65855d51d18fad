"""The Flower ClientApp: one hospital running ``fl_lessons.Client.train`` behind a SuperNode.

Taught in notebook 07 (from simulation to deployment).

Each round, the SuperNode of hospital k starts this app in a fresh process with the
message the server sent (w_t in an ``ArrayRecord``). The app loads hospital k's data and
nothing else, runs the same :meth:`fl_lessons.Client.train` as ``fl_lessons.run_fedavg``
(same L, B, eta, same minibatch stream for round t and client k), and replies with
w^k_{t+1} and n_k under the key Flower's FedAvg weights by.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_lessons.federated import Client, _client_generator
from fl_lessons.flower.common import (
    HOSPITAL_ID_KEY,
    HOSPITAL_RECORD_KEY,
    NUM_EXAMPLES_KEY,
    TRAIN_LOSS_KEY,
    FlowerSettings,
    arrays_from_flat,
    flat_from_arrays,
)
from fl_lessons.flower.hospital_data import check_hospital_id, load_own_hospital
from fl_lessons.models import make_model

app = ClientApp()


def hospital_id_of_node(node_config, num_hospitals: int) -> int:
    """The hospital this SuperNode serves, from its node config, checked against K.

    Parameters
    ----------
    node_config : ``context.node_config``, set with ``flower-supernode --node-config``.
    num_hospitals : K in this run.
    """
    if HOSPITAL_ID_KEY not in node_config:
        raise ValueError(
            f"This SuperNode has no {HOSPITAL_ID_KEY} in its node config (it has "
            f"{dict(node_config)}). Start it with --node-config '{HOSPITAL_ID_KEY}=<k>', "
            f"k one of 0..{num_hospitals - 1}."
        )
    return check_hospital_id(node_config[HOSPITAL_ID_KEY], num_hospitals)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """FedAvg's ClientUpdate(k, w_t): L local epochs of SGD on hospital k's own data."""
    settings = FlowerSettings.from_run_config(context.run_config)
    config = settings.fed_config()
    hospital_id = hospital_id_of_node(context.node_config, settings.num_hospitals)
    hospital = load_own_hospital(hospital_id, settings.specs(), settings.data_seed,
                                 settings.common_test_per_hospital())
    model = make_model(settings.model, seed=None)  # a workspace: w_t overwrites its weights
    global_weights = flat_from_arrays(model, msg.content["arrays"])
    server_round = int(msg.content["config"]["server-round"])  # FedAvg counts rounds from 1
    # The minibatch stream run_fedavg gives client k in round t, so both runs draw alike.
    generator = _client_generator(config.seed, server_round, hospital_id)
    client = Client(hospital.train_x, hospital.train_y, model, hospital.name)
    update = client.train(global_weights, config.local_epochs, config.batch_size, config.lr, generator)
    reply = RecordDict({
        "arrays": arrays_from_flat(model, update.values),
        "metrics": MetricRecord({TRAIN_LOSS_KEY: update.loss, NUM_EXAMPLES_KEY: update.num_examples}),
        # Who is replying, so the server can sum the replies in hospital order (see server_app).
        HOSPITAL_RECORD_KEY: ConfigRecord({HOSPITAL_ID_KEY: hospital_id}),
    })
    return Message(content=reply, reply_to=msg)

