"""``python -m dicom_agent`` is the same as the ``dicom-agent`` command."""

from dicom_agent.cli.main import main

main()
