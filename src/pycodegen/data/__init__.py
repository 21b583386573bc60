"""The data layer: sources → records → cleaning, dedup, decontamination, split → task views."""
