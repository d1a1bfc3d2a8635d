"""De-identification of DICOM data."""
