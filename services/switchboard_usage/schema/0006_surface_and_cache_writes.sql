-- The HTTP API each call came through (UsageRecord.surface): "openai" for /v1
-- and RouterService's gRPC, "qwen_chat", "multi_llm", "vision_chat" for the
-- seed APIs. Rows stored before this column read ''.
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS surface LowCardinality(String) DEFAULT '';
-- Prompt tokens written into an upstream's prompt cache (UsageRecord.cache_write_tokens,
-- Anthropic's cache_creation_input_tokens), priced apart from cached_tokens (reads).
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS cache_write_tokens UInt32 DEFAULT 0;
