"""The shipped model, package data of fervgg as `fervgg.pretrained` (see pyproject.toml)."""
