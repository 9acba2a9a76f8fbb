"""The one check of ``zero_stage``: the factory, the DeepSpeed config and the training config call it."""

from __future__ import annotations

ZERO_STAGES = (1, 2)  # stage 3 shards parameters, which a backbone of this size does not need


def check_zero_stage(engine: str, zero_stage: int) -> None:
    """``zero_stage`` must be 1 or 2 with engine "deepspeed" and 1 (the default) with any other."""
    if engine == "deepspeed":
        if zero_stage not in ZERO_STAGES or isinstance(zero_stage, bool):
            raise ValueError(f"zero_stage must be one of {list(ZERO_STAGES)} with engine 'deepspeed', got {zero_stage!r} "
                             "(stage 3 shards parameters, which the backbone does not need)")
    elif zero_stage != 1 or isinstance(zero_stage, bool):
        raise ValueError(f"zero_stage must be 1 with engine {engine!r} (DDP has no ZeRO stages), got {zero_stage!r}; "
                         "stage 2 needs engine 'deepspeed'")
