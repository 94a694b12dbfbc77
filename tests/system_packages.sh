#!/usr/bin/env bash
# Debian packages the tests need beyond the venv. Run as root, e.g. on CI before the tests:
#   bash tests/system_packages.sh
# Idempotent: packages already installed are skipped; `apt-get update` runs once, and only when something
# is missing. Add a package as one line of PACKAGES, with the tests that need it.
set -euo pipefail

PACKAGES=(
    chromium           # tests/test_report.py: opens results/report.html in headless Chromium
    fonts-dejavu-core  # the same: a font for the plots' text (not pulled in without recommends)
    slurmctld          # tests/test_slurm.py: a single-node SLURM cluster (tests/slurm/cluster.sh): controller,
    slurmd             # the node daemon,
    slurm-client       # sbatch, squeue, scontrol, scancel (the SLURM executor plugin calls them),
    munge              # and the authentication daemon they use
)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: all installed (${PACKAGES[*]})"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "system packages: missing ${missing[*]}; run this script as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "system packages: installed ${missing[*]}"
