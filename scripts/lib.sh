# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run).

# The local cluster lives in a private network namespace: it needs ip (iproute2), unshare and
# setpriv (util-linux). Installs the missing ones with apt-get (as root, or with sudo -n).
ensure_netns_tools() {
  local missing=() sudo=()
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  { command -v unshare >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1; } || missing+=(util-linux)
  ((${#missing[@]})) || return 0
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]} and not root: install them (apt-get install ${missing[*]})"
    sudo=(sudo -n)
  fi
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q </dev/null
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}
