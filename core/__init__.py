"""Butterfly: pool volunteers ' computers to run large language models."""
