#!/usr/bin/env bash
# Install the pgvector extension for PostgreSQL $1 (e.g. 15): the distribution's binary
# package postgresql-$1-pgvector when apt has it; else Debian's pgvector source package
# (from the next release's deb-src, same mirror as this machine's sources) built against
# postgresql-server-dev-$1. Idempotent: does nothing when the extension is already there.
set -euo pipefail
V="$1"
PG_CONFIG="/usr/lib/postgresql/$V/bin/pg_config"
[ -f "/usr/share/postgresql/$V/extension/vector.control" ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if apt-get install -y -qq "postgresql-$V-pgvector" >/dev/null 2>&1; then
  exit 0
fi
apt-get install -y -qq "postgresql-server-dev-$V" build-essential >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
mkdir -p "$work/lists/partial" "$work/parts"
cat >"$work/parts/pgvector-src.sources" <<SRC
Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$work/parts"
  -o "Dir::State::Lists=$work/lists")
apt-get "${apt_opts[@]}" update -qq
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only -qq pgvector 2>/dev/null)
tar -xzf "$work"/pgvector_*.orig.tar.gz -C "$work"
# OPTFLAGS="": no -march=native, so the build runs on any x86-64 machine
make -s -C "$work"/pgvector-*/ OPTFLAGS="" PG_CONFIG="$PG_CONFIG" >/dev/null
make -s -C "$work"/pgvector-*/ OPTFLAGS="" PG_CONFIG="$PG_CONFIG" install >/dev/null
echo "pgvector built from Debian's source package for PostgreSQL $V"
