"""postprocessing stage."""
