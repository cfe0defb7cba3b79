#!/usr/bin/env python3
"""Gateway mode's memory under a slow client, measured on the real binary (called by
scripts/check-gateway-memory.sh): an upstream on loopback answers a 10 MiB body as fast as it can; a
client asks for it through the node, reads nothing for two seconds, then reads slowly. The node's
RSS (VmRSS of its process) is sampled throughout; with back-pressure it grows by far less than the
response, because the node reads from the upstream only as fast as the client takes it.
"""
import argparse
import http.server
import socket
import sys
import threading
import time

SIZE = 10 * 1024 * 1024


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(SIZE))
        self.end_headers()
        chunk = b"x" * 65536
        for _ in range(SIZE // len(chunk)):
            self.wfile.write(chunk)  # blocks while the node does not read: TCP back-pressure

    def log_message(self, *args):
        pass


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--data-port", type=int, required=True)
    parser.add_argument("--node-pid", type=int, required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.upstream_port), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    # Warm the node's pools with one small proxied request first, so the baseline is a working node.
    client = socket.create_connection(("127.0.0.1", args.data_port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.settimeout(30)
    before = rss_kib(args.node_pid)
    request = f"GET /large HTTP/1.1\r\nHost: a\r\nX-API-Key: {args.key}\r\nConnection: close\r\n\r\n"
    client.sendall(request.encode())
    peak = before
    for _ in range(20):  # two seconds without reading a byte
        time.sleep(0.1)
        peak = max(peak, rss_kib(args.node_pid))
    stalled = peak - before
    received = b""
    deadline = time.time() + 60
    while time.time() < deadline:
        data = client.recv(262144)
        if not data:
            break
        received += data
        peak = max(peak, rss_kib(args.node_pid))
        time.sleep(0.005)  # a slow reader: about 50 MB/s at most
    head, _, body = received.partition(b"\r\n\r\n")
    growth = peak - before
    print(f"gateway memory: 10 MiB response to a slow client; node RSS {before} KiB before, "
          f"+{stalled} KiB while the client read nothing for 2 s, +{growth} KiB at most; {len(body)} body bytes received")
    if not head.startswith(b"HTTP/1.1 200") or len(body) != SIZE:
        print(f"error: expected a 200 with {SIZE} bytes, got {head[:80]!r} and {len(body)} bytes", file=sys.stderr)
        return 1
    if growth > 4 * 1024:
        print(f"error: the node's RSS grew by {growth} KiB for a 10 MiB response: it buffered instead of waiting for the client",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
