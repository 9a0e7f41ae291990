"""The live cluster map: pool telemetry, the page's data view and its routes."""
