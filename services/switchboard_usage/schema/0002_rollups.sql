-- Hourly and daily rollups per key × model × provider × status, maintained on
-- insert. They cannot double count because the sink never inserts an event id
-- twice (it filters out ids already stored before each insert, and retried
-- batches carry the same insert_deduplication_token).
CREATE TABLE IF NOT EXISTS usage_hourly
(
    hour              DateTime('UTC'),
    key_name          LowCardinality(String),
    model             LowCardinality(String),
    provider          LowCardinality(String),
    status            LowCardinality(String),
    requests          UInt64,
    prompt_tokens     UInt64,
    completion_tokens UInt64,
    total_tokens      UInt64,
    total_cost_nanos  Int64,
    latency_ms_sum    Float64
)
ENGINE = SummingMergeTree
ORDER BY (hour, key_name, model, provider, status);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS
SELECT
    toStartOfHour(start_time) AS hour,
    key_name, model, provider, status,
    count() AS requests,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    sum(total_cost_nanos) AS total_cost_nanos,
    sum(latency_ms) AS latency_ms_sum
FROM usage_events
GROUP BY hour, key_name, model, provider, status;

CREATE TABLE IF NOT EXISTS usage_daily
(
    day               Date,
    key_name          LowCardinality(String),
    model             LowCardinality(String),
    provider          LowCardinality(String),
    status            LowCardinality(String),
    requests          UInt64,
    prompt_tokens     UInt64,
    completion_tokens UInt64,
    total_tokens      UInt64,
    total_cost_nanos  Int64
)
ENGINE = SummingMergeTree
ORDER BY (day, key_name, model, provider, status);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS
SELECT
    toDate(start_time) AS day,
    key_name, model, provider, status,
    count() AS requests,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    sum(total_cost_nanos) AS total_cost_nanos
FROM usage_events
GROUP BY day, key_name, model, provider, status;
