"""Export of trained models for serving: the receiver a model declares, the on-disk format and the exporter.

:mod:`monolith.export.format` describes an export's files (and is all that serving imports);
:mod:`monolith.export.exporter` writes them (``Estimator.export_saved_model`` calls it).
"""

from monolith.export.format import ExportSignature, prune_exports
from monolith.export.receiver import ServingInputReceiver

__all__ = ["ExportSignature", "ServingInputReceiver", "prune_exports"]
