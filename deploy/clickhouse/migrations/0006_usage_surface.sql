-- The HTTP API each call came through (UsageRecord.surface): "openai" for /v1
-- and RouterService's gRPC, "qwen_chat", "multi_llm", "vision_chat" for the
-- seed APIs. Rows stored before this column read ''.
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS surface LowCardinality(String) DEFAULT '';
