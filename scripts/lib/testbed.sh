# shellcheck shell=bash
# Shared set-up of the real-kernel test bed, sourced by scripts/test, scripts/demo
# and scripts/bench. Every step is idempotent: a second run finds its stamp and
# returns at once. Nothing is installed on the host kernel: the guest kernel is a
# Debian package extracted into the cache folder and booted by virtme-ng (QEMU).

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
CACHE=${HOSTAGENT_CACHE:-$REPO/.cache}
RESULTS=${HOSTAGENT_RESULTS:-$REPO/results}
VENV=$CACHE/venv
VNG_VERSION=1.42
GUEST_CPUS=${GUEST_CPUS:-2}
GUEST_MEM=${GUEST_MEM:-2G}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-3600}  # the kernel tier took ~35 min on 2 TCG cores

# Host packages: the initiator and multipath tools run in the guest from the
# shared root file system, QEMU and busybox boot it, rtslib-fb comes from PyPI.
APT_PACKAGES=(open-iscsi multipath-tools qemu-system-x86 kmod udev lsscsi sg3-utils
              iptables iproute2 busybox-static file python3-venv)

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

ensure_root() { [ "$(id -u)" = 0 ] || die "the test bed needs root (it installs Debian packages and boots a guest)"; }

ensure_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

python_for_venv() {
  local py
  for py in python3.13 python3.12 python3.11 python3 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { command -v "$py"; return; }
  done
  die "no Python 3.11+ with the venv module found"
}

ensure_venv() {
  local want have
  want=$(cat "$REPO/setup.py" "$REPO/scripts/lib/testbed.sh" | sha256sum | cut -c1-16)
  have=$(cat "$VENV/.stamp" 2>/dev/null || true)
  [ "$want" = "$have" ] && [ -x "$VENV/bin/python" ] && return 0
  log "building the virtualenv in $VENV"
  [ -x "$VENV/bin/python" ] || "$(python_for_venv)" -m venv "$VENV" || die "python -m venv failed"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]" "virtme-ng==$VNG_VERSION" \
    > "$CACHE/pip.log" 2>&1 || { tail -20 "$CACHE/pip.log"; die "pip install failed (log: $CACHE/pip.log)"; }
  echo "$want" > "$VENV/.stamp"
}

# The versioned kernel package that linux-image-amd64 depends on, extracted (not installed).
ensure_kernel() {
  local kpkg
  if [ -s "$CACHE/kernel/version" ]; then
    KVER=$(cat "$CACHE/kernel/version")
  else
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -z "$kpkg" ]; then apt-get update -q >/dev/null
      kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); fi
    [ -n "$kpkg" ] || die "apt-cache cannot resolve linux-image-amd64"
    KVER=${kpkg#linux-image-}
  fi
  KROOT=$CACHE/kernel/root
  VMLINUZ=$KROOT/boot/vmlinuz-$KVER
  if [ ! -e "$VMLINUZ" ] || [ ! -e "$KROOT/lib/modules/$KVER/kernel/drivers/scsi/iscsi_tcp.ko" ]; then
    log "downloading and extracting linux-image-$KVER into $CACHE/kernel"
    rm -rf "$CACHE/kernel"; mkdir -p "$CACHE/kernel"
    (cd "$CACHE/kernel" && apt-get download -q "linux-image-$KVER" >/dev/null 2>&1) || die "apt-get download linux-image-$KVER failed"
    dpkg -x "$CACHE"/kernel/linux-image-"$KVER"_*.deb "$KROOT" || die "dpkg -x failed"
    rm -f "$CACHE"/kernel/*.deb
    echo "$KVER" > "$CACHE/kernel/version"
  fi
}

# KVM only where a probe shows the stock kernel really boots with it (on these
# machines -enable-kvm hangs after the BIOS); the answer is cached per kernel.
pick_accel() {
  local stamp=$CACHE/accel-$KVER
  if [ ! -s "$stamp" ]; then
    echo tcg > "$stamp.new"
    if [ -w /dev/kvm ] && command -v qemu-system-x86_64 >/dev/null; then
      log "probing KVM (25 s at most)"
      timeout 25 qemu-system-x86_64 -enable-kvm -cpu host -m 512 -nographic -no-reboot -kernel "$VMLINUZ" \
        -append 'console=ttyS0 panic=-1' > "$CACHE/kvm-probe.log" 2>&1 </dev/null
      grep -q 'Linux version' "$CACHE/kvm-probe.log" && echo kvm > "$stamp.new"
    fi
    mv "$stamp.new" "$stamp"
  fi
  ACCEL=$(cat "$stamp")
  if [ "$ACCEL" = kvm ]; then VNG_ACCEL=(); else VNG_ACCEL=(--disable-kvm); fi
}

setup_testbed() {
  ensure_root
  mkdir -p "$CACHE" "$RESULTS"
  ensure_apt
  ensure_venv
  export PATH=$VENV/bin:$PATH    # vng calls virtme-run through PATH
}

# The interpreter's standard library and the venv as a read-only ext4 image, attached
# to the guest as a disk (scripts/lib/guest-fastfs mounts it over both): read as
# blocks, not file by file over 9p, an agent start in the guest takes 5.0 s instead
# of 10 (scripts/startup). Built again when the venv or the interpreter changes.
ensure_python_image() {
  local want stage size
  read -r PY_PREFIX PY_LIB < <("$VENV/bin/python" -c \
    'import sys; print(sys.base_prefix, "lib/python%d.%d" % sys.version_info[:2])')
  PY_IMAGE=$CACHE/guest-python.ext4
  want="$(cat "$VENV/.stamp") $PY_PREFIX $(stat -c %Y "$PY_PREFIX/$PY_LIB/os.py")"
  [ -s "$PY_IMAGE" ] && [ "$(cat "$PY_IMAGE.stamp" 2>/dev/null)" = "$want" ] && return 0
  log "building the guest's Python image (standard library and venv) in $PY_IMAGE"
  stage=$CACHE/guest-python.stage
  rm -rf "$stage" "$PY_IMAGE" && mkdir -p "$stage"
  # Hard links where the cache shares a file system with them; copies otherwise.
  cp -al "$PY_PREFIX" "$stage/prefix" 2>/dev/null || cp -a "$PY_PREFIX" "$stage/prefix" || die "copying $PY_PREFIX failed"
  cp -al "$VENV" "$stage/venv" 2>/dev/null || cp -a "$VENV" "$stage/venv" || die "copying $VENV failed"
  # Never imported in the guest: the interpreter's own tests, its site-packages (the
  # venv has its own), IDLE and the static library.
  rm -rf "$stage/prefix/$PY_LIB"/{test,site-packages,idlelib} "$stage/prefix/$PY_LIB"/config-* "$stage"/prefix/lib/libpython*.a
  size=$(( $(du -sm "$stage" | cut -f1) * 5 / 4 + 64 ))
  mkfs.ext4 -q -F -L hostagent-py -d "$stage" "$PY_IMAGE" "${size}M" >/dev/null || die "mkfs.ext4 -d failed"
  rm -rf "$stage"
  echo "$want" > "$PY_IMAGE.stamp"
}

setup_guest() {
  ensure_kernel
  pick_accel
  # The guest cannot write bytecode (the repo is read-only there): compiled here,
  # each Python process in the guest starts in seconds instead of compiling
  # every module from source under emulation.
  "$VENV/bin/python" -m compileall -q "$REPO/hostagent" "$REPO/tests" "$REPO/scripts/lib" >/dev/null \
    || die "python -m compileall failed"
  ensure_python_image
}

# run_in_guest NAME CMD...: boot ONE guest that shares this root file system and
# runs CMD (a path under the repo) with RESULTS writable; returns CMD's status.
run_in_guest() {
  local name=$1; shift
  local rcfile=$RESULTS/$name.rc cmd fast
  rm -f "$rcfile"
  printf -v cmd '%q ' "$@"
  fast="HOSTAGENT_FAST_DIRS='$REPO/hostagent $REPO/tests $REPO/scripts' HOSTAGENT_PY_DIRS='prefix=$PY_PREFIX venv=$VENV'"
  log "booting the guest ($KVER, $ACCEL, $GUEST_CPUS cpus, $GUEST_MEM) for: $*"
  # For scripts/lib/guest-fastfs: the root share again under another tag (mounted
  # cached), and the Python image as a read-only disk with a serial to find it by.
  timeout "$GUEST_TIMEOUT" vng --run "$VMLINUZ" "${VNG_ACCEL[@]}" --cpus "$GUEST_CPUS" --memory "$GUEST_MEM" \
    --rwdir="$RESULTS" \
    --exec "cd $REPO && env PATH=$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin HOSTAGENT_RESULTS=$RESULTS $fast $REPO/scripts/lib/guest-fastfs $cmd; echo \$? > $rcfile" \
    --qemu-opts="-fsdev local,id=hostagentro,path=/,security_model=none,readonly=on,multidevs=remap -device virtio-9p-pci,fsdev=hostagentro,mount_tag=hostagent-ro -drive file=$PY_IMAGE,if=none,id=hostagentpy,format=raw,readonly=on -device virtio-blk-pci,drive=hostagentpy,serial=hostagent-py" \
    </dev/null 2>&1 | tee "$RESULTS/$name-console.log"
  [ -s "$rcfile" ] || { echo "error: the guest ended without a status (see $RESULTS/$name-console.log)" >&2; return 99; }
  return "$(cat "$rcfile")"
}
