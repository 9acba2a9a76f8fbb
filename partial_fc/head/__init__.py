"""Pure head math: class ranges, sampling, margins, the chunked sharded cross-entropy, PartialFC."""
