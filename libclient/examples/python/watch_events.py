#!/usr/bin/env python3
"""Subscribes to domain events, starts a domain and prints the event that follows.

    PYTHONPATH=$(./gen.sh) python3 watch_events.py [DOMAIN]

DOMAIN defaults to `test`, the domain of test:///default. It is stopped first if it runs (that
event is not waited for), then the watch starts, and once the stream says it is live
(`caught_up`) the domain is started: the first event printed is its STARTED event.
"""

import sys

import grpc

from connect import channel, metadata
from rvirt.v1 import common_pb2, domain_pb2, domain_pb2_grpc


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "test"
    ref = common_pb2.DomainRef(name=name)
    md = metadata()
    with channel() as ch:
        domains = domain_pb2_grpc.DomainServiceStub(ch)
        try:
            domains.DestroyDomain(domain_pb2.DestroyDomainRequest(domain=ref), metadata=md, timeout=30)
        except grpc.RpcError as e:
            # Not running: nothing to stop. Anything else is a real failure.
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                print(f"DestroyDomain failed: {e.code().name}: {e.details()}", file=sys.stderr)
                return 1
        stream = domains.WatchDomainEvents(
            domain_pb2.WatchDomainEventsRequest(domain=ref), metadata=md, timeout=60
        )
        try:
            for msg in stream:
                kind = msg.WhichOneof("message")
                if kind == "caught_up":
                    # Live from here: our own call's event will come through the stream.
                    domains.StartDomain(domain_pb2.StartDomainRequest(domain=ref), metadata=md, timeout=30)
                    print(f"started {name}", flush=True)
                elif kind == "event":
                    ev = msg.event
                    what = ev.WhichOneof("event")
                    if what == "lifecycle":
                        what = "lifecycle " + domain_pb2.DomainEventType.Name(ev.lifecycle.type)
                    print(f"event {ev.sequence} {ev.domain.name}: {what}", flush=True)
                    return 0
                elif kind == "resync_required":
                    print("resync required", flush=True)
        except grpc.RpcError as e:
            print(f"WatchDomainEvents failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        finally:
            stream.cancel()
    print("the stream ended without an event", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
