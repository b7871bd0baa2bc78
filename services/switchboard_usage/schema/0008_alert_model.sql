-- Alerts over model metrics (seed 004's response_time, error_rate) name the
-- model they fired on (GpuAlert.model); GPU alerts, and rows stored before
-- this column, read ''.
ALTER TABLE gpu_alert_events ADD COLUMN IF NOT EXISTS model LowCardinality(String) DEFAULT '';
