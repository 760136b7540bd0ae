#!/usr/bin/env bash
# The plain-CLI path: the same resources as deploy/terraform, in the same order, with gcloud and aws.
# Idempotent: every step looks before it creates, so a second run changes nothing. Settings come from
# the environment or deploy/cli/config.env (see config.env.example).
#
#   deploy/cli/deploy.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/cli/lib.sh
source "$here/lib.sh"

settings() {
  if [[ -f "$here/config.env" ]]; then
    # shellcheck source=/dev/null
    source "$here/config.env"
  fi
  NAME=${NAME:-parquet-summary}
  REGION=${REGION:-us-central1}
  AWS_REGION=${AWS_REGION:-us-east-1}
  ROLE_NAME=${ROLE_NAME:-$NAME}
  AUDIENCE=${AUDIENCE:-//iam.amazonaws.com/$ROLE_NAME}
  PYTHON_RUNTIME=${PYTHON_RUNTIME:-python311}
  TIMEOUT_SECONDS=${TIMEOUT_SECONDS:-540}
  MEMORY=${MEMORY:-1Gi}
  CPU=${CPU:-1}
  MAX_INSTANCES=${MAX_INSTANCES:-10}
  CONCURRENCY=${CONCURRENCY:-8}
  BUILD_GRANT_WAIT=${BUILD_GRANT_WAIT:-60}
  MAX_DELIVERY_ATTEMPTS=${MAX_DELIVERY_ATTEMPTS:-30}
  MIN_RETRY_DELAY=${MIN_RETRY_DELAY:-10s}
  MAX_RETRY_DELAY=${MAX_RETRY_DELAY:-600s}
  SCHEDULE=${SCHEDULE:-0 3 * * *}
  SCHEDULE_TIME_ZONE=${SCHEDULE_TIME_ZONE:-Etc/UTC}
  DEPLOY_HTTP=${DEPLOY_HTTP:-no}
  HTTP_INGRESS=${HTTP_INGRESS:-internal-only}
  SERVICE_AGENT_WAIT=${SERVICE_AGENT_WAIT:-60}
  # Fan-out (docs/fan-out.md): the runs database, the partials bucket, the shard topics; FANOUT_ENABLED=no
  # leaves them out.
  FANOUT_ENABLED=${FANOUT_ENABLED:-yes}
  FIRESTORE_DATABASE=${FIRESTORE_DATABASE:-(default)}
  CREATE_FIRESTORE_DATABASE=${CREATE_FIRESTORE_DATABASE:-yes}
  FIRESTORE_LOCATION=${FIRESTORE_LOCATION:-$REGION}
  RUNS_COLLECTION=${RUNS_COLLECTION:-summary-runs}
  RUNS_RETENTION_DAYS=${RUNS_RETENTION_DAYS:-30}
  SHARD_MAX_DELIVERY_ATTEMPTS=${SHARD_MAX_DELIVERY_ATTEMPTS:-30}
  FANOUT_MAX_IN_FLIGHT=${FANOUT_MAX_IN_FLIGHT:-$(( MAX_INSTANCES * CONCURRENCY ))}
  # The sweep of stalled fanned-out runs (docs/fan-out.md: Every run ends); none: no sweep.
  SWEEP_SCHEDULE=${SWEEP_SCHEDULE:-*/5 * * * *}
  need_var PROJECT "the Google Cloud project ID"
  need_var DATA_BUCKET "the S3 bucket the worker may read"
  (( TIMEOUT_SECONDS >= 120 && TIMEOUT_SECONDS <= 540 )) || die "TIMEOUT_SECONDS must be between 120 and 540"
  (( MAX_DELIVERY_ATTEMPTS >= 5 && MAX_DELIVERY_ATTEMPTS <= 100 )) || die "MAX_DELIVERY_ATTEMPTS must be between 5 and 100"
  [[ "$DEPLOY_HTTP" == yes || "$DEPLOY_HTTP" == no ]] || die "DEPLOY_HTTP must be yes or no"
  [[ "$FANOUT_ENABLED" == yes || "$FANOUT_ENABLED" == no ]] || die "FANOUT_ENABLED must be yes or no"
  [[ "$CREATE_FIRESTORE_DATABASE" == yes || "$CREATE_FIRESTORE_DATABASE" == no ]] \
    || die "CREATE_FIRESTORE_DATABASE must be yes or no"
  [[ "$FIRESTORE_DATABASE" == "(default)" || "$FIRESTORE_DATABASE" =~ ^[a-z][a-z0-9-]{2,61}[a-z0-9]$ ]] \
    || die "FIRESTORE_DATABASE is (default) or 4-63 lowercase letters, digits or hyphens"
  [[ -z "${PARTIALS_RETENTION_DAYS:-}" ]] || die "PARTIALS_RETENTION_DAYS is now RUNS_RETENTION_DAYS (one number of days \
for the partials bucket's lifecycle and for the runs' Firestore records): rename it"
  [[ "$RUNS_RETENTION_DAYS" =~ ^[1-9][0-9]{0,3}$ ]] && (( RUNS_RETENTION_DAYS <= 3650 )) \
    || die "RUNS_RETENTION_DAYS must be a whole number of days from 1 to 3650"
  (( SHARD_MAX_DELIVERY_ATTEMPTS >= 5 && SHARD_MAX_DELIVERY_ATTEMPTS <= 100 )) \
    || die "SHARD_MAX_DELIVERY_ATTEMPTS must be between 5 and 100"
  (( FANOUT_MAX_IN_FLIGHT >= 1 && FANOUT_MAX_IN_FLIGHT <= 1000 )) || die "FANOUT_MAX_IN_FLIGHT must be between 1 and 1000"
  if [[ "$DEPLOY_HTTP" == yes ]]; then
    [[ -n "${HTTP_INVOKERS:-}" ]] || die "DEPLOY_HTTP=yes needs HTTP_INVOKERS: who may call it (it is never public)"
    local member
    for member in $HTTP_INVOKERS; do
      [[ "$member" =~ ^(user|group|serviceAccount|domain|principal|principalSet):.+ ]] \
        || die "HTTP_INVOKERS takes named principals (user:, group:, serviceAccount:, ...), not '$member'"
    done
  fi
  if [[ -n "${KMS_KEY_NAME:-}" ]]; then
    [[ "$KMS_KEY_NAME" =~ ^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$ ]] \
      || die "KMS_KEY_NAME is a full key name: projects/P/locations/L/keyRings/R/cryptoKeys/K"
  fi
  WORKER_SA="$NAME@$PROJECT.iam.gserviceaccount.com"
  PUSH_SA="${NAME:0:25}-push@$PROJECT.iam.gserviceaccount.com"
  # Cloud Build builds the function as this account: the default build account of projects created
  # since mid-2024 has no build permissions. A given BUILD_SERVICE_ACCOUNT (an email) is used as is.
  BUILD_SA=${BUILD_SERVICE_ACCOUNT:-${NAME:0:24}-build@$PROJECT.iam.gserviceaccount.com}
  JOBS_TOPIC="$NAME-jobs" RESULTS_TOPIC="$NAME-results" DEAD_LETTER_TOPIC="$NAME-dead-letter"
  SHARDS_TOPIC="$NAME-shards" SHARDS_DEAD_LETTER_TOPIC="$NAME-shards-dead-letter"
  PARTIALS_BUCKET_NAME=$(bucket_name partials)
  # The TTL policies' field (worker/retention.py writes it) and the collection groups of a run's records.
  TTL_FIELD=expire_at
  TTL_COLLECTION_GROUPS=("$RUNS_COLLECTION" shards merges)
}

# A bucket of the project: PROJECT-NAME-SUFFIX, or, past Cloud Storage's 63 characters, its first 54
# characters (trailing - and . dropped) and 8 hex characters of its SHA-256, as deploy/terraform/modules/plan.
bucket_name() {  # bucket_name SUFFIX
  local full="$PROJECT-$NAME-$1" cut
  if (( ${#full} <= 63 )); then printf '%s' "$full"; return; fi
  cut="$PROJECT-$NAME"
  cut=$(sed -E 's/[-.]+$//' <<<"${cut:0:54}")
  printf '%s-%s' "$cut" "$(printf '%s' "$full" | sha256sum | cut -c1-8)"
}

# The one Firestore grant of the worker is limited to the runs database by this IAM condition.
firestore_condition() {
  printf 'resource.name == "projects/%s/databases/%s"' "$PROJECT" "$FIRESTORE_DATABASE"
}

# The partials bucket's lifecycle (a --lifecycle-file): delete a partial RUNS_RETENTION_DAYS after it is written,
# as the runs' records expire.
partials_lifecycle() {
  printf '{"rule": [{"action": {"type": "Delete"}, "condition": {"age": %d}}]}\n' "$RUNS_RETENTION_DAYS"
}

# The prefix of the default scheduled job: the first of the prefixes sorted byte-wise, as Terraform's
# sort() does (deploy/terraform/modules/plan); empty (the whole bucket) when there are none.
default_prefix() {
  local prefix
  # shellcheck disable=SC2086  # DATA_PREFIXES is space-separated on purpose
  prefix=$(printf '%s\n' ${DATA_PREFIXES:-} | LC_ALL=C sort -u | head -n 1)
  printf '%s' "$prefix"
}

# The scheduler's message: SCHEDULED_JOB as given, else the whole default prefix of DATA_BUCKET.
scheduled_job() {
  if [[ -n "${SCHEDULED_JOB:-}" ]]; then printf '%s' "$SCHEDULED_JOB"; return; fi
  python3 -c 'import json, sys; print(json.dumps({"bucket": sys.argv[1], "prefix": sys.argv[2]}))' \
    "$DATA_BUCKET" "$(default_prefix)"
}

# A grant to a service agent, retried while IAM does not know the agent yet (it can take a minute
# after the agent is created).
grant_to_agent() {  # grant_to_agent COMMAND...
  local waited=0 out
  until out=$("$@" 2>&1 >/dev/null); do
    if (( waited >= SERVICE_AGENT_WAIT )) || [[ "$out" != *"does not exist"* ]]; then
      printf '%s\n' "$out" >&2; return 1
    fi
    sleep 10; waited=$((waited + 10))
  done
}

# The function's settings (the names worker/config.py reads), as an --env-vars-file.
function_env() {  # function_env ROLE_ARN
  python3 - "$1" <<PY
import json, sys
env = {
    "AWS_ROLE_ARN": sys.argv[1],
    "ID_TOKEN_AUDIENCE": "$AUDIENCE",
    "REPLY_TOPIC": "projects/$PROJECT/topics/$RESULTS_TOPIC",
    "GOOGLE_CLOUD_PROJECT": "$PROJECT",
    "AWS_REGION": "$AWS_REGION",
    "ALLOWED_BUCKETS": "$DATA_BUCKET",
    "JOB_DEADLINE_SECONDS": str($TIMEOUT_SECONDS - 60),
    "TEMPLATE_TIME_ZONE": "$SCHEDULE_TIME_ZONE",
    "ALLOWED_REPLY_TOPICS": ",".join("${ALLOWED_REPLY_TOPICS:-}".split()),
    "THREADS": "$CONCURRENCY",
}
if "$FANOUT_ENABLED" == "yes":
    env |= {
        "PARTIALS_BUCKET": "$PARTIALS_BUCKET_NAME",
        "SHARD_TOPIC": "projects/$PROJECT/topics/$SHARDS_TOPIC",
        "SHARD_DEAD_LETTER_TOPIC": "projects/$PROJECT/topics/$SHARDS_DEAD_LETTER_TOPIC",
        "FIRESTORE_DATABASE": "$FIRESTORE_DATABASE",
        "RUNS_COLLECTION": "$RUNS_COLLECTION",
        "FANOUT_MAX_IN_FLIGHT": "$FANOUT_MAX_IN_FLIGHT",
        "RUNS_RETENTION_DAYS": "$RUNS_RETENTION_DAYS",
    }
print("\n".join(f"{k}: {json.dumps(v)}" for k, v in env.items()))
PY
}

exists() { "$@" >/dev/null 2>&1; }

# Deploy (or leave alone, when its digest label is current) one entry point: authenticated only.
deploy_function() {  # deploy_function NAME ENTRY_POINT INGRESS ENV_FILE DIGEST
  local deployed
  deployed=$(gcloud functions describe "$1" --region="$REGION" --project="$PROJECT" \
             --format='value(labels.deploy-digest)' 2>/dev/null || true)
  if [[ "$deployed" == "$5" ]]; then
    say "function $1: unchanged"
  else
    local attempt output
    for attempt in 1 2 3; do
      if output=$(gcloud functions deploy "$1" --gen2 --project="$PROJECT" --region="$REGION" --source="$REPO" \
          --runtime="$PYTHON_RUNTIME" --entry-point="$2" --trigger-http --no-allow-unauthenticated \
          --ingress-settings="$3" --service-account="$WORKER_SA" --timeout="${TIMEOUT_SECONDS}s" \
          --build-service-account="projects/$PROJECT/serviceAccounts/$BUILD_SA" \
          --memory="$MEMORY" --cpu="$CPU" --max-instances="$MAX_INSTANCES" --concurrency="$CONCURRENCY" \
          --env-vars-file="$4" --update-labels="deploy-digest=$5" --quiet 2>&1); then
        break
      fi
      # The build account's role was granted moments ago on a first run, and IAM takes a while to apply it.
      if (( attempt < 3 )) && grep -qiE "permission|denied|forbidden" <<<"$output"; then
        say "function $1: the build was refused (a new IAM grant takes a while); again in ${BUILD_GRANT_WAIT}s"
        sleep "$BUILD_GRANT_WAIT"
        continue
      fi
      printf '%s\n' "$output" >&2
      die "function $1: gcloud functions deploy failed"
    done
    say "function $1: deployed"
  fi
}

ensure_topic() {  # ensure_topic NAME: encrypted with KMS_KEY_NAME when set
  local key=()
  [[ -n "${KMS_KEY_NAME:-}" ]] && key=(--topic-encryption-key="$KMS_KEY_NAME")
  if exists gcloud pubsub topics describe "$1" --project="$PROJECT"; then say "topic $1: exists"
  else gcloud pubsub topics create "$1" --project="$PROJECT" "${key[@]}" --quiet >/dev/null; say "topic $1: created"; fi
}

ensure_pull_subscription() {  # ensure_pull_subscription NAME TOPIC: keeps messages a week, never expires
  if exists gcloud pubsub subscriptions describe "$1" --project="$PROJECT"; then say "subscription $1: exists"
  else
    gcloud pubsub subscriptions create "$1" --topic="$2" --project="$PROJECT" --message-retention-duration=7d \
      --expiration-period=never --quiet >/dev/null
    say "subscription $1: created"
  fi
}

ensure_service_account() {  # ensure_service_account EMAIL DISPLAY_NAME
  if exists gcloud iam service-accounts describe "$1" --project="$PROJECT"; then say "service account $1: exists"
  else
    gcloud iam service-accounts create "${1%%@*}" --project="$PROJECT" --display-name="$2" --quiet >/dev/null
    say "service account $1: created"
  fi
}

# Messages on a topic with no subscription are dropped: results and dead letters are kept a week.
topics() {
  ensure_topic "$JOBS_TOPIC"; ensure_topic "$RESULTS_TOPIC"; ensure_topic "$DEAD_LETTER_TOPIC"
  ensure_pull_subscription "$RESULTS_TOPIC" "$RESULTS_TOPIC"
  ensure_pull_subscription "$DEAD_LETTER_TOPIC" "$DEAD_LETTER_TOPIC"
}

# A push subscription named as its topic: push to the function with an OIDC token of the push account
# (functions-framework turns the raw push into the messagePublished CloudEvent; the path names the
# topic), retries with backoff, and whatever else is given (a dead-letter topic).
ensure_push_subscription() {  # ensure_push_subscription TOPIC FUNCTION_URL [FLAG...]
  local topic=$1 url=$2
  shift 2
  local want=(--push-endpoint="$url/projects/$PROJECT/topics/$topic"
              --push-auth-service-account="$PUSH_SA" --push-auth-token-audience="$url" --ack-deadline=600
              --min-retry-delay="$MIN_RETRY_DELAY" --max-retry-delay="$MAX_RETRY_DELAY" "$@"
              --message-retention-duration=7d)
  local before
  if before=$(gcloud pubsub subscriptions describe "$topic" --project="$PROJECT" --format=json 2>/dev/null); then
    gcloud pubsub subscriptions update "$topic" --project="$PROJECT" "${want[@]}" --quiet >/dev/null
    if same_json "$before" "$(gcloud pubsub subscriptions describe "$topic" --project="$PROJECT" --format=json)"; then
      say "subscription $topic: unchanged"
    else
      say "subscription $topic: updated"
    fi
  else
    gcloud pubsub subscriptions create "$topic" --topic="$topic" --project="$PROJECT" \
      --expiration-period=never "${want[@]}" --quiet >/dev/null
    say "subscription $topic: created"
  fi
}

# The jobs subscription: after MAX_DELIVERY_ATTEMPTS, the dead-letter topic.
delivery() {  # delivery FUNCTION_URL
  ensure_push_subscription "$JOBS_TOPIC" "$1" --dead-letter-topic="projects/$PROJECT/topics/$DEAD_LETTER_TOPIC" \
    --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"
}

# -- fan-out (each step only with FANOUT_ENABLED=yes) ----------------------------------------------------

# The runs database: Firestore in Native mode. A project's (default) database may already exist: it is
# used if it is in Native mode; one in Datastore mode cannot hold runs (set FIRESTORE_DATABASE to a new ID).
runs_database() {
  local type
  if type=$(gcloud firestore databases describe --database="$FIRESTORE_DATABASE" --project="$PROJECT" \
              --format='value(type)' 2>/dev/null); then
    [[ "$type" == FIRESTORE_NATIVE ]] || die "Firestore database $FIRESTORE_DATABASE is in $type mode, not Native \
mode: set FIRESTORE_DATABASE to a new database ID (deploy.sh creates it)"
    say "Firestore database $FIRESTORE_DATABASE: exists"
  elif [[ "$CREATE_FIRESTORE_DATABASE" == yes ]]; then
    gcloud firestore databases create --database="$FIRESTORE_DATABASE" --location="$FIRESTORE_LOCATION" \
      --type=firestore-native --project="$PROJECT" --quiet >/dev/null
    say "Firestore database $FIRESTORE_DATABASE: created in $FIRESTORE_LOCATION"
  else
    die "Firestore database $FIRESTORE_DATABASE does not exist (CREATE_FIRESTORE_DATABASE=no)"
  fi
}

# Runs expire: a TTL policy on expire_at in each collection group of a run's records (the worker writes it on
# every run, shard and merge document; deleting a run's document leaves its subcollections), the field left
# unindexed (nothing queries it; an index on a timestamp that grows with time is a write hot spot). As
# Terraform's google_firestore_field.expire_at. A group whose policy exists is left alone.
ttl_policies() {
  local group state
  for group in "${TTL_COLLECTION_GROUPS[@]}"; do
    state=$(gcloud firestore indexes fields describe "$TTL_FIELD" --collection-group="$group" \
              --database="$FIRESTORE_DATABASE" --project="$PROJECT" --format='value(ttlConfig.state)' 2>/dev/null || true)
    if [[ "$state" == ACTIVE || "$state" == CREATING ]]; then
      say "TTL policy $group.$TTL_FIELD: exists ($state)"
      continue
    fi
    gcloud firestore indexes fields update "$TTL_FIELD" --collection-group="$group" --database="$FIRESTORE_DATABASE" \
      --project="$PROJECT" --disable-indexes --quiet >/dev/null
    gcloud firestore fields ttls update "$TTL_FIELD" --collection-group="$group" --database="$FIRESTORE_DATABASE" \
      --project="$PROJECT" --enable-ttl --quiet >/dev/null
    say "TTL policy $group.$TTL_FIELD: enabled (documents deleted once past it)"
  done
}

# The partials bucket: private, uniform access, no soft delete, partials deleted after RUNS_RETENTION_DAYS.
# Its settings are applied on every run (the same settings: no change).
partials_bucket() {
  local lifecycle
  lifecycle=$(mktemp)
  partials_lifecycle >"$lifecycle"
  if exists gcloud storage buckets describe "gs://$PARTIALS_BUCKET_NAME" --project="$PROJECT"; then
    say "bucket $PARTIALS_BUCKET_NAME: exists"
  else
    gcloud storage buckets create "gs://$PARTIALS_BUCKET_NAME" --project="$PROJECT" --location="$REGION" \
      --uniform-bucket-level-access --public-access-prevention --soft-delete-duration=0 --quiet >/dev/null
    say "bucket $PARTIALS_BUCKET_NAME: created"
  fi
  gcloud storage buckets update "gs://$PARTIALS_BUCKET_NAME" --project="$PROJECT" --lifecycle-file="$lifecycle" \
    --uniform-bucket-level-access --public-access-prevention --soft-delete-duration=0 --quiet >/dev/null
  rm -f "$lifecycle"
  say "bucket $PARTIALS_BUCKET_NAME: partials deleted after $RUNS_RETENTION_DAYS days"
}

fanout_topics() {
  ensure_topic "$SHARDS_TOPIC"; ensure_topic "$SHARDS_DEAD_LETTER_TOPIC"
}

# The worker: read and write runs (in the runs database only), create and read partials (never delete or
# overwrite them), publish shards. Pub/Sub's service agent moves undeliverable shards to their dead-letter topic.
fanout_grants() {  # fanout_grants PUBSUB_AGENT
  gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$WORKER_SA" --role=roles/datastore.user \
    --condition="expression=$(firestore_condition),title=runs database only,description=Firestore read/write on \
projects/$PROJECT/databases/$FIRESTORE_DATABASE only" --quiet >/dev/null
  local role
  for role in roles/storage.objectCreator roles/storage.objectViewer; do
    gcloud storage buckets add-iam-policy-binding "gs://$PARTIALS_BUCKET_NAME" --member="serviceAccount:$WORKER_SA" \
      --role="$role" --quiet >/dev/null
  done
  gcloud pubsub topics add-iam-policy-binding "$SHARDS_TOPIC" --project="$PROJECT" \
    --member="serviceAccount:$WORKER_SA" --role=roles/pubsub.publisher --quiet >/dev/null
  grant_to_agent gcloud pubsub topics add-iam-policy-binding "$SHARDS_DEAD_LETTER_TOPIC" --project="$PROJECT" \
    --member="$1" --role=roles/pubsub.publisher --quiet
}

# Shards reach the same function as jobs, then (after SHARD_MAX_DELIVERY_ATTEMPTS) their dead-letter topic,
# which is pushed to the function too: it records the shard as failed.
fanout_delivery() {  # fanout_delivery FUNCTION_URL PUBSUB_AGENT
  ensure_push_subscription "$SHARDS_TOPIC" "$1" \
    --dead-letter-topic="projects/$PROJECT/topics/$SHARDS_DEAD_LETTER_TOPIC" \
    --max-delivery-attempts="$SHARD_MAX_DELIVERY_ATTEMPTS"
  ensure_push_subscription "$SHARDS_DEAD_LETTER_TOPIC" "$1"
  grant_to_agent gcloud pubsub subscriptions add-iam-policy-binding "$SHARDS_TOPIC" --project="$PROJECT" \
    --member="$2" --role=roles/pubsub.subscriber --quiet
}

main() {
  need_command gcloud "the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
  need_command aws "the AWS CLI (https://aws.amazon.com/cli/)"
  need_command python3 "Python 3"
  settings
  [[ -n "$(gcloud auth list --filter=status:ACTIVE --format='value(account)' 2>/dev/null)" ]] \
    || die "gcloud has no active account: run 'gcloud auth login' first"

  say "1/8 APIs and service agents"
  local apis=(artifactregistry.googleapis.com cloudbuild.googleapis.com cloudfunctions.googleapis.com
              cloudresourcemanager.googleapis.com cloudscheduler.googleapis.com iam.googleapis.com
              iamcredentials.googleapis.com logging.googleapis.com pubsub.googleapis.com run.googleapis.com
              storage.googleapis.com)
  if [[ "$FANOUT_ENABLED" == yes ]]; then apis+=(firestore.googleapis.com); fi
  gcloud services enable "${apis[@]}" --project="$PROJECT" --quiet
  # Service agents may not exist right after their API is enabled: create them (a no-op when they do).
  local pubsub_agent scheduler_agent
  pubsub_agent="serviceAccount:$(gcloud beta services identity create --service=pubsub.googleapis.com \
    --project="$PROJECT" --format='value(email)' --quiet)"
  if [[ "$SCHEDULE" != none || ( "$FANOUT_ENABLED" == yes && "$SWEEP_SCHEDULE" != none ) ]]; then
    scheduler_agent="serviceAccount:$(gcloud beta services identity create --service=cloudscheduler.googleapis.com \
      --project="$PROJECT" --format='value(email)' --quiet)"
  fi
  if [[ -n "${KMS_KEY_NAME:-}" ]]; then
    # Topic creation with a customer-managed key fails unless the Pub/Sub service agent may use it.
    grant_to_agent gcloud kms keys add-iam-policy-binding "$KMS_KEY_NAME" --member="$pubsub_agent" \
      --role=roles/cloudkms.cryptoKeyEncrypterDecrypter --quiet
  fi

  say "2/8 service accounts"
  ensure_service_account "$WORKER_SA" "Parquet summary worker (federates into AWS role $ROLE_NAME)"
  ensure_service_account "$PUSH_SA" "Pub/Sub push to $NAME"
  if [[ -z "${BUILD_SERVICE_ACCOUNT:-}" ]]; then
    ensure_service_account "$BUILD_SA" "Builds the $NAME function (Cloud Build)"
  fi
  # Cloud Build's own role: build logs, the image in Artifact Registry, the staged source.
  gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$BUILD_SA" \
    --role=roles/cloudbuild.builds.builder --condition=None --quiet >/dev/null
  local unique_id
  unique_id=$(gcloud iam service-accounts describe "$WORKER_SA" --project="$PROJECT" --format='value(uniqueId)')

  say "3/8 AWS role (trust: $WORKER_SA, unique ID $unique_id)"
  local role_arn
  role_arn=$(ROLE_NAME=$ROLE_NAME UNIQUE_ID=$unique_id AUDIENCE=$AUDIENCE DATA_BUCKET=$DATA_BUCKET \
             DATA_PREFIXES=${DATA_PREFIXES:-} AWS_REGION=$AWS_REGION "$here/aws-role.sh")

  say "4/8 topics and subscriptions (with fan-out: the runs database, its TTL policies and the partials bucket)"
  topics
  if [[ "$FANOUT_ENABLED" == yes ]]; then
    fanout_topics; runs_database; ttl_policies; partials_bucket
  fi

  say "5/8 the function"
  local env_file
  # Expanded now: at exit main's locals are gone (and set -u would fail the script on them).
  env_file=$(mktemp)
  # shellcheck disable=SC2064
  trap "rm -f -- '$env_file'" EXIT
  function_env "$role_arn" >"$env_file"
  # Redeploy only when the source or the settings changed: their digest is a label of the function.
  local digest deployed
  digest=$( (cd "$REPO" && gcloud meta list-files-for-upload . | LC_ALL=C sort | xargs sha256sum;
             cat "$env_file"; echo "$PYTHON_RUNTIME $TIMEOUT_SECONDS $MEMORY $CPU $MAX_INSTANCES $CONCURRENCY $BUILD_SA";
             echo "$HTTP_INGRESS") | sha256sum | cut -c1-40)
  deploy_function "$NAME" handle_pubsub internal-only "$env_file" "$digest"
  if [[ "$DEPLOY_HTTP" == yes ]]; then
    deploy_function "$NAME-http" handle_http "$HTTP_INGRESS" "$env_file" "$digest"
  fi
  local url
  url=$(gcloud functions describe "$NAME" --region="$REGION" --project="$PROJECT" --format='value(serviceConfig.uri)')

  say "6/8 IAM"
  gcloud pubsub topics add-iam-policy-binding "$RESULTS_TOPIC" --project="$PROJECT" \
    --member="serviceAccount:$WORKER_SA" --role=roles/pubsub.publisher --quiet >/dev/null
  local reply
  for reply in ${ALLOWED_REPLY_TOPICS:-}; do
    gcloud pubsub topics add-iam-policy-binding "$reply" \
      --member="serviceAccount:$WORKER_SA" --role=roles/pubsub.publisher --quiet >/dev/null
  done
  gcloud functions add-invoker-policy-binding "$NAME" --region="$REGION" --project="$PROJECT" \
    --member="serviceAccount:$PUSH_SA" --quiet >/dev/null
  if [[ "$DEPLOY_HTTP" == yes ]]; then
    local invoker
    for invoker in $HTTP_INVOKERS; do
      gcloud functions add-invoker-policy-binding "$NAME-http" --region="$REGION" --project="$PROJECT" \
        --member="$invoker" --quiet >/dev/null
    done
  fi
  grant_to_agent gcloud iam service-accounts add-iam-policy-binding "$PUSH_SA" --project="$PROJECT" \
    --member="$pubsub_agent" --role=roles/iam.serviceAccountTokenCreator --quiet
  grant_to_agent gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" --project="$PROJECT" \
    --member="$pubsub_agent" --role=roles/pubsub.publisher --quiet
  if [[ "$SCHEDULE" != none ]]; then
    grant_to_agent gcloud pubsub topics add-iam-policy-binding "$JOBS_TOPIC" --project="$PROJECT" \
      --member="$scheduler_agent" --role=roles/pubsub.publisher --quiet
  fi
  if [[ "$FANOUT_ENABLED" == yes ]]; then fanout_grants "$pubsub_agent"; fi
  if [[ "$FANOUT_ENABLED" == yes && "$SWEEP_SCHEDULE" != none ]]; then
    grant_to_agent gcloud pubsub topics add-iam-policy-binding "$SHARDS_TOPIC" --project="$PROJECT" \
      --member="$scheduler_agent" --role=roles/pubsub.publisher --quiet
  fi

  say "7/8 delivery: $JOBS_TOPIC -> push (OIDC) -> $NAME, retries, dead letters after $MAX_DELIVERY_ATTEMPTS attempts"
  delivery "$url"
  grant_to_agent gcloud pubsub subscriptions add-iam-policy-binding "$JOBS_TOPIC" --project="$PROJECT" \
    --member="$pubsub_agent" --role=roles/pubsub.subscriber --quiet
  if [[ "$FANOUT_ENABLED" == yes ]]; then
    say "7/8 delivery: $SHARDS_TOPIC -> push (OIDC) -> $NAME, dead letters after $SHARD_MAX_DELIVERY_ATTEMPTS attempts -> $SHARDS_DEAD_LETTER_TOPIC -> $NAME"
    fanout_delivery "$url" "$pubsub_agent"
  fi

  say "8/8 schedule"
  local job
  job=$(scheduled_job)
  if [[ "$SCHEDULE" == none ]]; then
    say "scheduler: none"
  else
    if exists gcloud scheduler jobs describe "$NAME-schedule" --location="$REGION" --project="$PROJECT"; then
      gcloud scheduler jobs update pubsub "$NAME-schedule" --location="$REGION" --project="$PROJECT" \
        --schedule="$SCHEDULE" --time-zone="$SCHEDULE_TIME_ZONE" --topic="$JOBS_TOPIC" --message-body="$job" \
        --update-attributes="schedule=$NAME-schedule" --quiet >/dev/null
      say "scheduler $NAME-schedule: settings applied ($SCHEDULE, $SCHEDULE_TIME_ZONE)"
    else
      gcloud scheduler jobs create pubsub "$NAME-schedule" --location="$REGION" --project="$PROJECT" \
        --schedule="$SCHEDULE" --time-zone="$SCHEDULE_TIME_ZONE" --topic="$JOBS_TOPIC" --message-body="$job" \
        --attributes="schedule=$NAME-schedule" --quiet >/dev/null
      say "scheduler $NAME-schedule: created ($SCHEDULE, $SCHEDULE_TIME_ZONE)"
    fi
  fi
  if [[ "$FANOUT_ENABLED" == yes && "$SWEEP_SCHEDULE" != none ]]; then
    # kind=sweep on the shard topic: the function sets stalled runs going again (or answers them).
    if exists gcloud scheduler jobs describe "$NAME-sweep" --location="$REGION" --project="$PROJECT"; then
      gcloud scheduler jobs update pubsub "$NAME-sweep" --location="$REGION" --project="$PROJECT" \
        --schedule="$SWEEP_SCHEDULE" --time-zone=Etc/UTC --topic="$SHARDS_TOPIC" --message-body='{}' \
        --update-attributes=kind=sweep --quiet >/dev/null
      say "scheduler $NAME-sweep: settings applied ($SWEEP_SCHEDULE, UTC)"
    else
      gcloud scheduler jobs create pubsub "$NAME-sweep" --location="$REGION" --project="$PROJECT" \
        --schedule="$SWEEP_SCHEDULE" --time-zone=Etc/UTC --topic="$SHARDS_TOPIC" --message-body='{}' \
        --attributes=kind=sweep --quiet >/dev/null
      say "scheduler $NAME-sweep: created ($SWEEP_SCHEDULE, UTC)"
    fi
  fi

  say "done. A first job, then its result:"
  printf "gcloud pubsub topics publish %s --project=%s --message='%s'\n" "$JOBS_TOPIC" "$PROJECT" "$job"
  printf "gcloud pubsub subscriptions pull %s --project=%s --auto-ack --limit=10\n" "$RESULTS_TOPIC" "$PROJECT"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
