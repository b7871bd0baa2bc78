-- Host history: one row per node per sample, from the same topic as the GPU
-- rows (switchboard.gpu.samples.v1: GpuSampleEvent.status.host, read with
-- psutil by the gpu service beside each GPU sample). CPU is busy time over all
-- cores since the node's previous sample; disk is the filesystem holding the
-- node's SWITCHBOARD_HOME. A sample without host readings (published before
-- NodeStatus.host existed) has no row.
-- Stored once per event id: the gpu sink skips ids already here before each
-- insert, a retried insert carries an insert_deduplication_token, and a
-- duplicate past both lands on the same (hostname, time) key: read with FINAL.
-- Kept 30 days, like gpu_samples.
CREATE TABLE IF NOT EXISTS host_samples
(
    hostname         LowCardinality(String),
    time             DateTime64(3, 'UTC'),
    cpu_percent      Float64,
    cpu_count        UInt32,
    memory_percent   Float64,
    memory_used_mib  UInt64,
    memory_total_mib UInt64,
    disk_percent     Float64,
    disk_used_mib    UInt64,
    disk_total_mib   UInt64,
    load_average_1m  Float64,
    labels           Map(String, String),
    event_id         String,
    kafka_partition  Int32,
    kafka_offset     Int64,
    ingest_time      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(time)
ORDER BY (hostname, time)
TTL toDateTime(time) + INTERVAL 30 DAY DELETE
SETTINGS ttl_only_drop_parts = 1, non_replicated_deduplication_window = 1000
