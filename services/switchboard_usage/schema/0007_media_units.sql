-- The media kinds' units (UsageRecord fields 30-34): seconds of audio
-- transcribed (measured from the uploaded file), characters synthesised into
-- speech, rerank search units, images generated, and whether the answer came
-- from Switchboard's own cache (a speech cache hit: no upstream call, zero cost).
-- Rows stored before these columns read 0.
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS audio_seconds Float64 DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS characters UInt32 DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS search_units UInt32 DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS images UInt32 DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS cached Bool DEFAULT false;
