#!/usr/bin/env bash
# Step "Get slipway" of action.yml: downloads and checks the release archive
# chosen by choose.sh (unless the cache restored it), or builds slipway, and
# exports SLIPWAY_BIN for the deploy step. A checksum that does not match
# fails the step: that archive is never run, and never replaced by a build.
set -euo pipefail

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

case "$MODE" in
  given)
    exit 0
    ;;
  download)
    if [ -x "$DIR/slipway" ]; then
      echo "slipway from the cache: $DIR/slipway"
    else
      tmp="$(mktemp -d)"
      curl -fsSL --retry 3 -o "$tmp/$ASSET" "$URL"
      curl -fsSL --retry 3 -o "$tmp/$ASSET.sha256" "$URL.sha256"
      want="$(cut -d' ' -f1 < "$tmp/$ASSET.sha256" | tr -d '\r\n')"
      got="$(sha256 "$tmp/$ASSET")"
      if [ "$want" != "$got" ]; then
        echo "::error title=slipway::$ASSET does not match its checksum (the release says $want, the download is $got); refusing to run it"
        exit 1
      fi
      mkdir -p "$DIR"
      tar -xzf "$tmp/$ASSET" -C "$DIR" slipway
      rm -rf "$tmp"
      echo "slipway downloaded and checked: $URL (sha256 $got)"
    fi
    echo "SLIPWAY_BIN=$DIR/slipway" >> "$GITHUB_ENV"
    ;;
  build)
    # OpenSSL compiled in: a bare self-hosted runner has no libssl-dev.
    cargo build --release --locked --quiet --features vendored-openssl \
      --manifest-path "$GITHUB_ACTION_PATH/Cargo.toml" --target-dir "$DIR"
    echo "SLIPWAY_BIN=$DIR/release/slipway" >> "$GITHUB_ENV"
    ;;
  *)
    echo "::error title=slipway::unknown mode '$MODE' from the choose step"
    exit 1
    ;;
esac
