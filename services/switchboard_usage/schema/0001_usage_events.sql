-- One row per upstream attempt, as the usage service published it.
-- ReplacingMergeTree on event_id is the last line of defence against
-- duplicates; the sink already skips event ids that are stored, and every
-- query reads through FINAL (or the views below), so nothing is counted twice.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id            String,
    request_id          String,
    attempt             UInt32,
    key_name            LowCardinality(String),
    requested_model     LowCardinality(String),
    model               LowCardinality(String),
    deployment_id       LowCardinality(String),
    provider            LowCardinality(String),
    upstream_model      LowCardinality(String),
    operation           LowCardinality(String),
    stream              Bool,
    prompt_tokens       UInt32,
    completion_tokens   UInt32,
    total_tokens        UInt32,
    cached_tokens       UInt32,
    reasoning_tokens    UInt32,
    estimated           Bool,
    status              LowCardinality(String),
    error_reason        LowCardinality(String),
    provider_request_id String,
    latency_ms          Float64,
    ttft_ms             Float64,
    start_time          DateTime64(3, 'UTC'),
    end_time            DateTime64(3, 'UTC'),
    config_version      UInt64,
    router_instance     LowCardinality(String),
    sequence            UInt64,
    input_cost_nanos    Int64,
    output_cost_nanos   Int64,
    total_cost_nanos    Int64,
    currency            LowCardinality(String),
    kafka_partition     Int32,
    kafka_offset        Int64,
    ingest_time         DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX start_time_idx start_time TYPE minmax GRANULARITY 4
)
ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMM(start_time)
ORDER BY event_id
SETTINGS non_replicated_deduplication_window = 10000;
