"""hl7-worklist-bridge: HL7 v2 imaging orders to DICOM Modality Worklist items."""

__version__ = "0.1.0"
