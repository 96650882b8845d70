"""The CLI stages: each module holds one stage's frame (validate -> reuse or refuse -> build -> fit -> write)."""
