#!/usr/bin/env python3
"""Lists the domains of a connection, as `virsh list --all` does.

    PYTHONPATH=$(./gen.sh) python3 list_domains.py
"""

import sys

import grpc

from connect import channel, metadata
from rvirt.v1 import domain_pb2, domain_pb2_grpc


def main():
    with channel() as ch:
        domains = domain_pb2_grpc.DomainServiceStub(ch)
        try:
            listed = domains.ListDomains(domain_pb2.ListDomainsRequest(), metadata=metadata(), timeout=30)
        except grpc.RpcError as e:
            print(f"ListDomains failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print(f"{'Id':>4}  {'Name':<20} State")
        for d in listed.domains:
            ident = str(d.id) if d.id >= 0 else "-"
            state = domain_pb2.DomainState.Name(d.state)
            print(f"{ident:>4}  {d.name:<20} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
