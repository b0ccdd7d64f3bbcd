"""Prompts: the one record type, content-hash ids, readers of prompt files, sources, shipped sets."""
