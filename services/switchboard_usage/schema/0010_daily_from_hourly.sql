-- usage_daily becomes a view over usage_hourly: a day is the sum of its hours.
-- It was a second SummingMergeTree fed by its own materialized view, so every
-- sink flush wrote a part to it too (one insert, three parts) and set off merges
-- of it: about a tenth of a flush's ClickHouse CPU (bench/flush_cost.py). The
-- view has the same columns, already summed per day, key, model, provider and
-- status, so queries that sum() it with GROUP BY read the same numbers.
-- usage_hourly holds every event usage_daily held: both were fed by the same
-- inserts since 0002, with the same deduplication window since 0004.
-- Re-runnable: each step is a no-op once done (DROP TABLE also drops the view
-- a half-finished earlier run left).
DROP VIEW IF EXISTS usage_daily_mv;

DROP TABLE IF EXISTS usage_daily;

CREATE VIEW IF NOT EXISTS usage_daily AS
SELECT
    toDate(hour) AS day,
    key_name, model, provider, status,
    sum(requests) AS requests,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    sum(total_cost_nanos) AS total_cost_nanos
FROM usage_hourly
GROUP BY day, key_name, model, provider, status;
