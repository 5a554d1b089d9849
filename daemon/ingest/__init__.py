"""Ingestion: Kafka feedback and catalog events, validated, stored once, rejects dead-lettered."""
