"""Error hierarchy: each step of the data flow has its own error, split into transient (retry) and permanent."""


class DicomAgentError(Exception):
    """Base of every error the node raises on purpose."""


class TransientError(DicomAgentError):
    """Worth retrying: the peer or resource may come back."""


class PermanentError(DicomAgentError):
    """Retrying cannot help: the input or the configuration is wrong."""


class ReceiveError(DicomAgentError):
    """An instance could not be accepted."""


class StorageFullError(ReceiveError, TransientError):
    """The storage root is below its free-space reserve (C-STORE 0xA700)."""


class UnreadableDatasetError(ReceiveError, PermanentError):
    """The dataset cannot be parsed or lacks required identifiers (C-STORE 0xC000 range)."""


class DatasetTooLargeError(ReceiveError, PermanentError):
    """The dataset exceeds the configured size limit."""


class RoutingError(PermanentError):
    """The routing rules are invalid."""


class InferenceError(DicomAgentError):
    """The model could not run on a study."""


class TransientInferenceError(InferenceError, TransientError):
    """The model could not run now (device busy, out of memory)."""


class PermanentInferenceError(InferenceError, PermanentError):
    """The study cannot be processed by this model."""


class EncodeError(PermanentError):
    """Results could not be encoded as valid DICOM."""


class ExportError(DicomAgentError):
    """A result could not be delivered."""


class TransientExportError(ExportError, TransientError):
    """Destination down, association refused or aborted, timeout, 0xA7xx."""


class PermanentExportError(ExportError, PermanentError):
    """The destination refuses this object for good (0xA9xx, 0xCxxx, SOP class not supported)."""


class StateTransitionError(PermanentError):
    """A state change not allowed by ``db.states``."""
