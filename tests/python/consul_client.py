"""Drives a wharf agent with py-consul, a real Consul client library from PyPI.

Usage: python3 consul_client.py HOST PORT. Exits non-zero on the first mismatch.
"""
import sys
import threading
import time

import consul


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    c = consul.Consul(host=host, port=port)

    # KV: put/get, CAS, flags, recurse, keys, delete.
    assert c.kv.put("py/a", "1") is True
    idx, entry = c.kv.get("py/a")
    assert entry["Value"] == b"1", entry
    assert int(idx) == entry["ModifyIndex"], (idx, entry)
    assert c.kv.put("py/a", "2", cas=entry["ModifyIndex"]) is True
    assert c.kv.put("py/a", "3", cas=entry["ModifyIndex"]) is False
    assert c.kv.put("py/b", "x", flags=5) is True
    _, entry_b = c.kv.get("py/b")
    assert entry_b["Flags"] == 5
    _, entries = c.kv.get("py/", recurse=True)
    assert [e["Key"] for e in entries] == ["py/a", "py/b"], entries
    _, keys = c.kv.get("py/", keys=True)
    assert keys == ["py/a", "py/b"], keys
    _, missing = c.kv.get("py/missing")
    assert missing is None

    # A blocking query returns when the key changes.
    idx, _ = c.kv.get("py/a")
    result = {}

    def waiter() -> None:
        result["r"] = c.kv.get("py/a", index=idx, wait="10s")

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    assert c.kv.put("py/a", "4") is True
    t.join(5)
    assert not t.is_alive(), "blocking kv.get did not return after the write"
    new_idx, new_entry = result["r"]
    assert int(new_idx) > int(idx) and new_entry["Value"] == b"4", result

    # Agent services and checks.
    assert c.agent.service.register(
        "web", service_id="web-py", address="127.0.0.1", port=8080, tags=["py"], meta={"k": "v"},
        check=consul.Check.ttl("10s"),
    )
    services = c.agent.services()
    assert services["web-py"]["Service"] == "web" and services["web-py"]["Meta"] == {"k": "v"}, services
    checks = c.agent.checks()
    assert checks["service:web-py"]["Status"] == "critical", checks
    _, passing = c.health.service("web", passing=True)
    assert passing == [], passing
    assert c.agent.check.ttl_pass("service:web-py", notes="ok")
    _, passing = c.health.service("web", passing=True)
    assert [e["Service"]["ID"] for e in passing] == ["web-py"], passing
    assert c.agent.check.register("extra", check=consul.Check.ttl("15s"), check_id="extra", service_id="web-py")
    assert "extra" in c.agent.checks()

    # Catalog.
    _, svcs = c.catalog.services()
    assert svcs["web"] == ["py"], svcs
    _, inst = c.catalog.service("web", tag="py")
    assert inst[0]["ServiceID"] == "web-py" and inst[0]["ServicePort"] == 8080, inst
    _, nodes = c.catalog.nodes()
    assert len(nodes) == 1, nodes
    assert c.status.leader().endswith(":%s" % c.status.peers()[0].split(":")[-1])

    # Cleanup.
    assert c.agent.service.deregister("web-py")
    assert c.agent.service.deregister("web-py") is False  # 404 -> False
    assert c.kv.delete("py/", recurse=True) is True
    _, gone = c.kv.get("py/", recurse=True)
    assert gone is None
    print("py-consul %s: all checks passed" % consul.__version__)


if __name__ == "__main__":
    main()
