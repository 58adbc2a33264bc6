"""The end-to-end checks of ``make e2e``, run against the compose stack through the load balancer.

Every call goes to the load balancer's published port (``--target``); nothing talks to a replica
directly. Checks, in order (each prints one line; the first failure exits 1):

1. the stack serves: health SERVING and a stateless Generate through the load balancer;
2. a session whose turns land on both replicas (the ``x-rnnserve-replica`` response header)
   stays exact: every turn equals one stateless Generate on the whole text so far;
3. Prometheus (``--prometheus``) reports both replicas ``up`` and a query summing
   ``rnnserve_requests_total`` across them sees at least the Generate calls made here, on both;
4. ``docker kill`` of the replica that served the session's last turn, then the session is
   continued, exactly, on the other replica.

Usage: python e2e/check.py --target 127.0.0.1:PORT --prometheus http://127.0.0.1:PORT
       --compose "docker-compose -p rnnserve-e2e"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from rnnserve.client import Client, RnnserveError
from rnnserve.v1 import generation_pb2, generation_pb2_grpc

REPLICA_HEADER = "x-rnnserve-replica"
MODEL = "timemachine"
T = TypeVar("T")
START = time.monotonic()


def say(message: str) -> None:
    print(f"[check {time.monotonic() - START:5.1f}s] {message}", flush=True)


class CheckFailed(Exception):
    """One end-to-end check failed; the message says what was expected and what was seen."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def poll(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (RnnserveError, grpc.RpcError, OSError, ValueError, KeyError,
                CheckFailed) as error:
            value, last = None, repr(error)
        if value:
            return value
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what} (last: {last})")


class Turns:
    """Session turns through the raw stub, to see the replica header of every response.

    The stateless reference calls are made afterwards (``verify``): interleaved with the turns,
    they would take every other slot of the load balancer's round-robin, and all turns would
    land on one replica."""

    def __init__(self, target: str, client: Client) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = generation_pb2_grpc.GenerationServiceStub(self._channel)
        self._client = client
        self.session_id = ""
        self.history = ""
        self.replicas: list[str] = []
        self._unverified: list[tuple[str, int, str, str]] = []

    def turn(self, prefix: str, max_tokens: int) -> str:
        """One turn; returns the replica (``<replica>/<worker pid>``) that served it."""
        request = generation_pb2.GenerateRequest(
            model=MODEL, prefix=prefix, max_tokens=max_tokens, session_id=self.session_id,
            keep_session=True)
        response, call = self._stub.Generate.with_call(request, timeout=30)
        headers = dict(call.initial_metadata())
        served_by = str(headers.get(REPLICA_HEADER, ""))
        expect(bool(served_by), f"no {REPLICA_HEADER} header in the response: {headers}")
        if not self.session_id:
            expect(bool(response.session_id), "keep_session opened no session")
            self.session_id = response.session_id
        expect(response.session_id == self.session_id,
               f"session id changed: {response.session_id!r} != {self.session_id!r}")
        self._unverified.append((self.history + prefix, max_tokens, response.text, served_by))
        self.history += prefix + response.text
        self.replicas.append(served_by)
        return served_by

    def verify(self) -> int:
        """Check every turn not checked yet: its text equals one stateless Generate on the
        whole session text before it. Returns how many Generate calls that made."""
        checked = len(self._unverified)
        for number, (text, max_tokens, got, served_by) in enumerate(self._unverified, 1):
            expected = self._client.generate(text, model=MODEL, max_tokens=max_tokens).text
            expect(got == expected, f"turn on {served_by} is not exact: {got!r} != stateless "
                   f"{expected!r} (whole text {len(text)} characters, turn {number})")
        self._unverified.clear()
        return checked

    def close(self) -> None:
        self._channel.close()


def replica_of(served_by: str) -> str:
    return served_by.rsplit("/", 1)[0]


PROMPTS = [" by h g wells", "t", " and then the traveller said ", " the ", "ime ", " said the"]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def query(self, expr: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as r:
            body = json.load(r)
        expect(body.get("status") == "success", f"Prometheus query {expr}: {body}")
        return body["data"]["result"]


def check_serving(client: Client) -> None:
    # Every replica must be SERVING (models loaded), not just the first to answer: the load
    # balancer alternates between them, so ask until SERVING comes several times in a row.
    streak = [0]

    def all_serving() -> bool:
        try:
            serving = client.health(timeout=5) == "SERVING"
        except RnnserveError:
            serving = False
        streak[0] = streak[0] + 1 if serving else 0
        return streak[0] >= 6

    try:
        poll("every replica to answer health SERVING through the load balancer",
             all_serving, timeout=300, interval=0.5)
    finally:
        say(f"health: {streak[0]} SERVING answers in a row")
    reply = client.generate("the time machine", model=MODEL, max_tokens=30)
    expect(len(reply.text) == 30 and reply.generated_tokens == 30,
           f"Generate returned {reply!r}")
    say(f"1 Generate through the load balancer: {reply.text!r}")


def check_session_on_both_replicas(turns: Turns) -> int:
    """Returns the Generate calls made (turns and their stateless references)."""
    turns.turn("the time machine", 30)
    for prefix in PROMPTS:
        if len({replica_of(r) for r in turns.replicas}) >= 2:
            break
        turns.turn(prefix, 20)
    seen = {replica_of(r) for r in turns.replicas}
    expect(len(seen) == 2, f"the session's {len(turns.replicas)} turns landed on {seen}, "
           "not on two replicas")
    references = turns.verify()
    say(f"2 session {turns.session_id[:8]}…: {len(turns.replicas)} turns served by "
        f"{turns.replicas}, each equal to a stateless Generate on the whole text")
    return len(turns.replicas) + references


def check_prometheus(prometheus: Prometheus, generate_calls: int) -> None:
    def both_up() -> list[dict[str, Any]] | None:
        up = prometheus.query('up{job="rnnserve"} == 1')
        return up if len(up) == 2 else None

    up = poll("Prometheus to report 2 rnnserve targets up", both_up, timeout=120, interval=3)
    say(f"3a Prometheus: rnnserve up on {sorted(r['metric']['instance'] for r in up)}")

    expr = 'sum(rnnserve_requests_total{method="Generate"})'

    def counted() -> float | None:
        result = prometheus.query(expr)
        per_replica = prometheus.query(
            'sum by (instance) (rnnserve_requests_total{method="Generate"})')
        total = float(result[0]["value"][1]) if result else 0.0
        if total >= generate_calls and len(per_replica) == 2 and all(
                float(r["value"][1]) > 0 for r in per_replica):
            return total
        return None

    total = poll(f"{expr} to reach {generate_calls} across both replicas", counted,
                 timeout=120, interval=3)
    say(f"3b Prometheus: {expr} = {total:.0f} (>= {generate_calls} Generate calls made here)")


def check_kill_and_continue(turns: Turns, compose: list[str]) -> None:
    victim = replica_of(turns.replicas[-1])
    # The replica name defaults to the container's hostname: its id's first 12 characters.
    ids = subprocess.run([*compose, "ps", "-q", "rnnserve"], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    matches = [i for i in ids if i.startswith(victim)]
    expect(len(matches) == 1, f"no rnnserve container {victim!r} among {ids}")
    subprocess.run(["docker", "kill", matches[0]], check=True, capture_output=True, timeout=60)
    say(f"4a docker kill {victim} (it served the last turn)")
    before = len(turns.replicas)
    for prefix in [" and so", " we ", "went on"]:
        turns.turn(prefix, 20)
    turns.verify()
    after = [replica_of(r) for r in turns.replicas[before:]]
    expect(victim not in after, f"turns after the kill were served by {after}, which includes "
           f"the killed replica {victim}")
    say(f"4b session continued exactly on {sorted(set(after))} for {len(after)} turns "
        f"(text now {len(turns.history)} characters)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="the load balancer, HOST:PORT")
    parser.add_argument("--prometheus", required=True, help="Prometheus' URL")
    parser.add_argument("--compose", required=True, help="the compose command, with -p")
    args = parser.parse_args(argv)
    compose = shlex.split(args.compose)
    # retries=0: a failure must show, not be hidden by the client's own retries.
    with Client(args.target, timeout=30, retries=0) as client:
        turns = Turns(args.target, client)
        try:
            check_serving(client)
            calls = 1 + check_session_on_both_replicas(turns)
            check_prometheus(Prometheus(args.prometheus), calls)
            check_kill_and_continue(turns, compose)
            client.end_session(turns.session_id)
        except (CheckFailed, RnnserveError, grpc.RpcError,
                subprocess.CalledProcessError) as error:
            say(f"FAILED: {error}")
            return 1
        finally:
            turns.close()
    say("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
