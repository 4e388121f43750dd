"""dicom_agent: a DICOM node that brings a unified multimodal imaging model into the radiology workflow.

Data flow (one subpackage per step): receive → store → studies → routing → tasks → inference → encode → export → web.
"""

__version__ = "0.1.0"
