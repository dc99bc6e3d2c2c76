#!/usr/bin/env bash
# make test-containers: the whole federation as containers, end to end, with Podman.
#  1. builds the base (deploy/base-image.sh) and the image (deploy/build-image.sh);
#  2. a container without its kit refuses to start, naming the missing file;
#  3. compose up: provisioning, canaries planted, platform, SuperLink, 3 banks' SuperNodes
#     and scoring servers, the run (2 rounds x 1 epoch of default-credit, run.toml);
#  4. tshark captures the federation's networks during the run: TLS on every connection,
#     no canary of tests/test_privacy.py (check_capture.py);
#  5. every long-running service healthy (fails on any that is not);
#  6. 20 applicants scored through bank-1's scoring container;
#  7. a bank's container cannot reach another bank's; the networks are internal;
#  8. `fedscore audit verify` over every party's ledger, from the volumes;
#  9. compose down -v leaves no container, network or volume of the project.
# Needs root, podman, runc, debootstrap, tshark (.ci/run installs them) and the venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/.venv/bin}
export PYTHONPATH=$ROOT   # this checkout's code for the host-side helpers, whatever the venv's
export CONTAINERS_CONF=$ROOT/deploy/containers.conf
export FEDSCORE_IMAGE=${FEDSCORE_IMAGE:-localhost/fedscore:latest}
OUT=$ROOT/out/containers
PROJECT=fedscore
COMPOSE=("$BIN/podman-compose" -f "$ROOT/compose.yaml")
rm -rf "$OUT"; mkdir -p "$OUT"
START=$(date +%s)
step() { echo "== [$(( $(date +%s) - START ))s] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
ctr() { podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
          --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -1; }
TSHARK_PID=""
teardown() {
    local rc=$?
    [[ -n "$TSHARK_PID" ]] && kill "$TSHARK_PID" 2>/dev/null || true
    if [[ $rc -ne 0 ]]; then
        for c in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
            podman logs "$c" > "$OUT/$c.log" 2>&1 || true
            echo "--- last lines of $c (all in $OUT/$c.log)"; tail -15 "$OUT/$c.log"
        done
    fi
    step "compose down -v"
    "${COMPOSE[@]}" down -v -t 10 > "$OUT/down.log" 2>&1 || true
    left=$(podman ps -a -q --filter "label=io.podman.compose.project=$PROJECT")
    nets=$(podman network ls -q --filter "label=io.podman.compose.project=$PROJECT")
    vols=$(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")
    if [[ -n "$left$nets$vols" ]]; then
        echo "FAIL: compose down left: containers [$left] networks [$nets] volumes [$vols]" >&2
        rc=1
    else
        echo "compose down: no container, network or volume of $PROJECT left"
    fi
    echo "test-containers: $([[ $rc -eq 0 ]] && echo passed || echo FAILED) in $(( $(date +%s) - START )) s"
    exit $rc
}
trap teardown EXIT

healthy() {  # healthy SERVICE TIMEOUT: run the image's HEALTHCHECK until it passes
    local c; c=$(ctr "$1"); local deadline=$(( $(date +%s) + $2 )); local t0; t0=$(date +%s)
    [[ -n "$c" ]] || fail "no container for service $1"
    until podman healthcheck run "$c" > /dev/null 2>&1; do
        [[ "$(podman inspect -f '{{.State.Running}}' "$c")" == true ]] || { podman logs "$c" 2>&1 | tail -20; fail "$1 is not running"; }
        (( $(date +%s) < deadline )) || fail "$1 is not healthy after $2 s"
        sleep 5
    done
    echo "$1 healthy ($(( $(date +%s) - t0 )) s of waiting)"
}

"${COMPOSE[@]}" down -v -t 5 > /dev/null 2>&1 || true   # what an interrupted run left
step "base image and image"
deploy/base-image.sh
deploy/build-image.sh

step "a container without its kit refuses to start, naming the missing file"
set +e
msg=$(podman run --rm -v "$ROOT/deploy/config/platform.toml:/config/node.toml:ro" \
      "$FEDSCORE_IMAGE" platform 2>&1); rc=$?
set -e
echo "$msg"
[[ $rc -eq 78 && "$msg" == *"missing file /kit/ca.crt"* ]] || fail "platform without kit: exit $rc"
kit=$(mktemp -d); "$BIN/python" -m fedscore.cli.main provision --out "$kit" --party bank-1 > /dev/null
chmod -R a+rX "$kit"
set +e
msg=$(podman run --rm -v "$kit/bank-1:/kit:ro" \
      -v "$ROOT/deploy/config/supernode-bank-1.toml:/config/node.toml:ro" \
      "$FEDSCORE_IMAGE" supernode 2>&1); rc=$?
set -e
rm -rf "$kit"; echo "$msg"
[[ $rc -eq 78 && "$msg" == *"missing file /kit/supernode.key"* ]] || fail "supernode without supernode.key: exit $rc"

step "compose up: provisioning, then canaries planted in the platform's and bank-1's data"
"${COMPOSE[@]}" up -d provision > "$OUT/up-provision.log" 2>&1
[[ "$(podman wait "$(ctr provision)")" == 0 ]] || { podman logs "$(ctr provision)"; fail "provisioning failed"; }
"$BIN/python" -m tests.containers.check_capture canaries | podman run --rm -i --user 0 \
    --network none -v "${PROJECT}_data-platform:/datasets/platform" \
    -v "${PROJECT}_data-bank-1:/datasets/bank-1" -v "$ROOT/tests/containers:/t:ro" \
    "$FEDSCORE_IMAGE" python3 /t/plant_canaries.py

step "compose up: the federation"
"${COMPOSE[@]}" up -d > "$OUT/up.log" 2>&1 || { cat "$OUT/up.log"; fail "compose up"; }
ifaces=()
for net in platform-team bank-1 bank-2 bank-3; do
    [[ "$(podman network inspect -f '{{.Internal}}' "${PROJECT}_$net")" == true ]] || fail "network $net is not internal"
    ifaces+=(-i "$(podman network inspect -f '{{.NetworkInterface}}' "${PROJECT}_$net")")
done
tshark -q "${ifaces[@]}" -w "$OUT/federation.pcapng" > "$OUT/tshark.log" 2>&1 &
TSHARK_PID=$!
healthy platform 180
healthy superlink 120
for k in 1 2 3; do healthy "supernode-bank-$k" 180; done

step "the run: 2 rounds x 1 epoch (follow: podman logs -f $(ctr submit))"
code=$(podman wait "$(ctr submit)")
podman logs "$(ctr submit)" > "$OUT/submit.log" 2>&1
grep -E "submitted|evaluated|released" "$OUT/submit.log" | cut -c1-200
[[ "$code" == 0 ]] || fail "the run failed (submit exited $code)"

step "every long-running service healthy"
for s in platform superlink supernode-bank-1 supernode-bank-2 supernode-bank-3 \
         scoring-bank-1 scoring-bank-2 scoring-bank-3; do
    healthy "$s" 240
done

step "20 applicants scored through bank-1's scoring container"
podman exec "$(ctr scoring-bank-1)" bash -c '
    set -euo pipefail
    python3 -c "import csv; r = csv.DictReader(open(\"/data/test.csv\")); [print(next(r)[\"user_id\"]) for _ in range(20)]" > /tmp/ids
    n=0
    while read -r id; do
        echo "{\"applicant_id\": \"$id\", \"requested_amount\": 20000}" > /tmp/applicant.json
        fedscore score /tmp/applicant.json --kit /kit --server 127.0.0.1:50061 --json > /tmp/answer.json
        python3 -c "import json; a = json.load(open(\"/tmp/answer.json\")); assert a.get(\"scored\") and 0 < a[\"pd\"] < 1, a; print(a[\"outcome\"], round(a[\"pd\"], 4), a.get(\"platform\", \"\"), a[\"model_version\"])"
        n=$((n + 1))
    done < /tmp/ids
    echo "scored $n applicants"' | tee "$OUT/scores.log"
[[ "$(tail -1 "$OUT/scores.log")" == "scored 20 applicants" ]] || fail "scoring"
grep -q "PLATFORM_PART_JOINED" "$OUT/scores.log" || fail "no applicant was scored jointly with the platform"

kill "$TSHARK_PID"; wait "$TSHARK_PID" 2>/dev/null || true; TSHARK_PID=""
step "the capture: TLS on every connection, no canary"
"$BIN/python" -m tests.containers.check_capture check "$OUT/federation.pcapng"

step "a bank's container reaches the platform and the SuperLink, never another bank's"
ip2=$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(ctr scoring-bank-2)")
podman exec -i "$(ctr supernode-bank-1)" python3 - "$ip2" <<'PY'
import socket, sys
def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "reached"
    except OSError as exc:
        return type(exc).__name__
must = {("platform", 50051), ("coordinator", 9092), ("scoring-bank-1", 50061)}
never = {("scoring-bank-2", 50061), ("supernode-bank-3", 9099), (sys.argv[1], 50061)}
got = {target: reach(*target) for target in must | never}
print(got)
bad = [t for t in must if got[t] != "reached"] + [t for t in never if got[t] == "reached"]
sys.exit(f"isolation broken for {bad}" if bad else 0)
PY

step "fedscore audit verify over every party's ledger, from the volumes"
"${COMPOSE[@]}" --profile audit run --rm audit 2>&1 | tee "$OUT/audit.log"
grep -q "verified" "$OUT/audit.log" || fail "the ledgers do not verify"
