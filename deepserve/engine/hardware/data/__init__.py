"""Reviewed accelerator data files (YAML), one per vendor family; read by ``catalog.load_catalog``."""
