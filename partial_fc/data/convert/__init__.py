"""Converters to training shards: folders of crops and InsightFace RecordIO (common.py: shuffle, encode, write)."""
