"""Algorithm identity in one place: who produced a result object, written the same way into SR, SEG, KOS.

The model bundle's sha256 is the device identity: the Device Observer UID (TID 1004) is derived from it, and
it is recorded as the device serial number, so a retrained model is a different device (IHE AIR asks for a
device UID that changes with the model; a non-standard attribute for it would be a dciodvfy warning).
"""

from __future__ import annotations

from datetime import datetime

import highdicom as hd
from pydicom.sr.codedict import codes

from dicom_agent.dicom.uids import derived_uid
from dicom_agent.inference.types import ModelIdentity

CHARSET = "ISO_IR 192"  # UTF-8 on every object (dicom-outputs.md item 8)


def device_observer_uid(model: ModelIdentity) -> str:
    """Deterministic UID of the algorithm as a device: changes when the bundle changes."""
    return derived_uid("device-observer", model.name, model.version, model.bundle_sha256)


def device_serial(model: ModelIdentity) -> str:
    """The bundle hash shortened to the 64 characters an LO holds."""
    return model.bundle_sha256[:64]


def device_observer_context(model: ModelIdentity) -> hd.sr.ObserverContext:
    """TID 1002/1004 observer context: the algorithm as the Device observer."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(model),
            name=model.name[:64],
            manufacturer_name=model.manufacturer[:64],
            model_name=model.version[:64],
            serial_number=device_serial(model),
        ),
    )


def sr_algorithm_id(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    """TID 4019 algorithm identification, attached to every NUM (not to the group)."""
    return hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64])


def seg_algorithm_id(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    """Segment algorithm identification, family Artificial Intelligence (CID 7162)."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name[:64],
        version=model.version[:64],
        family=codes.cid7162.ArtificialIntelligence,
        source=model.manufacturer[:64],
    )


def contributing_equipment(model: ModelIdentity, when: datetime) -> hd.ContributingEquipment:
    """Contributing Equipment (purpose Processing Equipment) with a pinned ContributionDateTime."""
    return hd.ContributingEquipment(
        manufacturer=model.manufacturer[:64],
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64],
        device_serial_number=device_serial(model),
        contribution_datetime=when,
        contribution_description=(model.description or "AI algorithm")[:64],
    )
