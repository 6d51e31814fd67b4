#!/usr/bin/env bash
# Unpack Debian's redis-server 7.0 (and the two libraries it links that a bare machine lacks)
# into DIR, without installing anything: DIR/redis-server is a wrapper that runs it.
# Needs apt-get and dpkg (Debian 12); `make servers` calls this.
set -euo pipefail
dest="${1:?usage: fetch-redis-7.0.sh DIR}"
dest="$(mkdir -p "$dest" && cd "$dest" && pwd)"
if [ -x "$dest/redis-server" ] && "$dest/redis-server" --version | grep -q 'v=7\.0\.'; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    echo "fetch-redis-7.0: no apt-get/dpkg here; install a Redis 7.0 redis-server and set" \
        "REDISAQ_REDIS_SERVER to its path" >&2
    exit 1
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then as_root=(sudo -n); fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
packages=(redis-server redis-tools libjemalloc2 liblzf1)
if ! apt-get download "${packages[@]}" >/dev/null 2>&1; then
    ${as_root[@]+"${as_root[@]}"} apt-get update -qq
    apt-get download "${packages[@]}" >/dev/null 2>&1
fi
for deb in ./*.deb; do dpkg -x "$deb" root; done
rm -rf "$dest/usr"
cp -a root/usr "$dest/"
cat > "$dest/redis-server" <<'WRAPPER'
#!/bin/sh
here="$(dirname "$0")"
LD_LIBRARY_PATH="$here/usr/lib/x86_64-linux-gnu:$here/usr/lib/aarch64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    exec "$here/usr/bin/redis-server" "$@"
WRAPPER
chmod +x "$dest/redis-server"
version="$("$dest/redis-server" --version)"
case "$version" in
    *"v=7.0."*) echo "fetch-redis-7.0: $version" ;;
    *) echo "fetch-redis-7.0: Debian's package here is not Redis 7.0: $version" >&2; exit 1 ;;
esac
