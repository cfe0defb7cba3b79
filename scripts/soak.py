#!/usr/bin/env python3
"""Soak test (not in CI): hours-scale faults against two nodes, with the history checker.

    scripts/soak.py [--bin .build/release/keygate] [--minutes 30] [--connections 16]

For --minutes (bounded; every loop stops by itself) it runs, all on loopback:
  - a throwaway redis-server and two Keygate nodes;
  - background load: wrk on cached keys (about half the machine's capacity with the default
    --connections on 2 cores; the achieved rate is reported);
  - checked traffic: one key per second created, warmed on both nodes, revoked through the admin
    API, then polled on both nodes; every request and revoke acknowledgement is recorded;
  - faults: the nodes' invalidation connections killed every minute (CLIENT KILL TYPE pubsub) and
    Redis paused (SIGSTOP) for 2 s every 5 minutes.
It reports checker violations (a 200 for a key requested more than the bound after its revoke
returned; must be 0), usage counts dropped or wrong (must be 0), and RSS and open file descriptors of
each node over time (must stay flat). Exit code 0 only when all of that holds.
"""
import argparse, http.client, json, os, random, shutil, signal, socket, subprocess, sys, tempfile, threading, time

# With faults the node's promise is the ping interval + timeout (2 s) for a revoke made while its
# channel is down; with the channel up it is milliseconds.
BOUND = 2.2


def free_port():
    for _ in range(100):
        port = random.randrange(20000, 30000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit("no free port")


def request(port, method, path, headers=None, body=None, timeout=5):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def status_of(port, path, headers):
    """The status, or 0 when the node cannot be reached (counted as an error, never as a 200)."""
    try:
        return request(port, "GET", path, headers)[0]
    except OSError:
        return 0


def wait_ready(port, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/health/ready", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"node on {port} not ready")


def sample(pid):
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=".build/release/keygate")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--kill-every", type=int, default=60, help="seconds between CLIENT KILL TYPE pubsub")
    parser.add_argument("--pause-every", type=int, default=300, help="seconds between 2 s SIGSTOPs of Redis")
    args = parser.parse_args()
    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} not found: swift build -c release --product keygate")
    for tool in ("redis-server", "redis-cli", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: apt-get install redis-server redis-tools wrk")

    work = tempfile.mkdtemp(prefix="keygate-soak-")
    processes = []
    ok = False
    try:
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
        processes.append(redis)
        time.sleep(0.5)
        env = dict(os.environ, KEYGATE_REDIS_URL=f"redis://127.0.0.1:{redis_port}", KEYGATE_THREADS="1")
        nodes = []
        for index in range(2):
            data, control = free_port(), free_port()
            log = open(os.path.join(work, f"node{index}.log"), "w")
            node = subprocess.Popen([binary, "serve", "--data-port", str(data), "--control-port", str(control),
                                     "--usage-spill-path", os.path.join(work, f"spill{index}.jsonl")],
                                    env=env, stdout=log, stderr=log)
            processes.append(node)
            nodes.append((node, data, control))
        for _, _, control in nodes:
            wait_ready(control)

        def create(user, scopes):
            out = subprocess.run([binary, "keys", "create", "--user", user, "--json"] + sum((["--scope", s] for s in scopes), []),
                                 env=env, check=True, capture_output=True, text=True).stdout
            return json.loads(out)

        admin = create("soak-admin", ["keygate:admin"])["key"]
        hot = create("soak-load", [])["key"]
        script = os.path.join(work, "hot.lua")
        with open(script, "w") as lua:
            lua.write(f'wrk.headers["X-API-Key"] = "{hot}"\n')
        duration = int(args.minutes * 60)
        load = subprocess.Popen(["wrk", "-t1", f"-c{args.connections}", f"-d{duration}s", "-s", script,
                                 f"http://127.0.0.1:{nodes[0][1]}/auth"], stdout=subprocess.PIPE, text=True)
        processes.append(load)

        history, revoked, successes = [], {}, {}
        samples = []
        stop = threading.Event()

        def faults():
            started = time.monotonic()
            next_kill, next_pause = args.kill_every, args.pause_every
            while not stop.wait(1):
                elapsed = time.monotonic() - started
                if elapsed >= next_kill:
                    subprocess.run(["redis-cli", "-p", str(redis_port), "CLIENT", "KILL", "TYPE", "pubsub"], capture_output=True)
                    next_kill += args.kill_every
                if elapsed >= next_pause:
                    os.kill(redis.pid, signal.SIGSTOP)
                    time.sleep(2)
                    os.kill(redis.pid, signal.SIGCONT)
                    next_pause += args.pause_every

        fault_thread = threading.Thread(target=faults, daemon=True)
        fault_thread.start()
        end = time.monotonic() + duration
        last_sample = 0
        while time.monotonic() < end:
            if time.monotonic() - last_sample >= 10:
                samples.append([time.monotonic()] + [sample(node.pid) for node, _, _ in nodes])
                last_sample = time.monotonic()
            try:
                status, body = request(nodes[1][2], "POST", "/v1/keys", {"X-API-Key": admin, "Content-Type": "application/json"},
                                       json.dumps({"user": "soak"}))
            except OSError:
                time.sleep(1)
                continue
            if status != 201:
                time.sleep(1)  # Redis paused: the admin API answers 503; try again
                continue
            issued = json.loads(body)
            key, key_id = issued["key"], issued["id"]
            successes[key] = 0
            dead = [index for index, (node, _, _) in enumerate(nodes) if node.poll() is not None]
            if dead:
                print(f"node(s) {dead} exited (codes {[nodes[i][0].returncode for i in dead]}); logs in {work}")
                break
            for _, data, _ in nodes:
                status = status_of(data, "/auth", {"X-API-Key": key})
                history.append((time.monotonic(), key, status))
                successes[key] += status == 200
            for _ in range(100):  # bounded: 20 s of retries while Redis is paused
                try:
                    status = request(nodes[0][2], "POST", f"/v1/keys/{key_id}/revoke", {"X-API-Key": admin})[0]
                except OSError:
                    status = 0
                if status == 200:
                    break
                time.sleep(0.2)
            else:
                print("error: a revoke did not go through in 20 s")
                break
            revoked[key] = time.monotonic()
            poll_end = time.monotonic() + 1
            while time.monotonic() < poll_end:
                for _, data, _ in nodes:
                    started = time.monotonic()
                    status = status_of(data, "/auth", {"X-API-Key": key})
                    history.append((started, key, status))
                    successes[key] += status == 200
                time.sleep(0.01)
        stop.set()
        load_output = load.communicate(timeout=60)[0]

        dropped = 0
        for _, _, control in nodes:
            metrics = request(control, "GET", "/metrics")[1].decode()
            for line in metrics.splitlines():
                if line.startswith("keygate_usage_dropped_total "):
                    dropped += int(float(line.split()[1]))
        for node, _, _ in nodes:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=30)

        violations = [(t - revoked[k], k[:8]) for t, k, s in history if s == 200 and k in revoked and t > revoked[k] + BOUND]
        # Usage totals of every checked key, read back through the CLI.
        listed = json.loads(subprocess.run([binary, "keys", "list", "--user", "soak", "--json"], env=env, check=True,
                                           capture_output=True, text=True).stdout)
        totals = {}
        for record in listed:
            usage = json.loads(subprocess.run([binary, "keys", "usage", record["id"], "--json"], env=env, check=True,
                                              capture_output=True, text=True).stdout)
            totals[record["id"]] = usage["total"]
        expected_total = sum(successes.values())
        observed_total = sum(totals.values())
        wrong_counts = abs(expected_total - observed_total)

        print(f"checked keys: {len(successes)}, requests: {len(history)}, revocations: {len(revoked)}")
        print(f"background load: {' '.join(l.strip() for l in load_output.splitlines() if 'Requests/sec' in l)}")
        print(f"checker violations (200 later than {BOUND}s after the revoke returned): {len(violations)} {violations[:5]}")
        print(f"usage: 200s counted {expected_total}, totals in Redis {observed_total}; dropped {dropped}")
        print("minute  " + "  ".join(f"node{i} RSS KiB / fds" for i in range(len(nodes))))
        for row in samples:
            print(f"{(row[0] - samples[0][0]) / 60:6.1f}  " + "  ".join(f"{rss:>12} / {fds:<4}" for rss, fds in row[1:]))
        flat = True
        if len(samples) >= 6:
            warm = samples[len(samples) // 3]
            for index in range(len(nodes)):
                rss0, fds0 = warm[1 + index]
                rss1, fds1 = samples[-1][1 + index]
                if rss1 > rss0 * 1.2 + 4096 or fds1 > fds0 + 10:
                    flat = False
        print(f"RSS and fds flat after warm-up: {flat}")
        ok = not violations and dropped == 0 and wrong_counts == 0 and flat
        print("soak passed" if ok else "soak FAILED")
        return 0 if ok else 1
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work} (node logs) for inspection")


if __name__ == "__main__":
    sys.exit(main())
