"""The usage service: accounting of every upstream attempt (Kafka → ClickHouse)."""
