"""The embedded demo corpus: real portraits animated by FACS action units, in MEAD and HDTF layouts."""
