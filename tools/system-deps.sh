#!/usr/bin/env bash
# The system packages `make test` and `make demo` need beyond Python: Java 17 (TorchServe's
# frontend), nginx (the serving pod's front, run locally by the demo and by the tests) and
# tini (the images' PID 1, under which the test cluster runs containers).
# Installs what is missing when this user may (root, or sudo without a password, through
# apt-get); otherwise stops at once and prints the exact command to run.
#
#   tools/system-deps.sh [WHAT]     WHAT names the caller in the messages ("make test")
#
# VISIONLINE_SBIN: where a package manager puts daemons that a user's PATH often lacks
# (Debian's nginx is /usr/sbin/nginx); visionline.serving.nginx looks in the same places.
set -euo pipefail

what="${1:-make}"
sbin="${VISIONLINE_SBIN-/usr/local/sbin:/usr/sbin:/sbin}"

have_java17() {
  command -v java >/dev/null 2>&1 || return 1
  # `java -version` writes to stderr: openjdk version "17.0.15" ... (or "1.8.0_..." for 8)
  local banner
  banner="$(java -version 2>&1)" || return 1
  [[ "$banner" =~ version\ \"(1[7-9]|[2-9][0-9])[.\"-] ]]
}

have_nginx() {
  PATH="$PATH${sbin:+:$sbin}" command -v nginx >/dev/null 2>&1
}

missing=()   # what a user reads
packages=()  # what apt-get installs: the packages the serving image installs (Dockerfile)
if ! have_java17; then
  missing+=("Java 17 (TorchServe)")
  packages+=(openjdk-17-jre-headless)
fi
if ! have_nginx; then
  missing+=("nginx (the serving front)")
  packages+=(nginx)
fi
if ! command -v tini >/dev/null 2>&1; then
  # the images' PID 1 (their ENTRYPOINT), which the test cluster's containers run under
  missing+=("tini (the images' PID 1)")
  packages+=(tini)
fi
[ ${#packages[@]} -eq 0 ] && exit 0

install="apt-get update -qq && apt-get install -y -qq --no-install-recommends ${packages[*]}"
# what a user runs by hand: as root, or through sudo
manual() { echo "$1apt-get update && $1apt-get install -y --no-install-recommends ${packages[*]}"; }
missing_list="${missing[0]}"
for m in "${missing[@]:1}"; do missing_list+=" and $m"; done

if ! command -v apt-get >/dev/null 2>&1; then
  echo "$what needs ${missing_list}, and this machine has no apt-get:" >&2
  echo "install them with its package manager (packages: ${packages[*]} on Debian), then run $what again" >&2
  exit 1
fi

as=""
if [ "$(id -u)" = 0 ]; then
  run=(env DEBIAN_FRONTEND=noninteractive bash -c "$install")
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  run=(sudo -n env DEBIAN_FRONTEND=noninteractive bash -c "$install")
  as="sudo "
else
  echo "$what needs ${missing_list}, and only root can install them. Run:" >&2
  echo "  $(manual "sudo ")" >&2
  echo "then run $what again." >&2
  exit 1
fi

echo "installing ${missing_list} for $what: apt-get install ${packages[*]}"
if ! "${run[@]}" >/dev/null; then
  echo "installing ${packages[*]} failed; run it yourself to see why:" >&2
  echo "  $(manual "$as")" >&2
  exit 1
fi
# What was installed must now be found the way the tests and the demo look for it.
if ! have_java17 || ! have_nginx; then
  echo "apt-get installed ${packages[*]}, yet Java 17 or nginx is still not found on PATH" >&2
  echo "(java -version must say 17 or later; nginx in PATH or ${sbin})" >&2
  exit 1
fi
