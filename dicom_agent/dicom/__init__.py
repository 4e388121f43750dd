"""Pure DICOM vocabulary: statuses, UIDs, codes. No I/O, no imports from higher layers."""
