"""What mvq writes and reads, safely: atomic output files and locks, sealed folders, JSON and YAML,
sha256, PNG figures."""
