-- Views for analysts: deduplicated, with costs as decimals in the currency unit.
CREATE VIEW IF NOT EXISTS usage AS
SELECT
    event_id, request_id, attempt, key_name, requested_model, model, deployment_id,
    provider, upstream_model, operation, stream, prompt_tokens, completion_tokens,
    total_tokens, cached_tokens, reasoning_tokens, estimated, status, error_reason,
    provider_request_id, latency_ms, ttft_ms, start_time, end_time, config_version,
    router_instance, sequence,
    toDecimal64(total_cost_nanos, 0) / 1000000000 AS cost,
    currency
FROM usage_events FINAL;

CREATE VIEW IF NOT EXISTS usage_by_day AS
SELECT
    day, key_name, model, provider, status,
    sum(requests) AS requests,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    toDecimal64(sum(total_cost_nanos), 0) / 1000000000 AS cost
FROM usage_daily
GROUP BY day, key_name, model, provider, status;
