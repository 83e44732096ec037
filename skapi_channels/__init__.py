"""Skapi's realtime connection API, served by Django Channels."""

__version__ = "0.1.0"
