#!/usr/bin/env python3
"""B5 timing for benchmarks/refusal-timing.sh: unknown against revoked keys, each uncached.

Creates 2 x SAMPLES keys through the admin API, revokes half and deletes the other half's records
from Redis (well-formed keys Redis no longer knows: "unknown"), then times /auth for one of each,
interleaved, over one keep-alive connection, and prints p50/p90 of each and their ratio.
"""
import hashlib
import http.client
import json
import socket
import subprocess
import sys
import time

data_port, control_port, admin, redis_port, namespace, samples = (
    int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))

api = http.client.HTTPConnection("127.0.0.1", control_port)


def call(method, path, body=None):
    api.request(method, path, body=json.dumps(body) if body is not None else None,
                headers={"X-API-Key": admin, "Content-Type": "application/json"})
    response = api.getresponse()
    return json.loads(response.read())


keys = [call("POST", "/v1/keys", {"user": "b5"}) for _ in range(2 * samples)]
for key in keys[:samples]:
    call("POST", f"/v1/keys/{key['id']}/revoke")
revoked = [key["key"] for key in keys[:samples]]
unknown = [key["key"] for key in keys[samples:]]
deletes = "".join(f"DEL {namespace}:key:{{{hashlib.sha256(k.encode()).hexdigest()}}}\n" for k in unknown)
subprocess.run(["redis-cli", "-p", redis_port], input=deletes, text=True, capture_output=True, check=True)

connection = socket.create_connection(("127.0.0.1", data_port))
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def timed(key):
    request = f"GET /auth HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode()
    start = time.perf_counter_ns()
    connection.sendall(request)
    reply = b""
    while not reply.endswith(b"}"):
        reply += connection.recv(4096)
    if not reply.startswith(b"HTTP/1.1 401"):
        sys.exit(f"expected 401, got {reply[:40]!r}")
    return (time.perf_counter_ns() - start) / 1000


unknown_us, revoked_us = [], []
for index in range(samples):
    unknown_us.append(timed(unknown[index]))
    revoked_us.append(timed(revoked[index]))


def percentile(values, fraction):
    return sorted(values)[int(len(values) * fraction)]


u50, u90 = percentile(unknown_us, 0.5), percentile(unknown_us, 0.9)
r50, r90 = percentile(revoked_us, 0.5), percentile(revoked_us, 0.9)
print(f"{samples} samples each: unknown p50 {u50:.1f} us, p90 {u90:.1f} us; revoked p50 {r50:.1f} us, "
      f"p90 {r90:.1f} us; revoked/unknown p50 {r50 / u50:.3f}, p90 {r90 / u90:.3f}")
