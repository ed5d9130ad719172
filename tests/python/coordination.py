"""Consul's coordination primitives through py-consul, unchanged: sessions, KV locks,
transactions and maintenance mode.

Usage: python3 coordination.py HOST PORT NODE. Exits non-zero on the first mismatch and
prints "all coordination checks passed" at the end.
"""
import base64
import http.server
import json
import socket
import sys
import threading
import time

import consul
import consul.exceptions


def wait_until(what, cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def sessions_and_locks(c, node):
    sid = c.session.create(name="py-lock")
    _, info = c.session.info(sid)
    assert info["Node"] == node and info["Name"] == "py-lock", info
    assert info["Behavior"] == "release" and info["LockDelay"] == 15_000_000_000, info
    assert info["NodeChecks"] == ["serfHealth"], info
    assert sid in [s["ID"] for s in c.session.list()[1]]
    assert sid in [s["ID"] for s in c.session.node(node)[1]]

    other = c.session.create(name="py-other", lock_delay=0)
    assert c.kv.put("locks/a", "mine", acquire=sid) is True
    _, entry = c.kv.get("locks/a")
    assert entry["Session"] == sid and entry["LockIndex"] == 1 and entry["Value"] == b"mine", entry
    assert c.kv.put("locks/a", "theirs", acquire=other) is False, "held by another session"
    assert c.kv.put("locks/a", "x", release=other) is False, "only the holder releases"
    assert c.kv.put("locks/a", "done", release=sid) is True
    _, entry = c.kv.get("locks/a")
    assert "Session" not in entry and entry["Value"] == b"done", entry
    assert c.kv.put("locks/a", "theirs", acquire=other) is True
    assert c.kv.get("locks/a")[1]["LockIndex"] == 2

    # Destroying the holder releases its lock; the lock delay (15 s) then keeps others out.
    assert c.session.destroy(other) is True
    _, entry = c.kv.get("locks/a")
    assert "Session" not in entry, entry
    # "other" had lock_delay 0: "sid" may take it at once.
    assert c.kv.put("locks/a", "again", acquire=sid) is True
    third = c.session.create(name="py-third")
    assert c.session.destroy(sid) is True
    assert c.kv.put("locks/a", "x", acquire=third) is False, "inside sid's 15 s lock delay"

    # A lock without a valid session is an error, and changes nothing.
    assert c.kv.put("locks/b", "before") is True
    before = c.kv.get("locks/b")[1]
    try:
        c.kv.put("locks/b", "x", acquire="00000000-0000-0000-0000-000000000000")
        raise AssertionError("an unknown session must be refused")
    except consul.ConsulException as e:
        assert "invalid session" in str(e), e
    assert c.kv.get("locks/b")[1] == before

    # A session for a node that does not exist is refused.
    try:
        c.session.create(node="no-such-node")
        raise AssertionError("a session on an unknown node must be refused")
    except consul.ConsulException as e:
        assert "no-such-node" in str(e), e

    # TTL sessions renew and answer with themselves.
    ttl = c.session.create(ttl=10)
    renewed = c.session.renew(ttl)
    assert renewed["ID"] == ttl and renewed["TTL"] == "10s", renewed
    c.session.destroy(ttl)
    c.session.destroy(third)
    assert c.session.info(sid)[1] is None


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def failing_check_releases_the_lock(c):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    check = consul.Check.http(f"http://127.0.0.1:{port}/", interval="1s", timeout="500ms")
    c.agent.service.register("locked-web", service_id="locked-web-1", port=port, check=check)
    wait_until("the check passing", lambda: any(
        ch["Status"] == "passing" for ch in c.health.checks("locked-web")[1]))
    sid = c.session.create(checks=["serfHealth", "service:locked-web-1"])
    assert c.kv.put("locks/web", "held", acquire=sid) is True
    server.shutdown()
    server.server_close()
    stopped = time.monotonic()
    wait_until("the lock released", lambda: "Session" not in c.kv.get("locks/web")[1], timeout=5)
    released = time.monotonic() - stopped
    print(f"lock released {released * 1000:.0f} ms after the checked server stopped (interval 1 s)")
    assert released <= 1.5, released
    assert c.session.info(sid)[1] is None, "the session was invalidated"
    c.agent.service.deregister("locked-web-1")


def b64(s):
    return base64.b64encode(s.encode()).decode()


def transactions(c):
    ops = [{"KV": {"Verb": "set", "Key": f"txn/{i:02}", "Value": b64(str(i))}} for i in range(64)]
    result = c.txn.put(ops)
    assert len(result["Results"]) == 64 and result["Errors"] is None, result
    _, keys = c.kv.get("txn/", keys=True)
    assert len(keys) == 64, keys

    index = c.kv.get("txn/00")[1]["ModifyIndex"]
    failing = [
        {"KV": {"Verb": "set", "Key": "txn/new", "Value": b64("x")}},
        {"KV": {"Verb": "delete", "Key": "txn/01"}},
        {"KV": {"Verb": "cas", "Key": "txn/00", "Value": b64("y"), "Index": index + 1000}},
    ]
    try:
        c.txn.put(failing)
        raise AssertionError("a failing transaction must answer 409")
    except consul.exceptions.ClientError as e:
        text = str(e)
        assert text.startswith("409"), text
        body = json.loads(text[4:])
        assert body["Results"] is None and body["Errors"][0]["OpIndex"] == 2, body
        assert "index is stale" in body["Errors"][0]["What"], body
    assert c.kv.get("txn/new")[1] is None, "nothing of a failed transaction is applied"
    assert c.kv.get("txn/01")[1]["Value"] == b"1"
    assert c.kv.get("txn/00")[1]["Value"] == b"0"

    try:
        c.txn.put(ops + [{"KV": {"Verb": "get", "Key": "txn/00"}}])
        raise AssertionError("65 operations must be refused")
    except consul.exceptions.ClientError as e:
        assert str(e).startswith("413") and "too many operations (65 > 64)" in str(e), e

    read = c.txn.put([{"KV": {"Verb": "get", "Key": "txn/05"}}, {"KV": {"Verb": "check-index", "Key": "txn/00", "Index": index}}])
    assert base64.b64decode(read["Results"][0]["KV"]["Value"]) == b"5", read


def maintenance(c, node):
    c.agent.service.register("maint-web", service_id="maint-web-1", port=9)
    assert len(c.health.service("maint-web", passing=True)[1]) == 1
    assert c.agent.service.maintenance("maint-web-1", True, reason="deploying v2") is True
    assert c.health.service("maint-web", passing=True)[1] == [], "an instance in maintenance is not passing"
    checks = c.agent.checks()
    check = checks["_service_maintenance:maint-web-1"]
    assert check["Status"] == "critical" and check["Notes"] == "deploying v2", check
    assert c.agent.service.maintenance("maint-web-1", False) is True
    assert len(c.health.service("maint-web", passing=True)[1]) == 1

    assert c.agent.maintenance(True) is True
    check = c.agent.checks()["_node_maintenance"]
    assert check["Status"] == "critical" and "no reason was provided" in check["Notes"], check
    assert c.health.service("maint-web", passing=True)[1] == []
    assert c.agent.maintenance(False) is True
    assert "_node_maintenance" not in c.agent.checks()
    c.agent.service.deregister("maint-web-1")


def main():
    host, port, node = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    c = consul.Consul(host=host, port=port)
    sessions_and_locks(c, node)
    failing_check_releases_the_lock(c)
    transactions(c)
    maintenance(c, node)
    print("all coordination checks passed")


if __name__ == "__main__":
    main()
