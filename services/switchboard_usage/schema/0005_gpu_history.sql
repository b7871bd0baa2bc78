-- GPU history: one row per GPU per sample, from the topic
-- switchboard.gpu.samples.v1 (the gpu service samples every
-- SWITCHBOARD_GPU_INTERVAL_S, 1 s by default). A sample of a node without
-- devices (NVML unavailable, or no GPUs) is one row with gpu_uuid = '' and
-- the reason, so outages show in history. Readings NVML did not give are NULL,
-- never 0, so avg() and max() skip them.
-- Kept 30 days; whole daily partitions are dropped as they expire. Delivered
-- twice, a sample lands on the same (hostname, gpu_uuid, time) key: read with
-- FINAL.
CREATE TABLE IF NOT EXISTS gpu_samples
(
    hostname                   LowCardinality(String),
    gpu_uuid                   LowCardinality(String),
    gpu_index                  UInt32,
    gpu_name                   LowCardinality(String),
    time                       DateTime64(3, 'UTC'),
    nvml_state                 LowCardinality(String),
    reason                     String,
    health                     LowCardinality(String),
    health_reason              String,
    utilization_gpu_percent    Nullable(Float64),
    utilization_memory_percent Nullable(Float64),
    memory_used_mib            Nullable(UInt32),
    memory_total_mib           Nullable(UInt32),
    temperature_c              Nullable(Float64),
    power_w                    Nullable(Float64),
    power_limit_w              Nullable(Float64),
    sm_clock_mhz               Nullable(UInt32),
    memory_clock_mhz           Nullable(UInt32),
    ecc_uncorrected_errors     Nullable(UInt32),
    last_xid                   Nullable(UInt32),
    processes                  UInt32,
    labels                     Map(String, String),
    event_id                   String,
    kafka_partition            Int32,
    kafka_offset               Int64,
    ingest_time                DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(time)
ORDER BY (hostname, gpu_uuid, time)
TTL toDateTime(time) + INTERVAL 30 DAY DELETE
SETTINGS ttl_only_drop_parts = 1, non_replicated_deduplication_window = 1000;

-- One row per alert transition (state 'firing' or 'resolved'), from the topic
-- switchboard.gpu.alerts.v1. An alert is its alert_id; (alert_id, state) is
-- unique, and the sink stores each once. Partitioned by the firing time, which
-- both rows of an alert carry, so they always share a partition. Kept a year.
CREATE TABLE IF NOT EXISTS gpu_alert_events
(
    event_id        String,
    alert_id        String,
    state           LowCardinality(String),
    rule_name       LowCardinality(String),
    metric          LowCardinality(String),
    comparator      LowCardinality(String),
    threshold       Float64,
    severity        LowCardinality(String),
    hostname        LowCardinality(String),
    gpu_uuid        LowCardinality(String),
    gpu_index       UInt32,
    value           Float64,
    message         String,
    start_time      DateTime64(3, 'UTC'),
    time            DateTime64(3, 'UTC'),
    kafka_partition Int32,
    kafka_offset    Int64,
    ingest_time     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY (alert_id, state)
TTL toDateTime(start_time) + INTERVAL 365 DAY DELETE
SETTINGS non_replicated_deduplication_window = 1000;

-- For analysts: each alert once, in its latest state: when it fired, when it
-- resolved (NULL while firing), and the value of its latest event.
CREATE VIEW IF NOT EXISTS gpu_alerts AS
SELECT
    alert_id, state, rule_name, metric, comparator, threshold, severity, hostname,
    gpu_uuid, gpu_index,
    start_time AS fired_at,
    if(state = 'resolved', time, NULL) AS resolved_at,
    value, message
FROM gpu_alert_events FINAL
ORDER BY alert_id, state = 'resolved' DESC
LIMIT 1 BY alert_id
