"""⑦ Encode: TID 1500 SR, SEG and KOS with highdicom."""

from dicom_agent.encode.study import PROFILES, EncodedObject, encode_study, finding_tracking_uids

__all__ = ["PROFILES", "EncodedObject", "encode_study", "finding_tracking_uids"]
