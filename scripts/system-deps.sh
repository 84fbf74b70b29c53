#!/usr/bin/env bash
# Installs the Debian packages airlock's container and microVM backends and its image builder
# drive, when they are missing: an OCI runtime (runc; crun too, which the probe tries first;
# runsc, gVisor's, for pools with runtime = "runsc" and the tests that run each escape under it),
# mmdebstrap, nftables, iproute2, util-linux's nsenter and setpriv, QEMU (qemu-system-x86,
# qemu-utils), e2fsprogs (mkfs.ext4 for VM disks and container disk caps) and lz4 (a Firecracker vmlinux out of a
# Debian bzImage, in the driver tests) and g++ (libFuzzer, which the fuzz targets link, is C++).
# Needs root and apt-get.
#   scripts/system-deps.sh          install, or fail when not root
#   scripts/system-deps.sh --try    install when root; otherwise say what is missing and go on
set -euo pipefail
try=false
[ "${1:-}" = "--try" ] && try=true
missing() {
  need=()
  for tool in mmdebstrap:mmdebstrap runc:runc crun:crun runsc:runsc nft:nftables ip:iproute2 nsenter:util-linux \
      setpriv:util-linux qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mkfs.ext4:e2fsprogs \
      lz4:lz4 c++:g++; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || need+=("${tool##*:}")
  done
  # QEMU and its tools come from one version: installing qemu-system-x86 next to another
  # release's qemu-utils (a backport) makes apt remove qemu-utils.
  case " ${need[*]} " in
    *" qemu-system-x86 "*) case " ${need[*]} " in *" qemu-utils "*) ;; *) need+=(qemu-utils) ;; esac ;;
  esac
}
missing
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  if $try; then
    echo "==> not installing ${need[*]} (needs root and apt-get): container and microVM sandboxes unavailable"
    exit 0
  fi
  echo "scripts/system-deps.sh: installing ${need[*]} needs root and apt-get" >&2
  exit 1
fi
echo "==> apt-get install ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# A qemu-utils of another release (a backport installed by hand) would block qemu-system-x86:
# take both at the version apt offers for qemu-system-x86.
for i in "${!need[@]}"; do
  if [ "${need[$i]}" = qemu-utils ]; then
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] && need[$i]="qemu-utils=$v"
  fi
done
apt-get install -y -qq --no-install-recommends --allow-downgrades "${need[@]}" >/dev/null
missing
if [ ${#need[@]} -ne 0 ]; then
  echo "scripts/system-deps.sh: still missing after apt-get install: ${need[*]}" >&2
  exit 1
fi
