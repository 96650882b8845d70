"""Model code: adapters, selection, planner, PlannedLM. Imports torch and transformers only (STYLE.md rule 1)."""
