# Adds the HEMA3N appliance to the image; provisioning (keys, credentials) happens per vehicle
# with scripts/provision.sh, never at build time.
IMAGE_INSTALL:append:tegra = " hema3n-edge"
