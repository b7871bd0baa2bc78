-- 0003's views divided a scale-0 decimal, so costs under one currency unit
-- read as 0: keep nine decimal places.
CREATE OR REPLACE VIEW usage AS
SELECT
    event_id, request_id, attempt, key_name, requested_model, model, deployment_id,
    provider, upstream_model, operation, stream, prompt_tokens, completion_tokens,
    total_tokens, cached_tokens, reasoning_tokens, estimated, status, error_reason,
    provider_request_id, latency_ms, ttft_ms, start_time, end_time, config_version,
    router_instance, sequence,
    toDecimal128(total_cost_nanos, 9) / 1000000000 AS cost,
    currency
FROM usage_events FINAL;

CREATE OR REPLACE VIEW usage_by_day AS
SELECT
    day, key_name, model, provider, status,
    sum(requests) AS requests,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    toDecimal128(sum(total_cost_nanos), 9) / 1000000000 AS cost
FROM usage_daily
GROUP BY day, key_name, model, provider, status;

-- A retried insert with the same insert_deduplication_token is dropped by
-- usage_events, but the rollups' own tables must drop it too, or they count it.
ALTER TABLE usage_hourly MODIFY SETTING non_replicated_deduplication_window = 10000;

ALTER TABLE usage_daily MODIFY SETTING non_replicated_deduplication_window = 10000;
