# Shared by the scripts (sourced, not run): the test and demo commands and the build scripts.

# The local cluster lives in a private network namespace: it needs ip (iproute2), unshare and
# setpriv (util-linux). Installs the missing ones with apt-get (as root, or with sudo -n).
ensure_netns_tools() {
  apt_ensure ip iproute2 unshare util-linux setpriv util-linux
}

# Installs Debian packages that are missing (as root, or with sudo -n). Arguments: pairs of
# "command package", e.g. `apt_ensure runc runc iptables iptables`.
apt_ensure() {
  local missing=() sudo=()
  while (($#)); do
    if ! command -v "$1" >/dev/null 2>&1 && [[ ! -e "$1" ]] && [[ " ${missing[*]} " != *" $2 "* ]]; then
      missing+=("$2")
    fi
    shift 2
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]} and not root: install them (apt-get install ${missing[*]})"
    sudo=(sudo -n)
  fi
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q </dev/null >&2
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >&2
}

# What a real node needs from Debian: runc (the OCI runtime containerd drives), the CNI plugins
# (bridge, host-local, loopback, portmap), iptables for kube-proxy and the bridge plugin, and
# conntrack (kube-proxy flushes stale UDP entries with it).
ensure_node_packages() {
  apt_ensure runc runc /usr/lib/cni/bridge containernetworking-plugins \
    iptables iptables conntrack conntrack
}

# Go >= 1.25 with a module proxy (Kubernetes 1.36, containerd 2.x and CoreDNS need it).
ensure_go() {
  command -v go >/dev/null 2>&1 || die "Go is not installed or not on PATH. Install Go >= 1.25 (https://go.dev/doc/install, or Debian's golang-go) and re-run."
  local v proxy
  v=$(go env GOVERSION)
  case "$v" in
    go1.2[5-9]*|go1.[3-9][0-9]*) ;;
    *) die "Go $v is too old: Kubernetes 1.36, containerd 2.x and CoreDNS need Go >= 1.25. Install a newer Go and re-run." ;;
  esac
  proxy=$(go env GOPROXY)
  [[ "$proxy" == "off" || -z "$proxy" ]] && die "GOPROXY is '$proxy': the build fetches modules from a Go module proxy. Set GOPROXY=https://proxy.golang.org,direct (or your mirror)."
  return 0
}
