"""Glue for the container deployment: the probe Docker runs inside each container, and the edge's start-up files."""
