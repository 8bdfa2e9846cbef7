#!/usr/bin/env bash
# Creates the Secrets the manifests mount, with fresh random values, one Secret per role, each holding only what
# that role needs (the user-token key: gateways and Envoy; the worker-token key: schedulers; the enrolment
# secret: schedulers and workers; each Valkey password: its role):
#
#   resilienttask-gateway    database_url, jwt_secret, redis_services_password
#   resilienttask-scheduler  database_url, worker_key, worker_enrolment_secret, redis_services_password
#   resilienttask-worker     worker_enrolment_secret, redis_worker_password
#   resilienttask-edge       jwt_secret
#   resilienttask-valkey     users.acl (password hashes only, for Valkey's --aclfile), admin_password
#
# Usage (from the repository, with `make .venv/.installed` done, or kubectl and rtask-redis-init on PATH):
#   deploy/kubernetes/create-secrets.sh --database-url 'postgresql://rtask:PASSWORD@postgres:5432/rtask' \
#       [--namespace resilienttask] [--print]
# --print writes the Secrets as YAML on stdout instead of creating them (for a secret manager or sealing).
# Existing Secrets are never overwritten: delete them first to rotate every value (docs/kubernetes.md).
set -euo pipefail

namespace=resilienttask
database_url=
print=
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace=$2; shift 2 ;;
    --database-url) database_url=$2; shift 2 ;;
    --print) print=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$database_url" ]; then
  echo "--database-url is required (the rtask role's URL; host 'postgres' is the ExternalName Service)" >&2
  exit 2
fi

repo=$(cd "$(dirname "$0")/../.." && pwd)
PATH="$repo/.venv/bin:$PATH"
python=$(command -v python3)

if [ -z "$print" ] && kubectl -n "$namespace" get secret resilienttask-gateway >/dev/null 2>&1; then
  echo "the Secrets exist in namespace $namespace; delete them first to rotate every value" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
secret() { "$python" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$work/$1"; }
secret jwt_secret
secret worker_key
secret worker_enrolment_secret
secret redis_services_password
secret redis_worker_password
secret redis_admin_password
printf '%s' "$database_url" > "$work/database_url"
rtask-redis-init --secrets-dir "$work" --acl-file "$work/users.acl" >/dev/null

render() {  # name, then key=file pairs
  local name=$1; shift
  local args=()
  for pair in "$@"; do args+=("--from-file=${pair%%=*}=$work/${pair#*=}"); done
  kubectl create secret generic "$name" --namespace "$namespace" "${args[@]}" --dry-run=client -o yaml
}

{
  render resilienttask-gateway database_url=database_url jwt_secret=jwt_secret \
    redis_services_password=redis_services_password
  echo ---
  render resilienttask-scheduler database_url=database_url worker_key=worker_key \
    worker_enrolment_secret=worker_enrolment_secret redis_services_password=redis_services_password
  echo ---
  render resilienttask-worker worker_enrolment_secret=worker_enrolment_secret \
    redis_worker_password=redis_worker_password
  echo ---
  render resilienttask-edge jwt_secret=jwt_secret
  echo ---
  render resilienttask-valkey users.acl=users.acl admin_password=redis_admin_password
} > "$work/secrets.yaml"

if [ -n "$print" ]; then
  cat "$work/secrets.yaml"
else
  kubectl apply -f "$work/secrets.yaml"
fi
