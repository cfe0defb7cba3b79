# shellcheck shell=bash
# Shared by the scripts: install missing Debian packages, find a free loopback port, the flags of
# release builds.

# Release builds (scripts/build-release.sh, and the benchmark tools, which share its build folder so
# SwiftNIO and BoringSSL are compiled once for both): no run-time exclusivity checks, see
# build-release.sh.
# shellcheck disable=SC2034  # used by the scripts that source this file
release_flags=(-c release -Xswiftc -enforce-exclusivity=unchecked)

# ensure_packages PKG...: installs the missing ones when root; otherwise prints the apt line and fails.
ensure_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        # Debian starts packaged servers on install; our scripts run their own on free ports.
        for svc in redis-server nginx prometheus; do
            if printf '%s\n' "${missing[@]}" | grep -qx "$svc"; then service "$svc" stop >/dev/null 2>&1 || true; fi
        done
    else
        echo "error: missing packages. Install them with:" >&2
        echo "  sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
}

# free_port: prints a free TCP port on 127.0.0.1 below the ephemeral range (32768-60999), so that
# outgoing client sockets cannot be holding it.
free_port() {
    python3 -c 'import random, socket
for _ in range(100):
    p = random.randrange(20000, 30000); s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); s.close(); print(p); break
    except OSError:
        s.close()'
}

# free_cluster_port: a free loopback port for a Redis Cluster member, whose cluster bus listens on
# the port + 10,000 as well: both are checked, and kept below Linux's ephemeral range (32768 up), where
# outgoing connections would take bus ports at random.
free_cluster_port() {
    python3 -c 'import random, socket
for _ in range(200):
    p = random.randrange(20000, 22700)
    sockets = [socket.socket(), socket.socket()]
    try:
        sockets[0].bind(("127.0.0.1", p)); sockets[1].bind(("127.0.0.1", p + 10000)); print(p); break
    except OSError:
        pass
    finally:
        for s in sockets: s.close()'
}

# ensure_python_tools: the pinned PyPI tools the checks use, in .venv/ at the repository root (kept
# out of git). Prints nothing when they are already there.
python_tools=("schemathesis==4.32.5" "openapi-spec-validator==0.9.0" "kubernetes-validate==1.37.0" "selenium==4.45.0")
ensure_python_tools() {
    local venv="$1"
    if [ -f "$venv/.tools" ] && [ "$(cat "$venv/.tools")" = "${python_tools[*]}" ]; then return 0; fi
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${python_tools[@]}"
    echo "${python_tools[*]}" > "$venv/.tools"
}
