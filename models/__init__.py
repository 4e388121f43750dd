"""The ML side of dicom_agent: synthetic phantoms, the unified network, training, export, and the bundle."""
