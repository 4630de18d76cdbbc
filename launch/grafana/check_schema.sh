#!/usr/bin/env bash
# Type-check a Grafana dashboard JSON (default: launch/grafana/syncrl.json) against Grafana's own
# schema, the Dashboard type of the npm package @grafana/schema: the JSON becomes an object literal
# typed Dashboard, so a wrong type, a missing required field or an unknown property is an error.
# Needs node and npm (installs @grafana/schema and typescript into a temporary folder).
#   bash launch/grafana/check_schema.sh [dashboard.json]
set -euo pipefail
json=$(realpath "${1:-$(dirname "$0")/syncrl.json}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --silent --no-audit --no-fund @grafana/schema@13.2.3 typescript@5 >/dev/null
# The schema's string enums (MappingType) are written as their members, whose values are these strings.
{ echo "import { type Dashboard, MappingType } from '@grafana/schema';"
  echo -n "export const dashboard: Dashboard = "
  sed 's/"type": "value"/"type": MappingType.ValueToText/' "$json"; echo ";"; } > dashboard.ts
npx tsc --noEmit --strict --moduleResolution bundler --module esnext --target es2022 --skipLibCheck dashboard.ts
echo "$json type-checks as a @grafana/schema $(node -p 'require("@grafana/schema/package.json").version') Dashboard"
