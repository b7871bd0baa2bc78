"""The one durable pipeline every producer of records shares: topics declared
once (topics), broker settings and the producer (kafka), a durable SQLite
outbox (outbox), the relay to Kafka and the reconciler (relay), the sink
base from Kafka into ClickHouse (sink), and the confirmations topic for
producers in another process than their sink (confirmations)."""
