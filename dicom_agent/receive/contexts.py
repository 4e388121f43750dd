"""Presentation contexts the node accepts (PS3.4 Annex B storage SOP classes, PS3.5 Section 10 transfer syntaxes).

Everything is stored exactly as received, so every transfer syntax listed here must also be decodable by
the inference side: pydicom with pylibjpeg (JPEG, JPEG-LS, JPEG 2000, RLE) and python-gdcm as fallback.
A SOP class that is not listed is simply not accepted at association time: the peer sees the presentation
context rejected (abstract syntax not supported) and, if it tries anyway, C-STORE status 0x0122.
"""

from __future__ import annotations

from pydicom import uid
from pynetdicom.presentation import PresentationContext, build_context

VERIFICATION = uid.UID("1.2.840.10008.1.1")

# PS3.4 B.5: the storage SOP classes a radiology AI node needs (images it reads and objects it may be sent back).
STORAGE_SOP_CLASSES: tuple[uid.UID, ...] = (
    uid.ComputedRadiographyImageStorage,
    uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing,
    uid.DigitalMammographyXRayImageStorageForPresentation,
    uid.DigitalMammographyXRayImageStorageForProcessing,
    uid.CTImageStorage,
    uid.EnhancedCTImageStorage,
    uid.MRImageStorage,
    uid.EnhancedMRImageStorage,
    uid.PositronEmissionTomographyImageStorage,
    uid.EnhancedPETImageStorage,
    uid.NuclearMedicineImageStorage,
    uid.UltrasoundImageStorage,
    uid.UltrasoundMultiFrameImageStorage,
    uid.SecondaryCaptureImageStorage,
    uid.MultiFrameSingleBitSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    uid.BasicTextSRStorage,
    uid.EnhancedSRStorage,
    uid.ComprehensiveSRStorage,
    uid.Comprehensive3DSRStorage,
    uid.KeyObjectSelectionDocumentStorage,
    uid.SegmentationStorage,
)

# Structured reports and key object selections carry no Pixel Data; every other class above must.
DOCUMENT_SOP_CLASSES: frozenset[str] = frozenset(
    {
        uid.BasicTextSRStorage,
        uid.EnhancedSRStorage,
        uid.ComprehensiveSRStorage,
        uid.Comprehensive3DSRStorage,
        uid.KeyObjectSelectionDocumentStorage,
    }
)

# PS3.5 Section 10 and Annex A: native, deflated and the common compressed syntaxes, accepted as sent.
TRANSFER_SYNTAXES: tuple[uid.UID, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)


def supported_contexts() -> list[PresentationContext]:
    """One context per storage SOP class with every accepted transfer syntax, plus Verification (C-ECHO)."""
    contexts = [build_context(VERIFICATION, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])]
    contexts += [build_context(sop_class, list(TRANSFER_SYNTAXES)) for sop_class in STORAGE_SOP_CLASSES]
    return contexts
