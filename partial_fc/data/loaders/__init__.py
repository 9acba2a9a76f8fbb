"""Training loaders: streamed shards (stream.py) and identity-balanced batches (identity.py); build.py picks one."""
