#!/usr/bin/env bash
# Build the native observability binaries used by the tests and `make` targets
# (no Docker needed):
#   * the OpenTelemetry Collector Builder (ocb), installed with `go install`;
#   * otelcol-wabot, a collector built by ocb from otel-collector/manifest.yaml;
#   * Jaeger v2 (all-in-one `jaeger` binary);
#   * VictoriaLogs (`victoria-logs`, the log store), installed with `go install`.
# Binaries are cached outside the repository, keyed by version (and, for the
# collector, by a short hash of the manifest), so re-running is cheap and
# idempotent: existing binaries are reused. Nothing is written into the repo.
#
# Usage: scripts/build-otel-tools.sh
# Env overrides:
#   WABOT_CACHE_DIR   cache root (default ~/.cache/wabot); binaries go to $WABOT_CACHE_DIR/bin
#   WABOT_BUILD_JOBS  `go build -p` parallelism (default 2)
#   JAEGER_VERSION    Go module version of github.com/jaegertracing/jaeger (with
#   JAEGER_RELEASE    the matching Jaeger v2 release name, for `jaeger version`);
#                     both default to versions.env, where every version is pinned
# Stable names ~/.cache/wabot/bin/otelcol-wabot, .../jaeger and .../victoria-logs
# are symlinks to the latest builds. The last lines printed are BUILDER_BIN=...,
# OTELCOL_BIN=..., JAEGER_BIN=... and VICTORIALOGS_BIN=... (eval-able). Needs
# Go >= 1.26.5 (the collector modules declare go 1.26, VictoriaLogs 1.26.5),
# flock, sha256sum and network access to the Go module proxy.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The pinned versions: OTELCOL_VERSION (builder / core / contrib release; it
# must be the version in otel-collector/manifest.yaml, checked below),
# JAEGER_VERSION and JAEGER_RELEASE. Jaeger v2 is published from
# github.com/jaegertracing/jaeger, whose Go module tags are the v1.x line
# (v1.76.0 is the same commit as Jaeger v2.13.0, the newest version the Go
# module proxy serves). Its go.mod carries a replace directive, which `go
# install pkg@version` refuses, so in that case the binary is built from a
# throw-away wrapper module in the cache that reproduces the upstream replace
# directives (identical build list). A version whose go.mod has no replace
# directive is installed with plain `go install`.
jaeger_version_override="${JAEGER_VERSION:-}"
jaeger_release_override="${JAEGER_RELEASE:-}"
# shellcheck source=../versions.env
. "$REPO_ROOT/versions.env"
JAEGER_VERSION="${jaeger_version_override:-$JAEGER_VERSION}"
JAEGER_RELEASE="${jaeger_release_override:-$JAEGER_RELEASE}"
JAEGER_MODULE="github.com/jaegertracing/jaeger"

MANIFEST="$REPO_ROOT/otel-collector/manifest.yaml"
CACHE_DIR="${WABOT_CACHE_DIR:-$HOME/.cache/wabot}"
BIN_DIR="$CACHE_DIR/bin"
JOBS="${WABOT_BUILD_JOBS:-2}"

export CGO_ENABLED=0
export GOFLAGS="-trimpath -buildvcs=false -p=$JOBS"

log() { printf '[build-otel-tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null || die "go is not installed (need Go >= 1.26)"
[[ -f "$MANIFEST" ]] || die "missing $MANIFEST"
grep -q "^  version: ${OTELCOL_VERSION}\$" "$MANIFEST" \
    || die "dist.version in $MANIFEST does not match OTELCOL_VERSION=$OTELCOL_VERSION (versions.env)"

mkdir -p "$BIN_DIR"
# One build at a time (tests and make targets may call this concurrently).
exec 9>"$CACHE_DIR/.build.lock"
flock 9

SCRATCH="$(mktemp -d "$CACHE_DIR/.build.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

# ---------------------------------------------------------------- builder ---
BUILDER_GOBIN="$CACHE_DIR/tools/builder-v$OTELCOL_VERSION"
BUILDER="$BUILDER_GOBIN/builder"
if [[ -x "$BUILDER" ]]; then
    log "builder v$OTELCOL_VERSION: cached ($BUILDER)"
else
    log "builder v$OTELCOL_VERSION: installing"
    start=$SECONDS
    GOBIN="$BUILDER_GOBIN" go install "go.opentelemetry.io/collector/cmd/builder@v$OTELCOL_VERSION"
    log "builder v$OTELCOL_VERSION: installed in $((SECONDS - start))s"
fi

# -------------------------------------------------------------- collector ---
MANIFEST_HASH="$(sha256sum "$MANIFEST" | cut -c1-10)"
OTELCOL_BIN="$BIN_DIR/otelcol-wabot-$OTELCOL_VERSION-$MANIFEST_HASH"
if [[ -x "$OTELCOL_BIN" ]]; then
    log "otelcol-wabot: cached ($OTELCOL_BIN)"
else
    log "otelcol-wabot $OTELCOL_VERSION (manifest $MANIFEST_HASH): building, this takes several minutes"
    start=$SECONDS
    src="$SCRATCH/otelcol"
    # ocb generates the sources and go.mod, then runs `go mod tidy`, which also
    # resolves the *test* imports of every component. Some of those test-only
    # modules are not served by the module proxy available here, so when that
    # step fails we finish it with `go mod tidy -e` (tolerates missing
    # test-only packages) and compile ourselves; missing *build* dependencies
    # still make `go build` fail loudly.
    if ! "$BUILDER" --config "$MANIFEST" --output-path "$src" --skip-compilation \
            >"$SCRATCH/ocb.log" 2>&1; then
        if [[ -f "$src/go.mod" ]] && grep -q 'failed to update go.mod' "$SCRATCH/ocb.log"; then
            log "ocb's 'go mod tidy' failed (unavailable test-only module); retrying with 'go mod tidy -e'"
            grep -m3 'Forbidden\|not available\|tested by' "$SCRATCH/ocb.log" >&2 || true
            (cd "$src" && go mod tidy -e -compat=1.25)
        else
            cat "$SCRATCH/ocb.log" >&2
            die "ocb failed"
        fi
    fi
    (cd "$src" && go build -ldflags "-s -w" -o "$src/otelcol-wabot" .)
    install -m 0755 "$src/otelcol-wabot" "$OTELCOL_BIN.tmp"
    mv -f "$OTELCOL_BIN.tmp" "$OTELCOL_BIN"
    log "otelcol-wabot: built in $((SECONDS - start))s"
fi
ln -sfn "$(basename "$OTELCOL_BIN")" "$BIN_DIR/otelcol-wabot"

# ----------------------------------------------------------------- jaeger ---
JAEGER_BIN="$BIN_DIR/jaeger-$JAEGER_VERSION"
if [[ -x "$JAEGER_BIN" ]]; then
    log "jaeger $JAEGER_VERSION: cached ($JAEGER_BIN)"
else
    log "jaeger $JAEGER_VERSION: building, this takes several minutes"
    start=$SECONDS
    jaeger_ldflags="-s -w -X $JAEGER_MODULE/internal/version.latestVersion=$JAEGER_RELEASE"
    # Locate the module's go.mod through the module cache (no repo clone).
    upstream_gomod="$(cd "$SCRATCH" && go mod download -json "$JAEGER_MODULE@$JAEGER_VERSION" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
    [[ -f "$upstream_gomod" ]] || die "could not download $JAEGER_MODULE@$JAEGER_VERSION"
    if ! grep -Eq '^[[:space:]]*replace([[:space:]]|\()' "$upstream_gomod"; then
        GOBIN="$SCRATCH/gobin" go install -ldflags "$jaeger_ldflags" "$JAEGER_MODULE/cmd/jaeger@$JAEGER_VERSION"
        built="$SCRATCH/gobin/jaeger"
    else
        log "jaeger $JAEGER_VERSION: go.mod has replace directives; using a wrapper module"
        wrapper="$SCRATCH/jaeger-wrapper"
        mkdir -p "$wrapper"
        go_line="$(grep -m1 -E '^go [0-9.]+$' "$upstream_gomod")"
        {
            echo "module wabot.local/jaeger-build"
            echo
            echo "$go_line"
            echo
            # Copy every replace directive (single-line and block form).
            awk '/^replace[[:space:]]*\($/ {blk=1} blk {print} blk && /^\)$/ {blk=0; next}
                 /^replace[[:space:]]+[^(]/ {print}' "$upstream_gomod"
        } >"$wrapper/go.mod"
        (cd "$wrapper" && go get "$JAEGER_MODULE/cmd/jaeger@$JAEGER_VERSION" \
            && go build -ldflags "$jaeger_ldflags" -o "$SCRATCH/jaeger" "$JAEGER_MODULE/cmd/jaeger")
        built="$SCRATCH/jaeger"
    fi
    install -m 0755 "$built" "$JAEGER_BIN.tmp"
    mv -f "$JAEGER_BIN.tmp" "$JAEGER_BIN"
    log "jaeger $JAEGER_VERSION: built in $((SECONDS - start))s"
fi
ln -sfn "$(basename "$JAEGER_BIN")" "$BIN_DIR/jaeger"

# ----------------------------------------------------------- victorialogs ---
# A plain `go install` (its go.mod has no replace directive). The version is
# stamped the way upstream's release builds do, so `victoria-logs -version`
# and its /metrics name it.
VICTORIALOGS_MODULE="github.com/VictoriaMetrics/VictoriaLogs"
VICTORIALOGS_BIN="$BIN_DIR/victoria-logs-$VICTORIALOGS_VERSION"
if [[ -x "$VICTORIALOGS_BIN" ]]; then
    log "victoria-logs $VICTORIALOGS_VERSION: cached ($VICTORIALOGS_BIN)"
else
    log "victoria-logs $VICTORIALOGS_VERSION: building, this takes about a minute"
    start=$SECONDS
    GOBIN="$SCRATCH/gobin" go install \
        -ldflags "-s -w -X github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo.Version=victoria-logs-$VICTORIALOGS_VERSION" \
        "$VICTORIALOGS_MODULE/app/victoria-logs@$VICTORIALOGS_VERSION"
    install -m 0755 "$SCRATCH/gobin/victoria-logs" "$VICTORIALOGS_BIN.tmp"
    mv -f "$VICTORIALOGS_BIN.tmp" "$VICTORIALOGS_BIN"
    log "victoria-logs $VICTORIALOGS_VERSION: built in $((SECONDS - start))s"
fi
ln -sfn "$(basename "$VICTORIALOGS_BIN")" "$BIN_DIR/victoria-logs"

# promtool / amtool (config checks and rule unit tests) come from Debian packages.
for tool in promtool amtool; do
    command -v "$tool" >/dev/null \
        || log "NOTE: $tool not found; install it with: apt-get install -y prometheus prometheus-alertmanager"
done

echo "BUILDER_BIN=$BUILDER"
echo "OTELCOL_BIN=$OTELCOL_BIN"
echo "JAEGER_BIN=$JAEGER_BIN"
echo "VICTORIALOGS_BIN=$VICTORIALOGS_BIN"
