-- Wider merges for the tables every sink flush writes to. The sink inserts
-- about ten times a second under load (100 ms after a batch's first record),
-- one part into usage_events and one into usage_hourly each time, and the
-- default merge selector (base 5) rewrote the same rows over and over as it
-- folded those small parts into bigger ones: 15.4 ms of merge CPU per flush of
-- 25 events over five minutes of flushes into empty tables, 27 to 28 ms on
-- tables that held 20 000 rows (bench/flush_cost.py). With base 10 a merge
-- waits for more parts of a like size, so each row is rewritten fewer times:
-- 3.1 to 3.8 ms in both. The active parts left were as few (a handful per
-- table): the merges are saved, not put off. Needs a ClickHouse that knows the
-- setting: 26.x, which this schema is written for, does.
-- Re-runnable: setting a table setting again changes nothing.
ALTER TABLE usage_events MODIFY SETTING merge_selector_base = 10;

ALTER TABLE usage_hourly MODIFY SETTING merge_selector_base = 10;
