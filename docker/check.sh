#!/usr/bin/env bash
# Checks the container files without a Docker engine (none is needed, none is used).
#   bash docker/check.sh        (from anywhere; needs node and the repo's node_modules: npm ci)
# One line per check: PASS, FAIL or SKIP with what was checked; then "N passed, N failed, N skipped".
# Exit status 1 when any check failed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
dockerfile="$here/Dockerfile"
ignorefile="$here/Dockerfile.dockerignore"
compose="$here/compose.yaml"
passed=0 failed=0 skipped=0

pass() { echo "PASS  $1: $2"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1: $2"; failed=$((failed + 1)); }
skip() { echo "SKIP  $1: $2"; skipped=$((skipped + 1)); }

# 1. hadolint, when installed (Debian has no package; no npm package ships the binary).
if command -v hadolint >/dev/null 2>&1; then
  if out="$(hadolint "$dockerfile" 2>&1)"; then
    pass "hadolint" "docker/Dockerfile has no findings ($(hadolint --version 2>/dev/null | head -n1))"
  else
    fail "hadolint" "$(printf '%s' "$out" | tr '\n' ';')"
  fi
else
  skip "hadolint" "hadolint not installed, skipped (lint docker/Dockerfile with it where it is available)"
fi

# 2. What the Dockerfile must say (a static read; the image itself cannot be built here).
# Continuation lines are joined so multi-line instructions read as one.
df="$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" | grep -v '^[[:space:]]*#')"
problems=()
has() { grep -Eq "$1" <<<"$df" || problems+=("$2"); }
while read -r from; do
  [[ "$from" =~ ^FROM[[:space:]]+node:20\.[0-9]+(\.[0-9]+)?-bookworm-slim([[:space:]]+AS[[:space:]]+[a-z]+)?$ ]] \
    || problems+=("base image not pinned to node:20.x-bookworm-slim: '$from'")
done < <(grep -E '^FROM[[:space:]]' <<<"$df")
[[ "$(grep -c '^FROM[[:space:]]' <<<"$df")" -ge 2 ]] || problems+=("not a multi-stage build")
has '^RUN npm ci( |$)' "build stage does not run npm ci"
has '^RUN npm run build' "build stage does not run npm run build"
has '^RUN npm ci .*--omit=dev' "runtime stage does not run npm ci --omit=dev"
has '^COPY --from=build .*dist' "runtime stage does not copy dist/ from the build stage"
has '^ENV .*HOST=0\.0\.0\.0' "ENV HOST=0.0.0.0 missing"
has '^ENV .*PORT=8080' "ENV PORT=8080 missing"
has '^ENV .*DATA_DIR=/data' "ENV DATA_DIR=/data missing"
has '^ENV .*NODE_ENV=production' "ENV NODE_ENV=production missing"
has 'chown node:node /data' "/data is not owned by node"
has '^VOLUME /data$' "VOLUME /data missing"
has '^EXPOSE 8080 2575$' "EXPOSE 8080 2575 missing"
has '^HEALTHCHECK .*CMD \["node".*127\.0\.0\.1.*/healthz' "HEALTHCHECK with node against 127.0.0.1 /healthz missing"
# The container runs the server with the same node flags as `npm start` (e.g. the heap limit).
start_flags=$(node -e 'const s = require("./package.json").scripts.start; const m = / node((?: --\S+)*) dist\/main\.js/.exec(s); if (!m) process.exit(1); const f = m[1].trim().split(/\s+/).filter(Boolean); console.log(JSON.stringify(["node", ...f, "dist/main.js"]).replace(/,/g, ", "))')
has "^CMD $(printf '%s' "$start_flags" | sed 's/[][\.*^$/]/\\&/g')\$" "CMD $start_flags (the start script's node flags) missing"
[[ "$(grep -E '^USER ' <<<"$df" | tail -n1)" == "USER node" ]] || problems+=("the last USER is not node")
# Every COPY from the build context must exist in the repository and not be ignored.
while read -r -a args; do
  [[ "${args[1]}" == --from=* ]] && continue
  for src in "${args[@]:1:${#args[@]}-2}"; do
    [[ "$src" == --* ]] && continue
    [[ -e "$root/$src" ]] || problems+=("COPY source '$src' does not exist in the repository")
    grep -qxF -- "${src%/}" "$ignorefile" && problems+=("COPY source '$src' is excluded by Dockerfile.dockerignore")
  done
done < <(grep -E '^COPY[[:space:]]' <<<"$df")
if [[ ${#problems[@]} -eq 0 ]]; then
  pass "Dockerfile content" "multi-stage on a pinned node:20 bookworm-slim, npm ci + build, runtime npm ci --omit=dev, non-root node user, ENV, /data volume, EXPOSE 8080 2575, node HEALTHCHECK, CMD; COPY sources exist"
else
  fail "Dockerfile content" "$(IFS=';'; echo "${problems[*]}")"
fi

# 3. The build-context ignore file next to the Dockerfile.
missing=()
for entry in node_modules dist data .git bench/results; do
  grep -qxF "$entry" "$ignorefile" 2>/dev/null || missing+=("$entry")
done
if [[ ! -f "$ignorefile" ]]; then
  fail "Dockerfile.dockerignore" "docker/Dockerfile.dockerignore is missing"
elif [[ ${#missing[@]} -eq 0 ]]; then
  pass "Dockerfile.dockerignore" "excludes node_modules, dist, data, .git, bench/results"
else
  fail "Dockerfile.dockerignore" "does not exclude: ${missing[*]}"
fi

# 4 and 5. compose.yaml: Compose Specification schema, then content the schema cannot see.
if ! command -v node >/dev/null 2>&1; then
  skip "compose schema" "node not installed, skipped"
  skip "compose content" "node not installed, skipped"
else
  out="$(cd "$root" && node "$here/check-compose.mjs" "$compose" 2>&1)"
  printf '%s\n' "$out"
  passed=$((passed + $(grep -c '^PASS ' <<<"$out")))
  failed=$((failed + $(grep -c '^FAIL ' <<<"$out")))
  # A crash that printed no verdict still counts as a failure.
  grep -Eq '^(PASS|FAIL) ' <<<"$out" || fail "compose checks" "check-compose.mjs printed no result"
fi

echo "$passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
