#!/usr/bin/env bash
# Renders config/install/drover.yaml from charts/drover, the one source of the
# plain manifests; e2e/tests/install.rs fails while the file is stale.
#   HELM=/path/to/helm config/install/generate.sh [OUTPUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
helm="${HELM:-helm}"
out="${1:-config/install/drover.yaml}"
{
    echo "# Generated from charts/drover by config/install/generate.sh; do not edit."
    echo "# helm template drover charts/drover --namespace drover-system"
    echo "# The CRDs are not included: apply crds/ first (README, \"Install\")."
    "$helm" template drover charts/drover --namespace drover-system
} >"$out.tmp"
mv "$out.tmp" "$out"
