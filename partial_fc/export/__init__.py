"""Backbone export to ONNX and TorchScript with a dynamic batch dimension (``partial-fc export``)."""

from partial_fc.export.exporters import export_onnx, export_torchscript

__all__ = ["export_onnx", "export_torchscript"]
