"""The backbone registry: names, errors that list the choices, common arguments."""

from __future__ import annotations

import pytest
import torch

from partial_fc import models

EXPECTED = [
    "iresnet100", "iresnet18", "iresnet200", "iresnet34", "iresnet50", "iresnet_tiny", "mobilefacenet"
]


def test_names() -> None:
    assert models.names() == EXPECTED


def test_unknown_name_lists_choices_and_closest() -> None:
    expected = r"unknown model 'iresnet5' \(did you mean 'iresnet50'\?\); choose from \["
    with pytest.raises(ValueError, match=expected) as info:
        models.build("iresnet5")
    for name in EXPECTED:
        assert repr(name) in str(info.value)


def test_unknown_argument_lists_valid_ones() -> None:
    typo = r"unknown argument\(s\) \['embeding_dim'\] \(did you mean 'embedding_dim'\?\)"
    with pytest.raises(ValueError, match=typo):
        models.build("iresnet50", embeding_dim=128)
    valid = r"valid arguments: \['embedding_dim', 'input_size', 'dropout', 'fp16', 'norm', 'scale', 'blocks'\]"
    with pytest.raises(ValueError, match=valid):
        models.build("mobilefacenet", width=2)


def test_every_backbone_takes_the_common_arguments() -> None:
    for name in models.names():
        assert models.arguments(name)[:5] == ["embedding_dim", "input_size", "dropout", "fp16", "norm"]


@pytest.mark.parametrize("name", EXPECTED)
def test_every_backbone_maps_images_to_embeddings(name: str) -> None:
    with torch.device("meta"):
        net = models.build(name, embedding_dim=96)
    assert net(torch.empty(3, 3, 112, 112, device="meta")).shape == (3, 96)


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="'iresnet50' is already registered"):
        models.register("iresnet50")(lambda **_: torch.nn.Identity())
