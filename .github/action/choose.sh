#!/usr/bin/env bash
# Step "Choose slipway" of action.yml: decides which slipway the action runs
# and writes the step outputs the cache and "Get slipway" steps read:
#   mode         given | download | build
#   dir          where the binary is (download) or the cargo target dir (build)
#   url, asset   the release archive for this runner (download)
#   cache-key, restore-key
# A release is downloaded when one exists for the tag asked for (input
# `version`, else the ref the action was pinned to); otherwise slipway is
# built from the action's own source.
set -euo pipefail

out() { printf '%s=%s\n' "$1" "$2" >> "$GITHUB_OUTPUT"; }

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum | cut -d' ' -f1
  else
    shasum -a 256 | cut -d' ' -f1
  fi
}

if [ -n "${SLIPWAY_BIN:-}" ]; then
  echo "using the slipway binary at $SLIPWAY_BIN"
  out mode given
  exit 0
fi

action_path="${GITHUB_ACTION_PATH%/}"
repo="${ACTION_REPOSITORY:-}"
ref="${ACTION_REF:-}"
# A runner checks a used action out to <work>/_actions/<owner>/<repo>/<ref>.
case "$action_path" in
  */_actions/*/*/*)
    rest="${action_path##*/_actions/}"
    owner="${rest%%/*}"
    rest="${rest#*/}"
    [ -n "$repo" ] || repo="$owner/${rest%%/*}"
    [ -n "$ref" ] || ref="${rest#*/}"
    ;;
esac
version="${VERSION:-}"
[ -n "$version" ] || version="$ref"

# The release archive for this runner, named by Rust target.
os="${RUNNER_OS:-$(uname -s)}"
arch="${RUNNER_ARCH:-$(uname -m)}"
case "$os/$arch" in
  Linux/X64 | Linux/x86_64) target=x86_64-unknown-linux-musl ;;
  Linux/ARM64 | Linux/aarch64) target=aarch64-unknown-linux-musl ;;
  macOS/X64 | Darwin/x86_64) target=x86_64-apple-darwin ;;
  macOS/ARM64 | Darwin/arm64) target=aarch64-apple-darwin ;;
  *) target="" ;;
esac

server="${GITHUB_SERVER_URL:-https://github.com}"
if [ "${BUILD_FROM_SOURCE:-false}" != "true" ] && [ -n "$repo" ] && [ -n "$version" ] && [ -n "$target" ]; then
  asset="slipway-$target.tar.gz"
  url="$server/$repo/releases/download/$version/$asset"
  # The small checksum file says whether this ref has a release at all.
  if curl -fsSL --retry 2 -o /dev/null "$url.sha256"; then
    echo "slipway $version for $os/$arch: $url"
    out mode download
    out url "$url"
    out asset "$asset"
    out dir "${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-/tmp}}/slipway/$version/$target"
    out cache-key "slipway-$version-$target"
    exit 0
  fi
  echo "::notice title=slipway::$repo has no release $version for $os/$arch; building slipway from the action's source"
elif [ -z "$target" ]; then
  echo "::notice title=slipway::no slipway release is built for $os/$arch; building from the action's source"
fi

# A build of the action's source, cached by what goes into it.
key="$( (cat "$action_path/Cargo.lock" "$action_path/Cargo.toml"; find "$action_path/src" -type f | LC_ALL=C sort | xargs cat) | sha256)"
out mode build
out dir "$action_path/target"
out cache-key "slipway-build-$os-$arch-$key"
out restore-key "slipway-build-$os-$arch-"
