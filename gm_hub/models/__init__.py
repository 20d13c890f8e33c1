"""One module per model family; `gm_hub.registry` says which class each family publishes."""
