"""Synthetic face-like identities: the offline default data set.

    params.py    identity and per-image nuisance parameters from counter-based seeds
    palette.py   colours of the regions a face is painted with
    render.py    vectorised drawing of a batch of faces (numpy, no per-pixel Python)
    config.py    SynthConfig, validated on creation
    generate.py  training shards, held-out verification pairs and the manifest
"""
