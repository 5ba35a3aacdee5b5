"""Names that more than one module (or service, or ops file) relies on, defined once.

Metric and span names follow the OpenTelemetry semantic conventions where one
exists (messaging, HTTP, DB); project-specific instruments live under the
``whatsapp.`` prefix. The collector's Prometheus exporter turns dots into
underscores and adds unit and ``_total`` suffixes, so alert rules and dashboards
refer to the translated names (see ``prometheus/`` and ``grafana/``).
"""

import zlib
from typing import Final

# --- queue ---------------------------------------------------------------
# The stream is partitioned by chat: `<stream>:<n>` for n in 0..partitions-1.
# Each partition is consumed by one worker at a time (a lease), which is what
# keeps one chat's messages in order across any number of workers.
DEFAULT_STREAM: Final = "whatsapp:inbound"
DEFAULT_GROUP: Final = "workers"
DEFAULT_PARTITIONS: Final = 16
DEAD_LETTER_SUFFIX: Final = ":dead"
# Per partition stream: hash of entry id -> count of failures that counted.
FAILURES_SUFFIX: Final = ":failures"
# One TTL key per live worker (its lease on a consumer name, and its heartbeat).
WORKER_KEY_INFIX: Final = ":workers:"
# One TTL key per partition, holding the token of the worker that owns it.
LEASE_KEY_INFIX: Final = ":leases:"
# Pub/sub channel (`<stream>:lease-releases`): a worker that gives partitions up
# publishes its token there, so the others take them at once instead of at
# their next periodic tick. A hint only: the lease keys stay the truth.
RELEASES_CHANNEL_SUFFIX: Final = ":lease-releases"


def partition_stream(stream: str, partition: int) -> str:
    """The Redis key of one partition of ``stream``."""
    return f"{stream}:{partition}"


def partition_of(instance: str, remote_jid: str, partitions: int) -> int:
    """The partition of a chat; stable across processes, versions and machines."""
    return zlib.crc32(f"{instance}\n{remote_jid}".encode()) % partitions


# A stream entry's fields. Trace context fields are the W3C header names and
# are written by the propagator itself, never by hand.
FIELD_PAYLOAD: Final = "payload"
FIELD_EVENT: Final = "event"
FIELD_INSTANCE: Final = "instance"
FIELD_MESSAGE_ID: Final = "message_id"
FIELD_PARTITION: Final = "partition"
# Comma-separated codes of what ingest could not read (see wabot_shared.message).
FIELD_ISSUES: Final = "issues"
FIELD_ERROR_TYPE: Final = "error_type"
FIELD_DELIVERIES: Final = "deliveries"
FIELD_ORIGINAL_ID: Final = "original_id"
FIELD_ERROR_MESSAGE: Final = "error"
FIELD_DEAD_AT: Final = "dead_lettered_at"
DEAD_LETTER_FIELDS: Final = frozenset(
    {FIELD_ERROR_TYPE, FIELD_DELIVERIES, FIELD_ORIGINAL_ID, FIELD_ERROR_MESSAGE, FIELD_DEAD_AT}
)

MESSAGING_SYSTEM: Final = "redis"
OP_SEND: Final = "send"
OP_PROCESS: Final = "process"


def send_span_name(stream: str) -> str:
    """Messaging semconv span name: ``{operation} {destination}``."""
    return f"{OP_SEND} {stream}"


def process_span_name(stream: str) -> str:
    """Messaging semconv span name: ``{operation} {destination}``."""
    return f"{OP_PROCESS} {stream}"


# --- metrics -------------------------------------------------------------
METRIC_SENT: Final = "messaging.client.sent.messages"
METRIC_CONSUMED: Final = "messaging.client.consumed.messages"
METRIC_PROCESS_DURATION: Final = "messaging.process.duration"
METRIC_WEBHOOK_EVENTS: Final = "whatsapp.webhook.events"
METRIC_OUTCOMES: Final = "whatsapp.message.outcomes"
METRIC_END_TO_END: Final = "whatsapp.message.end_to_end.duration"
METRIC_QUEUE_LENGTH: Final = "whatsapp.queue.length"
METRIC_QUEUE_PENDING: Final = "whatsapp.queue.pending"
METRIC_QUEUE_LAG: Final = "whatsapp.queue.lag"
METRIC_DEAD_LETTER_LENGTH: Final = "whatsapp.queue.dead_letter.length"
# Age of the oldest entry not yet acknowledged (pending or undelivered): the
# figure that shows a stall whatever the outcome counters say.
METRIC_QUEUE_OLDEST_AGE: Final = "whatsapp.queue.oldest_age"
METRIC_PARSE_ISSUES: Final = "whatsapp.webhook.parse_issues"
METRIC_PARTITIONS_OWNED: Final = "whatsapp.worker.partitions"
METRIC_MAINTENANCE_FAILURES: Final = "whatsapp.worker.maintenance.failures"
METRIC_PURGED: Final = "whatsapp.retention.purged"
METRIC_RESOLUTIONS: Final = "whatsapp.instance.resolutions"
METRIC_HEARTBEAT: Final = "whatsapp.worker.heartbeat"
METRIC_REPLIES: Final = "whatsapp.reply.sent"
METRIC_REPLY_LATENCY: Final = "whatsapp.reply.latency"
METRIC_OUTBOX_DEPTH: Final = "whatsapp.outbox.pending"
METRIC_OUTBOX_OLDEST_AGE: Final = "whatsapp.outbox.oldest_age"
METRIC_CHAT_WAIT: Final = "whatsapp.message.chat_wait.duration"
METRIC_HANDLER_DURATION: Final = "whatsapp.handler.duration"

# --- attributes (project-specific; semconv ones come from opentelemetry.semconv)
ATTR_EVENT: Final = "whatsapp.event"
ATTR_OUTCOME: Final = "whatsapp.outcome"
ATTR_RESOLUTION: Final = "whatsapp.resolution"
ATTR_INSTANCE: Final = "whatsapp.instance.name"
ATTR_MESSAGE_TYPE: Final = "whatsapp.message.type"
ATTR_FROM_ME: Final = "whatsapp.message.from_me"
ATTR_CHAT_KIND: Final = "whatsapp.chat.kind"

# Seconds; covers sub-millisecond inserts up to multi-second outages.
DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)
