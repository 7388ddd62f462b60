# Shared helpers for scripts/*.sh. Source it; do not run it.
# shellcheck shell=bash

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Stage timing for CI logs (docs/benchmarks.md records them): `stage NAME` ends the previous
# stage, printing `STAGE <name>: <seconds> s`, and starts NAME; `stage_end` ends the last one.
_STAGE=""
_STAGE_T0=0
stage_end() {
    if [ -n "$_STAGE" ]; then
        printf 'STAGE %s: %d s\n' "$_STAGE" "$(($(date +%s) - _STAGE_T0))" >&2
        _STAGE=""
    fi
}
stage() {
    stage_end
    _STAGE="$*"
    _STAGE_T0=$(date +%s)
    log "$*"
}

# Run as root, or through sudo when available.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

# apt_install PKG...: installs the Debian packages that are not installed yet (idempotent).
APT_UPDATED=0
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing apt packages: ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Build dependencies of the daemon itself (bundled SQLCipher + vendored OpenSSL need a C
# toolchain, perl and make).
install_build_deps() {
    apt_install build-essential perl make pkg-config ca-certificates python3
    command -v cargo >/dev/null || die "cargo not found: install Rust ${RUST_VERSION:-1.95.0} with rustup"
}

# Services the integration tests start on loopback (never as system services).
install_test_services() {
    # poppler-utils: pdftotext/pdffonts/pdftoppm read the handoff PDF independently.
    # postgresql: the receivers' shared store; tests run initdb/pg_ctl themselves.
    # systemd: systemd-creds seals and opens the provisioned keys (tests/provisioning.rs).
    apt_install mosquitto openssl dbus poppler-utils postgresql systemd
    # Debian starts the packaged broker (:1883) and cluster (:5432); tests start their own
    # instances on free ports.
    for svc in mosquitto postgresql; do
        if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
            as_root systemctl stop "$svc" || true
        fi
    done
}

# Browser tests: Debian's Chromium driven by Playwright (playwright-core from npm, pinned, in
# .tools/node; it never downloads a browser of its own).
PLAYWRIGHT_VERSION=1.65.1
install_browser_tools() {
    apt_install chromium fonts-dejavu-core
    # Node.js from Debian only when the machine has none (a vendor nodejs bundles its own npm).
    command -v npm >/dev/null || apt_install nodejs npm
    local dir; dir="$(repo_root)/.tools/node"
    if [ ! -f "$dir/node_modules/playwright-core/package.json" ] \
        || ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$dir/node_modules/playwright-core/package.json"; then
        log "installing playwright-core@$PLAYWRIGHT_VERSION into .tools/node"
        mkdir -p "$dir"
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund --prefix "$dir" "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
    fi
}

# The Yocto recipe linter, pinned, in .tools/oelint.
install_yocto_lint() {
    local dir; dir="$(repo_root)/.tools/oelint"
    if [ ! -d "$dir/oelint_adv" ]; then
        log "installing oelint-adv==9.11.2 into .tools/oelint"
        python3 -m pip install --quiet --disable-pip-version-check --target "$dir" oelint-adv==9.11.2
    fi
}

# Python packages the tests use as independent references, pinned, in .tools/python.
install_python_tools() {
    local dir; dir="$(repo_root)/.tools/python"
    if [ ! -d "$dir/vitalscore" ]; then
        log "installing vitalscore==0.1.1 (independent NEWS2 scorer) into .tools/python"
        python3 -m pip install --quiet --disable-pip-version-check --target "$dir" vitalscore==0.1.1
    fi
    # Independent FHIR R4 (4.0.1) validator: fhir.resources 6.1.0 is the last R4 release and
    # needs pydantic 1.x.
    local fdir; fdir="$(repo_root)/.tools/fhir"
    if [ ! -d "$fdir/fhir" ]; then
        log "installing fhir.resources==6.1.0 (FHIR R4 validator) into .tools/fhir"
        python3 -m pip install --quiet --disable-pip-version-check --target "$fdir" \
            "fhir.resources==6.1.0" "pydantic==1.10.18"
    fi
}

# Attachment checks by tools nobody on this team wrote: pydicom (DICOM objects made and read
# independently) and Pillow (EXIF/GPS left in a photo), pinned, in .tools/media.
media_tools_dir() { echo "$(repo_root)/.tools/media"; }
install_media_tools() {
    local dir; dir="$(media_tools_dir)"
    if [ ! -f "$dir/.installed-1" ]; then
        log "installing pydicom==3.0.2 and pillow==13.0.0 (attachment checks) into .tools/media"
        rm -rf "$dir"
        python3 -m pip install --quiet --disable-pip-version-check --target "$dir" \
            "pydicom==3.0.2" "pillow==13.0.0"
        touch "$dir/.installed-1"
    fi
}

# NEMSIS v3.5.1 validation, by tools nobody on this team wrote: `xmlschema` (XML Schema 1.1)
# and SaxonC-HE (`saxonche`, XSLT 2 for the national Schematron), pinned, in .tools/nemsis.
install_nemsis_tools() {
    local dir; dir="$(repo_root)/.tools/nemsis"
    if [ ! -f "$dir/.installed-1" ]; then
        log "installing xmlschema==3.4.3 and saxonche==12.5.0 (NEMSIS validators) into .tools/nemsis"
        rm -rf "$dir"
        python3 -m pip install --quiet --disable-pip-version-check --target "$dir" \
            "xmlschema==3.4.3" "saxonche==12.5.0"
        touch "$dir/.installed-1"
    fi
}

# schemathesis (API contract fuzzing, scripts/contract.sh) in .tools/schemathesis. hypothesis
# is pinned with it: newer releases break schemathesis 4.1's strategies.
contract_tools_dir() { echo "$(repo_root)/.tools/schemathesis"; }
install_contract_tools() {
    local dir; dir="$(contract_tools_dir)"
    if [ ! -f "$dir/.installed-4.1.4" ]; then
        log "installing schemathesis==4.1.4 (API contract checks) into .tools/schemathesis"
        rm -rf "$dir"
        python3 -m pip install --quiet --disable-pip-version-check --target "$dir" \
            "schemathesis==4.1.4" "hypothesis==6.136.9"
        touch "$dir/.installed-4.1.4"
    fi
}

# The model pipeline's pinned Python requirements (and the ONNX Runtime library the daemon
# loads at run time) in .tools/model.
install_model_tools() {
    local dir; dir="$(repo_root)/.tools/model"
    local req; req="$(repo_root)/edge-models/hema3n-core/requirements.txt"
    if [ ! -f "$dir/.installed" ] || ! cmp -s "$req" "$dir/.installed"; then
        log "installing model tools (numpy, onnx, onnxruntime) into .tools/model"
        python3 -m pip install --quiet --disable-pip-version-check --target "$dir" -r "$req"
        cp "$req" "$dir/.installed"
    fi
}

# Path of the ONNX Runtime shared library from the pinned wheel.
onnxruntime_lib() {
    ls "$(repo_root)"/.tools/model/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1
}

# Temporary data directory root for scripts; removed on exit by the caller's trap.
repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd; }
