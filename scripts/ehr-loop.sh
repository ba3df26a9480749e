#!/usr/bin/env bash
# The loop of README's "The loop, step by step", run end to end on this machine, as its steps say:
# a physician's EHR (a second instance of this server, token auth on) holds a patient with her
# diagnoses; an HL7 v2 receiver stands for a second physician system; the MET's documentation of a
# first month arrives; the diagnoses are pulled from the EHR; a progress report goes to the EHR as a
# DocumentReference (and a Communication) and to the HL7 peer as MDM^T02. Each PDF is saved.
#
#   bash scripts/ehr-loop.sh            # after npm ci; leaves everything in a new temp directory
#
# Ports: MET_PORT (8080), MET_HL7_PORT (2575), EHR_PORT (8090), PEER_PORT (2576). LOOP_DIR: where
# the databases, logs and PDFs go (a new temporary directory by default). Exits non-zero, with the
# servers' logs named, if any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

MET_PORT=${MET_PORT:-8080}
MET_HL7_PORT=${MET_HL7_PORT:-2575}
EHR_PORT=${EHR_PORT:-8090}
PEER_PORT=${PEER_PORT:-2576}
WORK=${LOOP_DIR:-$(mktemp -d -t ehr-loop.XXXXXX)}
mkdir -p "$WORK"
MET=http://localhost:$MET_PORT
EHR=http://localhost:$EHR_PORT
MRN_SYSTEM=https://ehr.northlake-health.example/sid/mrn
MRN=00482913
FHIR_JSON=application/fhir+json

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
fail() {
  echo "ehr-loop: $*" >&2
  echo "ehr-loop: logs in $WORK (met.log, ehr.log, peer.log)" >&2
  exit 1
}
step() { printf '\n== %s\n' "$*"; }
# json EXPR: evaluates EXPR on the JSON read from stdin (as `v`) and prints the result.
json() { node -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>{const v=JSON.parse(s);const r=new Function("v","return ("+process.argv[1]+")")(v);process.stdout.write(typeof r==="string"?r:JSON.stringify(r));})' "$1"; }
# call CURL-ARGS...: curl that prints the body, and fails the loop with the body on an HTTP error.
call() {
  local out code
  out=$(mktemp)
  code=$(curl -s -o "$out" -w '%{http_code}' "$@") || fail "curl $* failed (is the server up?)"
  if [ "$code" -ge 400 ]; then
    # The URL only: the arguments hold the access token.
    fail "HTTP $code from $(printf '%s\n' "$@" | grep -m1 '^http'): $(cat "$out")"
  fi
  cat "$out"
  rm -f "$out"
}
ready() {
  for _ in $(seq 1 150); do curl -sf "$1/readyz" >/dev/null && return 0; sleep 0.2; done
  fail "$1 did not become ready"
}
token() { # token BASE CLIENT_ID SECRET SCOPE
  curl -sf -X POST "$1/auth/token" --data-urlencode grant_type=client_credentials --data-urlencode "client_id=$2" \
    --data-urlencode "client_secret=$3" --data-urlencode "scope=$4" | json v.access_token
}

npm run build --silent

step "1. This server's practice (tenant default, the development client's) and the JWKS URL of its key for EHRs"
met_admin() { PORT=$MET_PORT DATA_DIR="$WORK/met" node dist/admin.js "$@"; }
met_admin tenant create default >"$WORK/met-tenant.json"
OUR_JWKS_URL=$(json v.ehr_jwks_url <"$WORK/met-tenant.json")
echo "our JWKS URL for EHRs: $OUR_JWKS_URL"

step "2. The physician's EHR: register this practice as its SMART Backend Services client (that JWKS URL), and a staff client"
ehr_admin() { DATA_DIR="$WORK/ehr" NODE_ENV=development node dist/admin.js "$@"; }
ehr_admin tenant create northlake >/dev/null
ehr_admin client create --tenant northlake --name met-server \
  --scopes "system/Patient.rs system/Condition.rs system/Practitioner.rs system/DocumentReference.cruds system/Communication.cruds" \
  --jwks-url "$OUR_JWKS_URL" >"$WORK/ehr-met-client.json"
ehr_admin client create --tenant northlake --name ehr-staff --scopes "system/*.*" >"$WORK/ehr-staff.json"
OUR_CLIENT_ID=$(json v.client_id <"$WORK/ehr-met-client.json")
echo "our client id at the EHR: $OUR_CLIENT_ID"

step "3. Start the EHR on :$EHR_PORT, and the HL7 v2 peer on :$PEER_PORT"
PORT=$EHR_PORT HL7_PORT=0 DELIVERY=off DATA_DIR="$WORK/ehr" node dist/main.js >"$WORK/ehr.log" 2>&1 &
PIDS+=($!)
node --import tsx scripts/hl7-peer.ts --port "$PEER_PORT" --out "$WORK/hl7-received" >"$WORK/peer.log" 2>&1 &
PIDS+=($!)
ready "$EHR"

step "4. The EHR holds the patient (MRN $MRN) and her diagnoses (hypertension, right knee replacement) and her physician"
EHR_TOKEN=$(token "$EHR" "$(json v.client_id <"$WORK/ehr-staff.json")" "$(json v.client_secret <"$WORK/ehr-staff.json")" 'system/*.*')
curl -sf -X POST "$EHR/fhir" -H "Authorization: Bearer $EHR_TOKEN" -H "Content-Type: $FHIR_JSON" -d @docs/loop/ehr-patient.json |
  json 'v.entry.map((e) => e.response.status + " " + e.response.location).join("\n")'
echo

step "5. Start this server on :$MET_PORT (first start: a development client in $WORK/met/dev-credentials.json)"
PORT=$MET_PORT HL7_PORT=$MET_HL7_PORT DATA_DIR="$WORK/met" node dist/main.js >"$WORK/met.log" 2>&1 &
PIDS+=($!)
ready "$MET"
CREDS="$WORK/met/dev-credentials.json"
TOKEN=$(token "$MET" "$(json v.client_id <"$CREDS")" "$(json v.client_secret <"$CREDS")" 'system/*.*')
auth=(-H "Authorization: Bearer $TOKEN")

step "6. The MET's documentation of a first month arrives (test/fixtures/met/knee-replacement)"
post() {
  curl -sf -X POST "$MET/met/v1/$1" "${auth[@]}" -H 'Content-Type: application/json' -H 'X-MET-Software: AcmeTrainer 4.2' -d @"$2" |
    json '(v.status ?? "") + " " + (v.resources ?? []).length + " resources"' || fail "POST /met/v1/$1 $2 was refused"
  echo "  ← $1 $(basename "$2")"
}
fixtures=test/fixtures/met/knee-replacement
post clients $fixtures/client.json
post assessments $fixtures/assessment-intake.json
for f in $fixtures/goal-*.json; do post goals "$f"; done
post programs $fixtures/program.json
for f in $fixtures/session-0*.json; do post sessions "$f"; done
post assessments $fixtures/assessment-reassessment.json
PATIENT=$(curl -sf "$MET/fhir/Patient?identifier=$MRN_SYSTEM|$MRN" "${auth[@]}" | json 'v.entry[0].resource.id')
echo "the client is Patient/$PATIENT here"

step "7. The EHR connections, as Endpoints: the EHR over FHIR (SMART Backend Services), the peer over MLLP"
FHIR_ENDPOINT=$(curl -sf -X POST "$MET/fhir/Endpoint" "${auth[@]}" -H "Content-Type: $FHIR_JSON" -d '{
  "resourceType": "Endpoint", "status": "active", "name": "Northlake EHR",
  "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest" },
  "payloadType": [{ "text": "FHIR R4" }], "address": "'"$EHR"'/fhir",
  "extension": [{ "url": "https://met-fhir-server.dev/fhir/StructureDefinition/ehr-connection", "extension": [
    { "url": "auth", "valueCode": "smart-backend" },
    { "url": "tokenUrl", "valueUrl": "'"$EHR"'/auth/token" },
    { "url": "clientId", "valueString": "'"$OUR_CLIENT_ID"'" },
    { "url": "scope", "valueString": "system/Patient.rs system/Condition.rs system/Practitioner.rs system/DocumentReference.cruds system/Communication.cruds" },
    { "url": "patientIdentifierSystem", "valueUri": "'"$MRN_SYSTEM"'" },
    { "url": "sendCommunication", "valueBoolean": true } ] }] }' | json v.id)
MLLP_ENDPOINT=$(curl -sf -X POST "$MET/fhir/Endpoint" "${auth[@]}" -H "Content-Type: $FHIR_JSON" -d '{
  "resourceType": "Endpoint", "status": "active", "name": "NORTHLAKE-ORTHO",
  "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7v2-mllp" },
  "payloadType": [{ "text": "HL7 v2 MDM^T02" }], "address": "mllp://127.0.0.1:'"$PEER_PORT"'",
  "extension": [{ "url": "https://met-fhir-server.dev/fhir/StructureDefinition/ehr-connection", "extension": [
    { "url": "patientIdentifierSystem", "valueUri": "'"$MRN_SYSTEM"'" } ] }] }' | json v.id)
echo "Endpoint/$FHIR_ENDPOINT (FHIR), Endpoint/$MLLP_ENDPOINT (MLLP)"

step "8. Pull the diagnoses from the EHR"
curl -sf -X POST "$MET/fhir/Patient/$PATIENT/\$pull-diagnoses" "${auth[@]}" -H "Content-Type: $FHIR_JSON" |
  json 'v.parameter.map((p) => p.name + ": " + (p.part ?? []).map((x) => x.valueReference?.reference ?? x.valueCode ?? x.valueString ?? "").join(" ")).join("\n")' ||
  fail '$pull-diagnoses failed'
echo
curl -sf "$MET/fhir/Condition?subject=Patient/$PATIENT&_elements=code,category" "${auth[@]}" |
  json '(v.entry ?? []).map((e) => "  " + e.resource.code.coding[0].code + " " + e.resource.code.coding[0].display).join("\n")'
echo

step "9. A progress report for the physician, to the EHR over FHIR and to the peer over MLLP"
AUTHOR=$(curl -sf -X POST "$MET/fhir/Practitioner" "${auth[@]}" -H "Content-Type: $FHIR_JSON" \
  -d '{"resourceType":"Practitioner","name":[{"given":["Jordan"],"family":"Lee","suffix":["MES"]}]}' | json v.id)
summary() {
  call -X POST "$MET/fhir/Patient/$PATIENT/\$send-summary" "${auth[@]}" -H "Content-Type: $FHIR_JSON" -d '{
    "resourceType": "Parameters", "parameter": [
      { "name": "endpoint", "valueReference": { "reference": "Endpoint/'"$1"'" } },
      { "name": "author", "valueReference": { "reference": "Practitioner/'"$AUTHOR"'" } },
      { "name": "period", "valuePeriod": { "start": "2026-10-01", "end": "2026-11-30" } },
      { "name": "recipient", "valueReference": { "identifier": { "system": "http://hl7.org/fhir/sid/us-npi", "value": "1642039576" }, "display": "Dr. Anita R. Okafor" } },
      { "name": "recommendation", "valueString": "Continue the program three times a week; progress the walking distance by 10% a week." } ] }' |
    json v.id
}
FHIR_TASK=$(summary "$FHIR_ENDPOINT")
MLLP_TASK=$(summary "$MLLP_ENDPOINT")
echo "Task/$FHIR_TASK (FHIR), Task/$MLLP_TASK (MLLP)"

step "10. The delivery worker sends them; the Tasks tell how it went"
for task in "$FHIR_TASK" "$MLLP_TASK"; do
  status=requested
  for _ in $(seq 1 100); do
    status=$(curl -sf "$MET/fhir/Task/$task" "${auth[@]}" | json v.status)
    [ "$status" = completed ] || [ "$status" = failed ] && break
    sleep 0.2
  done
  echo "Task/$task: $status"
  [ "$status" = completed ] || fail "Task/$task ended $status: $(curl -sf "$MET/fhir/Task/$task" "${auth[@]}")"
done

step "11. What the physicians received"
EHR_PATIENT=$(curl -sf "$EHR/fhir/Patient?identifier=$MRN_SYSTEM|$MRN" -H "Authorization: Bearer $EHR_TOKEN" | json 'v.entry[0].resource.id')
curl -sf "$EHR/fhir/DocumentReference?subject=Patient/$EHR_PATIENT" -H "Authorization: Bearer $EHR_TOKEN" >"$WORK/ehr-documents.json"
json '"EHR: " + v.entry.length + " DocumentReference: " + v.entry.map((e) => e.resource.type.coding[0].code + " " + e.resource.description).join(", ")' <"$WORK/ehr-documents.json"
echo
json 'v.entry[0].resource.content[0].attachment.data' <"$WORK/ehr-documents.json" | base64 -d >"$WORK/report-from-ehr.pdf"
curl -sf "$EHR/fhir/Communication?subject=Patient/$EHR_PATIENT" -H "Authorization: Bearer $EHR_TOKEN" |
  json '"EHR: " + (v.entry ?? []).length + " Communication to " + (v.entry ?? []).map((e) => (e.resource.recipient ?? []).map((r) => r.display ?? r.reference).join(", ")).join("; ")'
echo
ls "$WORK"/hl7-received/*.pdf >/dev/null 2>&1 || fail "the HL7 peer saved no PDF"
echo "HL7 peer: $(ls "$WORK"/hl7-received/*.hl7 | wc -l) MDM^T02 message(s): $(ls "$WORK"/hl7-received/)"
echo
echo "The report as the EHR holds it: $WORK/report-from-ehr.pdf ($(wc -c <"$WORK/report-from-ehr.pdf") bytes)"
echo "The report as the HL7 peer got it: $(ls "$WORK"/hl7-received/*.pdf | head -1)"
