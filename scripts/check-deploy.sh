#!/usr/bin/env bash
# Offline validation of the deployment files (called by scripts/test.sh): shellcheck on every
# script, promtool on the Prometheus files, kubernetes-validate on the manifests, systemd-analyze on
# the unit, the Traefik/Envoy examples and the Grafana dashboard parsed. No Docker engine runs here: the Dockerfile is not built.
#
#   scripts/check-deploy.sh KEYGATE_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/packages.sh
bin=$1
venv="$PWD/.venv"

echo "== shellcheck"
shellcheck -x -P SCRIPTDIR:. scripts/*.sh scripts/lib/*.sh deploy/local/*.sh fuzz/run.sh .ci/run
(cd benchmarks && shellcheck -x ./*.sh)

echo "== every script the READMEs tell a user to run is executable in git"
# Names are read from the READMEs themselves, so the check cannot go stale. Sourced libraries
# (scripts/lib/, deploy/local/common.sh) are not commands and are never named there.
not_executable=()
while read -r script; do
    [ -f "$script" ] || { echo "error: README names $script, which does not exist" >&2; exit 1; }
    mode=$(git ls-files -s -- "$script" | cut -d' ' -f1)
    [ "$mode" = 100755 ] || not_executable+=("$script (git mode ${mode:-untracked})")
done < <(grep -ohE '(scripts|benchmarks|deploy|fuzz)/[A-Za-z0-9_./-]+\.(sh|py)' README.md benchmarks/README.md | sort -u)
if [ ${#not_executable[@]} -gt 0 ]; then
    printf 'error: not executable in git (fix with git update-index --chmod=+x): %s\n' "${not_executable[@]}" >&2
    exit 1
fi

echo "== promtool check config / rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml

echo "== kubernetes-validate"
ensure_python_tools "$venv"
# The ServiceMonitor is a Prometheus Operator custom resource: no schema ships with Kubernetes, so
# it is reported as a warning and only parsed.
"$venv/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml

echo "== systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
    unit_dir=$(mktemp -d)
    sed "s|/usr/local/bin/keygate|$bin|" deploy/systemd/keygate.service > "$unit_dir/keygate.service"
    systemd-analyze verify "$unit_dir/keygate.service"
    rm -rf "$unit_dir"
else
    echo "systemd-analyze not available: skipped"
fi

echo "== Traefik and Envoy examples (YAML syntax)"
"$venv/bin/python" -c 'import sys, yaml; [yaml.safe_load(open(path)) for path in sys.argv[1:]]' \
    deploy/traefik/keygate.yml deploy/envoy/keygate.yaml

echo "== Grafana dashboard"
python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["panels"], "no panels"; print(len(d["panels"]), "panels")' \
    deploy/grafana/keygate-dashboard.json
echo "deployment files checks passed"
