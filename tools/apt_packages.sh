# Shared by the tools/install_*.sh scripts (sourced, not run): finding missing commands and installing
# Debian/Ubuntu packages with apt-get.

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

# can_apt_install: root with apt-get, as in CI.
can_apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
}

# apt_install PACKAGE...: install quietly; the package lists may be missing or stale on a fresh machine,
# so they are updated only when the install needs it.
apt_install() {
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}
