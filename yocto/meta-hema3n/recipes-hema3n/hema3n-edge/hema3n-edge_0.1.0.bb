SUMMARY = "HEMA3N Edge appliance daemon"
DESCRIPTION = "In-ambulance vitals ingest over MQTT, ONNX Runtime triage behind a rules floor, \
               encrypted SQLCipher PHI store, crew tablet HTTPS API and sealed FHIR sync to the cloud."
HOMEPAGE = "https://github.com/hema3n/hema3n-edge"
BUGTRACKER = "https://github.com/hema3n/hema3n-edge/issues"
SECTION = "console/network"
LICENSE = "CLOSED"
CVE_PRODUCT = "hema3n-edge"

# SQLCipher and OpenSSL are vendored and built from source by their build scripts.
DEPENDS += "perl-native"

SRC_URI = "git://github.com/hema3n/hema3n-edge.git;protocol=https;branch=main \
           file://edge.toml \
"
# Pinned for reproducible builds. `scripts/yocto-crates.sh --srcrev REV` moves the pin and
# regenerates the crate list from REV's Cargo.lock; scripts/test.sh checks that they match.
SRCREV = "2c5cccdfd4442f29032ad3e729bc8d04a4ea4d40"

S = "${UNPACKDIR}/git"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates systemd

# The Orin's execution providers; ONNX Runtime itself is loaded at run time (ort load-dynamic).
CARGO_BUILD_FLAGS += "--features cuda,tensorrt --bin hema3n-edge"

# The model-signing public key the appliance pins (triage.model_signing_keys). A release build
# signs edge-models/hema3n-core with the release key (`hema3n-edge model sign DIR --key K`) and
# points this at the release public key; the default is the development key the committed model
# is signed with, and the build warns about it.
HEMA3N_MODEL_SIGNING_PUB ?= "${S}/edge-models/model-signing-dev.pub"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/hema3n-edge.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/hema3n-backup.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/hema3n-backup.timer ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/hema3n-seal-keys.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/hema3n-rotate-keys.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/hema3n-rotate-keys.timer ${D}${systemd_system_unitdir}/
    install -d ${D}${nonarch_libdir}/sysusers.d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/hema3n-edge.sysusers.conf ${D}${nonarch_libdir}/sysusers.d/hema3n-edge.conf
    install -m 0644 ${S}/systemd/hema3n-edge.tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/hema3n-edge.conf
    install -d ${D}${datadir}/dbus-1/system.d
    install -m 0644 ${S}/systemd/org.hema3n.Edge1.conf ${D}${datadir}/dbus-1/system.d/
    install -d ${D}${sysconfdir}/hema3n/edge.d
    install -m 0644 ${UNPACKDIR}/edge.toml ${D}${sysconfdir}/hema3n/edge.toml
    if [ "${HEMA3N_MODEL_SIGNING_PUB}" = "${S}/edge-models/model-signing-dev.pub" ]; then
        bbwarn "hema3n-edge: the image trusts the DEVELOPMENT model-signing key; set HEMA3N_MODEL_SIGNING_PUB for a release"
    fi
    key=$(grep -v -- '-----' "${HEMA3N_MODEL_SIGNING_PUB}" | tr -d '\n')
    printf '# Written by the hema3n-edge recipe from %s\n[triage]\nmodel_signing_keys = ["%s"]\n' \
        "$(basename ${HEMA3N_MODEL_SIGNING_PUB})" "$key" > ${D}${sysconfdir}/hema3n/edge.d/10-model-signing.toml
    chmod 0644 ${D}${sysconfdir}/hema3n/edge.d/10-model-signing.toml
    install -d ${D}${datadir}/hema3n/models/hema3n-core
    install -m 0644 ${S}/edge-models/hema3n-core/manifest.toml ${D}${datadir}/hema3n/models/hema3n-core/
    install -m 0644 ${S}/edge-models/hema3n-core/manifest.sig ${D}${datadir}/hema3n/models/hema3n-core/
    install -m 0644 ${S}/edge-models/hema3n-core/*.onnx ${D}${datadir}/hema3n/models/hema3n-core/
    install -m 0644 ${S}/edge-models/hema3n-core/MODEL_CARD.md ${D}${datadir}/hema3n/models/hema3n-core/
    install -d ${D}${sysconfdir}/mosquitto/conf.d ${D}${sysconfdir}/mosquitto/hema3n
    install -m 0644 ${S}/systemd/mosquitto/hema3n.conf ${D}${sysconfdir}/mosquitto/conf.d/hema3n.conf
    install -m 0644 ${S}/systemd/mosquitto/hema3n.acl ${D}${sysconfdir}/mosquitto/hema3n/acl
}

PACKAGES =+ "${PN}-mosquitto ${PN}-model"

SYSTEMD_SERVICE:${PN} = "hema3n-edge.service hema3n-backup.timer hema3n-seal-keys.service hema3n-rotate-keys.timer"

CONFFILES:${PN} = "${sysconfdir}/hema3n/edge.toml ${sysconfdir}/hema3n/edge.d/10-model-signing.toml"
FILES:${PN} += "${systemd_system_unitdir}/hema3n-edge.service \
                ${systemd_system_unitdir}/hema3n-backup.service \
                ${systemd_system_unitdir}/hema3n-backup.timer \
                ${systemd_system_unitdir}/hema3n-seal-keys.service \
                ${systemd_system_unitdir}/hema3n-rotate-keys.service \
                ${systemd_system_unitdir}/hema3n-rotate-keys.timer \
                ${nonarch_libdir}/sysusers.d/hema3n-edge.conf \
                ${nonarch_libdir}/tmpfiles.d/hema3n-edge.conf \
                ${datadir}/dbus-1/system.d/org.hema3n.Edge1.conf \
                ${sysconfdir}/hema3n \
"
FILES:${PN}-model += "${datadir}/hema3n/models"
FILES:${PN}-mosquitto += "${sysconfdir}/mosquitto/conf.d/hema3n.conf ${sysconfdir}/mosquitto/hema3n"

# ONNX Runtime with the TensorRT execution provider and TensorRT come from meta-tegra
# (meta-tegra-community for onnxruntime); the daemon falls back to CPU with a logged reason.
RDEPENDS:${PN} = "${PN}-model ${PN}-mosquitto dbus onnxruntime tensorrt-core"
RDEPENDS:${PN}-mosquitto = "mosquitto"

COMPATIBLE_MACHINE = "(tegra)"
