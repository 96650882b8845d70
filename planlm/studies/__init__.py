"""Studies: commands that chain stages into one experiment (the myopia gap, multi-token prediction compared)."""
