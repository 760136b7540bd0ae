"""Parquet summary worker: Pub/Sub job in, S3 Parquet summary out, federated into AWS with no keys."""

__version__ = "0.1.0"
