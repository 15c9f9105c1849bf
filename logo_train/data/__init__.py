"""Data sources (embedded dataset, ImageFolder ingest), Parquet shards and their preview."""
