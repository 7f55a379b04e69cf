# Shared by the tools/install_*.sh scripts (sourced, not run): the commands a tool needs, installed from
# Debian/Ubuntu packages with apt-get when they are missing.

# Daemons and mkfs tools live in sbin, which a non-root PATH often lacks.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# missing_commands NAME...: the names that are not on PATH, space-separated (empty when all are there).
missing_commands() {
  local name gone=""
  for name in "$@"; do
    command -v "$name" >/dev/null 2>&1 || gone="$gone$name "
  done
  printf '%s' "$gone"
}

# install_missing SCRIPT PURPOSE "PACKAGE ..." COMMAND...: returns 0 at once when every COMMAND is on PATH.
# As root with apt-get (CI) it installs the packages (the package lists may be missing or stale on a fresh
# machine: updated only when the install needs it) and checks again: 0, or 2 with what is still missing.
# Otherwise it returns 3 and sets MISSING, for the calling script to say what that means for it.
install_missing() {
  local script="$1" purpose="$2" packages="$3"
  shift 3
  MISSING="$(missing_commands "$@")"
  [ -z "$MISSING" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    return 3
  fi
  echo "$script: installing $packages with apt-get (for $purpose)" >&2
  # shellcheck disable=SC2086  # the package names are words
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
  fi
  MISSING="$(missing_commands "$@")"
  if [ -n "$MISSING" ]; then
    echo "$script: still not found after installing $packages: $MISSING" >&2
    return 2
  fi
}
