"""Export of trained models for serving: the receiver a model declares and the exporter.

See :mod:`monolith.export.exporter` for the layout of an export and :mod:`monolith.serving` for
serving one.
"""

from monolith.export.exporter import ExportSignature, export_saved_model, prune_exports
from monolith.export.receiver import ServingInputReceiver

__all__ = ["ExportSignature", "ServingInputReceiver", "export_saved_model", "prune_exports"]
