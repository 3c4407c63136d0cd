"""Who may talk to a distributed search's oracle: the chief's address and a per-job shared secret.

keras-tuner serves the oracle over plain gRPC, and its client sends nothing that identifies a worker: anyone who
reaches the port could create, update or end trials. medtf therefore

* binds the chief to ``KERASTUNER_ORACLE_IP`` (slurm/tune.sbatch: the job's first node), not to every interface,
  and refuses a name that resolves only to loopback while the job's workers run on other nodes;
* requires a shared secret, ``MEDTF_ORACLE_TOKEN`` in the environment of the chief and of every worker
  (slurm/tune.sbatch draws 32 random bytes per job start and hands them to its srun workers through the job's
  environment, which only the job's owner and root can read); a server interceptor refuses every call without it
  (``UNAUTHENTICATED``) before it reaches the oracle, and the workers send it with each call (`authenticate`).

Not protected: the traffic is not encrypted (someone who can sniff the cluster network sees the token and the
hyperparameters/metrics), root on a node can read the token, and anything running as the same user can too.

Example:
    >>> environ = {"KERASTUNER_ORACLE_IP": "node01", "MEDTF_ORACLE_TOKEN": "2b7e15..."}
    >>> token = oracle_token(environ)                       # raises when it is missing or short
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import os
import socket
from typing import Mapping

import grpc

from medtf.tuning.settings import TuneConfigError

TOKEN_ENV = "MEDTF_ORACLE_TOKEN"
METADATA_KEY = "x-medtf-oracle-token"
MIN_TOKEN_CHARS = 32


def oracle_token(environ: Mapping[str, str] = os.environ) -> str:
    """The search's shared secret from ``MEDTF_ORACLE_TOKEN``; `TuneConfigError` when it is missing or short."""
    token = environ.get(TOKEN_ENV, "")
    if len(token) < MIN_TOKEN_CHARS:
        raise TuneConfigError(
            f"distributed tuning (KERASTUNER_ORACLE_IP is set) needs the shared secret {TOKEN_ENV} of at least "
            f"{MIN_TOKEN_CHARS} characters in the environment of the chief and of every worker "
            f"({'it is shorter' if token else 'it is not set'}); slurm/tune.sbatch sets it, by hand e.g. "
            f"export {TOKEN_ENV}=$(python3 -c 'import secrets; print(secrets.token_hex(32))')")
    return token


def check_bind_address(host: str, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse a chief address that only loopback answers to when workers run on other nodes of the job."""
    nodes = int(environ.get("SLURM_JOB_NUM_NODES", "1") or 1)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as exc:
        raise RuntimeError(f"KERASTUNER_ORACLE_IP {host!r} does not resolve on the chief: {exc}") from None
    if nodes > 1 and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise RuntimeError(f"KERASTUNER_ORACLE_IP {host!r} resolves to loopback only ({', '.join(sorted(addresses))}) "
                           f"on the chief, so workers on the job's other {nodes - 1} node(s) cannot reach it; set "
                           f"KERASTUNER_ORACLE_IP to this node's cluster address")


class TokenInterceptor(grpc.ServerInterceptor):
    """Lets a call through only when its metadata carries the search's token (compared in constant time)."""

    def __init__(self, token: str):
        self._token = token.encode()

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "medtf oracle: missing or wrong token")

        self._refuse = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation, handler_call_details):
        sent = dict(handler_call_details.invocation_metadata or ()).get(METADATA_KEY, "")
        if hmac.compare_digest(str(sent).encode(), self._token):
            return continuation(handler_call_details)
        return self._refuse  # every oracle method is unary-unary


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _TokenSender(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token: str):
        self._token = token

    def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or ()) + [(METADATA_KEY, self._token)]
        return continuation(_CallDetails(details.method, details.timeout, metadata, details.credentials,
                                         getattr(details, "wait_for_ready", None),
                                         getattr(details, "compression", None)), request)


def authenticated_channel(target: str, token: str) -> grpc.Channel:
    """A channel to the chief (``host:port``) that sends ``token`` with every call."""
    return grpc.intercept_channel(grpc.insecure_channel(target), _TokenSender(token))


def authenticate(client, token: str, environ: Mapping[str, str] = os.environ) -> None:
    """Point keras-tuner's ``OracleClient`` (a worker's ``tuner.oracle``) at a channel that sends the token."""
    from keras_tuner.src import protos

    target = f"{environ['KERASTUNER_ORACLE_IP']}:{environ['KERASTUNER_ORACLE_PORT']}"
    client.stub = protos.get_service_grpc().OracleStub(authenticated_channel(target, token))
