"""On-disk formats, read and written byte-exactly: shards, manifest, tar index, RecordIO, pair files, images."""
