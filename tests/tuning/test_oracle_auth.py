"""The distributed search's oracle (issue #13, defect 9): a real chief (`serve_oracle` over gRPC) that listens on
``KERASTUNER_ORACLE_IP`` only and answers only calls carrying the search's token."""

from __future__ import annotations

import socket
import threading

import grpc
import keras_tuner
import pytest
from keras_tuner.src import protos

from medtf.tuning.oracle_auth import METADATA_KEY, authenticate, authenticated_channel, oracle_token
from medtf.tuning.settings import TuneConfigError
from medtf.tuning.tuner import serve_oracle

TOKEN = "a" * 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Stop:
    requested = False


@pytest.fixture
def chief(tmp_path, monkeypatch):
    """A random-search oracle served on 127.0.0.1 by `serve_oracle` in a thread; yields (oracle, address)."""
    port = _free_port()
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))
    monkeypatch.setenv("MEDTF_ORACLE_TOKEN", TOKEN)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")  # what an OracleClient reads
    hp = keras_tuner.HyperParameters()
    hp.Choice("base_filters", [2, 4, 8])
    oracle = keras_tuner.oracles.RandomSearchOracle(objective=keras_tuner.Objective("val_loss", "min"),
                                                    max_trials=5, hyperparameters=hp)
    oracle._set_project_dir(str(tmp_path), "oracle")
    stop = _Stop()
    thread = threading.Thread(target=serve_oracle, args=(oracle,), kwargs={"poll": 0.05, "stop": stop}, daemon=True)
    thread.start()
    yield oracle, f"127.0.0.1:{port}"
    stop.requested = True
    thread.join(10)
    assert not thread.is_alive()


def _stub(channel):
    return protos.get_service_grpc().OracleStub(channel)


def _create_trial(stub, **kwargs):
    return stub.CreateTrial(protos.get_service().CreateTrialRequest(tuner_id="intruder"), timeout=10,
                            wait_for_ready=True, **kwargs)


@pytest.mark.parametrize("metadata", [None, [(METADATA_KEY, "b" * 64)], [(METADATA_KEY, TOKEN[:-1])]],
                         ids=["no-token", "wrong-token", "truncated-token"])
def test_chief_refuses_a_client_without_the_token(chief, metadata):
    oracle, address = chief
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            _create_trial(_stub(channel), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            _stub(channel).GetSpace(protos.get_service().GetSpaceRequest(), timeout=10, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert oracle.trials == {} and oracle.tuner_ids == set()  # nothing reached the oracle


def test_chief_answers_a_worker_with_the_token(chief):
    oracle, address = chief
    with authenticated_channel(address, TOKEN) as channel:
        trial = _create_trial(_stub(channel)).trial
    assert trial.trial_id in oracle.trials and oracle.tuner_ids == {"intruder"}  # accepted: a trial was created
    assert trial.hyperparameters.values.values["base_filters"].int_value in (2, 4, 8)


def test_keras_tuner_client_authenticated_by_medtf(chief):
    from keras_tuner.src.distribute.oracle_client import OracleClient

    oracle, _ = chief
    client = OracleClient(oracle)  # what BaseTuner makes on a worker: plain keras-tuner is refused ...
    with pytest.raises(grpc.RpcError) as refused:
        client.get_space()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    authenticate(client, TOKEN)  # ... and what ExperimentTuner then does to it
    assert client.get_space().get_config()["space"][0]["config"]["name"] == "base_filters"


def test_chief_listens_on_its_address_only(chief):
    _, address = chief
    other = address.replace("127.0.0.1", "127.0.0.2")  # also this machine (loopback /8), another address
    with authenticated_channel(other, TOKEN) as channel:
        with pytest.raises(grpc.RpcError) as unreachable:
            _stub(channel).GetSpace(protos.get_service().GetSpaceRequest(), timeout=3)
    assert unreachable.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.mark.parametrize("value", [None, "", "short"])
def test_distributed_tuning_needs_a_token(value):
    environ = {"KERASTUNER_ORACLE_IP": "127.0.0.1"} | ({} if value is None else {"MEDTF_ORACLE_TOKEN": value})
    with pytest.raises(TuneConfigError, match="MEDTF_ORACLE_TOKEN"):
        oracle_token(environ)
    assert oracle_token({"MEDTF_ORACLE_TOKEN": TOKEN}) == TOKEN
