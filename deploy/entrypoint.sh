#!/usr/bin/env bash
# The image's entrypoint: one role per container, each configured by files under /config.
#   platform    fedscore platform serve --config /config/node.toml
#   superlink   flower-superlink with the coordinator's certificate (ServerApp inside)
#   supernode   a bank's flower-supernode --node-config /config/node.toml (ClientApp inside)
#   scoring     fedscore bank score-server --config /config/node.toml (waits for /release)
#   provision   one-shot: CA and one kit per party into /kits/<party>, the scenario's data
#               into /datasets/<party>, the banks' SuperNode public keys into /supernode-keys
#   register    one-shot: register every /supernode-keys/*.pub with the SuperLink
#   submit      one-shot: flwr run with /config/run.toml, follow it, publish the release
#   healthcheck the image's HEALTHCHECK for the role this container runs
#   fedscore ARGS, or any other command: run as given
# A long-running role refuses to start, naming the file, when a file of its kit is missing.
set -euo pipefail
LIB=/usr/local/lib/fedscore
ROLE_FILE=/tmp/fedscore-role
KIT=${FEDSCORE_KIT:-/kit}
CONFIG=${FEDSCORE_CONFIG:-/config/node.toml}

die() { echo "fedscore entrypoint ($1): $2" >&2; exit 78; }  # 78: EX_CONFIG

need() {  # need ROLE FILE...: every file must exist, else name the first missing one
    local role=$1; shift
    for f in "$@"; do
        [[ -e "$f" ]] || die "$role" "missing file $f (mount the party's startup kit at $KIT and its config at $(dirname "$CONFIG"))"
    done
}
kit_files() { for f in ca.crt tls.crt tls.key sealing.key signing.key federation.json federation.sig kit.json; do echo "$KIT/$f"; done; }

role=${1:-help}
[[ $# -gt 0 ]] && shift
case "$role" in
platform)
    mapfile -t files < <(kit_files)
    need platform "${files[@]}" "$CONFIG"
    echo platform > "$ROLE_FILE"
    exec fedscore platform serve --config "$CONFIG" "$@" ;;
scoring)
    mapfile -t files < <(kit_files)
    need scoring "${files[@]}" "$CONFIG"
    echo "scoring $(python3 "$LIB/roles.py" party "$KIT")" > "$ROLE_FILE"
    python3 "$LIB/roles.py" wait-release "${FEDSCORE_RELEASE:-/release}"
    exec fedscore bank score-server --config "$CONFIG" "$@" ;;
superlink)
    need superlink "$KIT/ca.crt" "$KIT/tls.crt" "$KIT/tls.key" "$KIT/signing.key" \
        "$KIT/federation.json"
    echo superlink > "$ROLE_FILE"
    mkdir -p /state/coordinator "$FLWR_HOME"
    exec flower-superlink --ssl-certfile "$KIT/tls.crt" --ssl-keyfile "$KIT/tls.key" \
        --ssl-ca-certfile "$KIT/ca.crt" --enable-supernode-auth \
        --disable-runtime-dependency-installation --database /state/superlink.db \
        --host 0.0.0.0 --port "${SUPERLINK_PORT:-9092}" \
        --health-server-address 127.0.0.1:9099 "$@" ;;
supernode)
    mapfile -t files < <(kit_files)
    need supernode "${files[@]}" "$KIT/supernode.key" "$CONFIG"
    echo supernode > "$ROLE_FILE"
    mkdir -p /state "$FLWR_HOME"
    exec flower-supernode --superlink "${SUPERLINK:-coordinator:9092}" \
        --root-certificates "$KIT/ca.crt" --auth-supernode-private-key "$KIT/supernode.key" \
        --node-config "$CONFIG" --health-server-address 127.0.0.1:9099 "$@" ;;
provision|register|submit)
    echo oneshot > "$ROLE_FILE"
    exec python3 "$LIB/roles.py" "$role" "$@" ;;
healthcheck)
    read -r running party < "$ROLE_FILE" || running=""
    case "$running" in
    platform) exec fedscore health 127.0.0.1:50051 --kit "$KIT" --server platform ;;
    scoring) exec fedscore health 127.0.0.1:50061 --kit "$KIT" --server "$party" ;;
    superlink|supernode) exec python3 "$LIB/roles.py" health 127.0.0.1:9099 ;;
    oneshot) exit 0 ;;
    *) echo "no role started yet" >&2; exit 1 ;;
    esac ;;
help|-h|--help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*)
    exec "$role" "$@" ;;
esac
