#!/usr/bin/env bash
# Make sure the system packages synfast builds and tests with are present.
# As root with apt-get: installs what is missing.  Otherwise: prints exactly
# what to install and fails, so nothing half-works later.
set -euo pipefail

missing=()
pkg-config --exists lmdb 2>/dev/null || missing+=(liblmdb-dev pkg-config)
pkg-config --exists libxxhash 2>/dev/null || missing+=(libxxhash-dev)
command -v mdb_dump >/dev/null || missing+=(lmdb-utils)
command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
command -v openssl >/dev/null || missing+=(openssl)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v rsync >/dev/null || missing+=(rsync)
command -v gcc >/dev/null || missing+=(gcc)
[ -x /usr/bin/time ] || missing+=(time)
# the programs users run beside synfast's streams: the tests use the real ones
command -v borg >/dev/null || missing+=(borgbackup)
command -v rclone >/dev/null || missing+=(rclone)
command -v bsdtar >/dev/null || missing+=(libarchive-tools)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v systemd-analyze >/dev/null || missing+=(systemd)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    exit 0
fi
echo "synfast needs these system packages: ${missing[*]}" >&2
echo "  Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
echo "  Fedora/RHEL:   sudo dnf install lmdb-devel lmdb xxhash-devel pkgconf-pkg-config xfsprogs openssl rsync gcc borgbackup rclone bsdtar" >&2
echo "  Alpine:        apk add lmdb-dev lmdb-tools xxhash-dev pkgconf xfsprogs openssl rsync build-base borgbackup rclone libarchive-tools" >&2
echo "  macOS:         brew install lmdb xxhash pkg-config openssl rsync borgbackup rclone libarchive" >&2
exit 1
